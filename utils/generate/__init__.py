"""Generate: seeded, batched, resumable image generation over prompt tables (docs/method.md §5)."""

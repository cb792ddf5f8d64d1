"""Attack: library code of the red-teaming methods in attack_methods/ (docs/method.md §7, §10)."""

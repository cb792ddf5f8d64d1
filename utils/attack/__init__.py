"""Attack: library code of the red-teaming methods in attack_methods/ (docs/method.md §7, §10).

- `objectives`: the math as pure functions (losses, simplex projection, straight-through sampling,
  nearest-token projection, Ring-A-Bell's concept vectors, fitness and genetic generation);
- `tokens`: token layouts of adversarial prompts, allowed ids, text round trips, the text encoder
  run from token embeddings;
- `weights`: `ModelPair`, the base and the attacked model in one UNet;
- `judges`: success judges by concept and the attack success rate;
- `gradient`: UnlearnDiffAtk and P4D on one prompt; `genetic`: Ring-A-Bell's discrete search;
- `runner`: flags, checks, run folder, per-prompt resume and sharding shared by the attack CLIs.
"""

"""The toolkit's one shared module, grouped by pipeline stage.

- core (this folder): errors and CLI plumbing (errors, cli), files and run folders (io), datasets,
  model loading and cross-attention access (models), checkpoints, the prompt-CSV schema (prompts);
- erase/: the closed-form math, the edit loop, the paper's settings, validation, RECE as a call;
- generate/: seeded batched generation;
- score/: NudeNet, Q16, CLIP, FID, LPIPS, classifiers;
- attack/: red-teaming;
- world/: the built-in shapes world.

Scripts (train.py, execs/*, attack_methods/*, compute_nudity_rate.py) parse arguments, call these
functions and save what they return; nothing here reads argparse namespaces or global state.
"""

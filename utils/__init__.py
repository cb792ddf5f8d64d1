"""The toolkit's one shared module: model access, the closed-form math, checkpoints, data and scoring.

Scripts (train.py, execs/*, attack_methods/*, compute_nudity_rate.py) parse arguments, call these
functions and save what they return; nothing here reads argparse namespaces or global state.
"""

"""UnlearnDiffAtk: adversarial prompt tokens found by the erased model's own denoising loss (docs/method.md §10).

    python attack_methods/UnlearnDiffAtk.py --prompt_file dataset/nudity.csv --concept nudity \
        --ckpt runs/rece-nudity/best.safetensors --save_path runs/attack-unlearndiff-rece

For each prompt: the base model's image of the row (its seed and guidance) is the reference; k
adversarial tokens (5 for nudity and unsafe, 3 otherwise) placed after the start token are optimised
as token distributions (straight-through one-hot samples, simplex projection, Adam lr 0.01, weight
decay 0.1) so that the erased model denoises the reference image's latent well when conditioned on
[adversarial tokens + prompt]; timesteps 10, 30, ..., 990 in order, 40 iterations each; after each
timestep the tokens are decoded to text, the erased model's image of that text is judged, and the
attack stops at the first success. Prompts already judged successful without attack count as
successes (pre-ASR). Writes config.json, results.jsonl, adv_prompts.csv, asr.json and images into
SAVE_PATH; rerun the same command to resume; `torchrun --nproc_per_node N` splits the prompts.
Any base (`--base xl`: one adversarial token sequence read by both SDXL text encoders, docs/attacks.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.attack.gradient import GradientAttack  # noqa: E402
from utils.attack.runner import (add_common_args, add_gradient_args, check_common, check_gradient_args,  # noqa: E402
                                 default_k, run_attack)
from utils.errors import run_cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_gradient_args(p, k_help="adversarial tokens k (default 5 for nudity / unsafe, 3 otherwise)")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs (nothing is loaded or written before these pass)
    common = check_common(args, "unlearndiffatk")
    timesteps, eval_timesteps = check_gradient_args(args)
    attack = GradientAttack("unlearndiff", "prefix", default_k(args, common.judge), tuple(timesteps), args.iterations,
                            args.lr, args.weight_decay, args.optimizer, tuple(eval_timesteps))
    settings = {"method": attack.method, "layout": attack.layout, "num_adv_tokens": attack.k,
                "timesteps": list(timesteps), "iterations": args.iterations, "lr": args.lr,
                "weight_decay": args.weight_decay, "optimizer": args.optimizer, "eval_timesteps": list(eval_timesteps)}

    # 2. The run folder (resumed when the settings match), the model pair (one UNet), the prompts
    run_attack(args, common, attack, settings)

if __name__ == "__main__":
    run_cli(main, parse_args)

"""P4D: adversarial prompts that make the erased model predict what the base model predicts (docs/method.md §10).

    python attack_methods/P4D.py --variant K --prompt_file dataset/nudity.csv --concept nudity \
        --ckpt runs/rece-nudity/best.safetensors --save_path runs/attack-p4dk-rece

P4D-N (`--variant N`): 16 free tokens replace the prompt; P4D-K (`--variant K`): one learnable token
after every 3 prompt tokens. The tokens are continuous embeddings projected to the nearest token
embedding (cosine) in the forward pass, the gradient there updating the continuous copy (PEZ); the
loss is MSE(eps_base(x_t, t, E(prompt)), eps_erased(x_t, t, E(adversarial))) at x_t from the base
model's image of the row. Schedule and judging as UnlearnDiff's code runs P4D: timesteps 10, 30,
..., 990 in order, 40 steps each, judged after each timestep, stopping at the first success. The
optimiser is the P4D authors' (AdamW, lr 0.1, weight decay 0.1); `--optimizer adam --lr 0.01` is
UnlearnDiff's (on the shapes model its weight decay, added to tiny gradients, only shrinks the
embeddings and the nearest tokens never change). One UNet in memory: the erased model is the base UNet called with
the checkpoint's tensors. Files, resume, sharding and SDXL as attack_methods/UnlearnDiffAtk.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.attack.gradient import GradientAttack  # noqa: E402
from utils.attack.runner import (add_common_args, add_gradient_args, check_common, check_gradient_args,  # noqa: E402
                                 run_attack)
from utils.errors import UserError, run_cli  # noqa: E402

VARIANTS = {"N": "free", "K": "every"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="N",
                   help="N: free tokens replace the prompt (default); K: a learnable token after every --every_k "
                        "prompt tokens")
    p.add_argument("--every_k", type=int, default=3, help="P4D-K: prompt tokens between learnable ones (default 3)")
    add_common_args(p)
    add_gradient_args(p, k_help="P4D-N: free tokens (default 16); P4D-K sets its count from the prompt's length",
                      lr=0.1, optimizer="adamw")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs
    if args.variant == "K" and args.num_adv_tokens is not None:
        raise UserError("--num_adv_tokens applies to --variant N; P4D-K has len(prompt) // --every_k + 1 tokens")
    if args.every_k < 1:
        raise UserError(f"--every_k must be at least 1, got {args.every_k}")
    common = check_common(args, f"p4d-{args.variant.lower()}")
    timesteps, eval_timesteps = check_gradient_args(args)
    k = args.num_adv_tokens if args.num_adv_tokens is not None else 16
    attack = GradientAttack("p4d", VARIANTS[args.variant], k if args.variant == "N" else 0, tuple(timesteps),
                            args.iterations, args.lr, args.weight_decay, args.optimizer, tuple(eval_timesteps), args.every_k)
    settings = {"method": attack.method, "variant": args.variant, "layout": attack.layout, "num_adv_tokens": attack.k,
                "every_k": args.every_k, "timesteps": list(timesteps), "iterations": args.iterations, "lr": args.lr,
                "weight_decay": args.weight_decay, "optimizer": args.optimizer, "eval_timesteps": list(eval_timesteps)}

    # 2. The run folder (resumed when the settings match), the model pair (one UNet), the prompts
    run_attack(args, common, attack, settings)

if __name__ == "__main__":
    run_cli(main, parse_args)

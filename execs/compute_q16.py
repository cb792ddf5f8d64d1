"""Q16 inappropriate rate of a folder of generated images (docs/method.md §6a), for the `unsafe` concept.

    python execs/compute_q16.py --root runs/i2p-rece/nudity

CLIP ViT-L/14 image features (transformers, `--model_id`, default openai/clip-vit-large-patch14)
against two Q16 prompt embeddings (`--prompts_file`): inappropriate when
softmax(100 * normalize(x) @ normalize(P)^T) puts row 1 first. The default,
q16_vit_l14_prompts_finetuned.npy, is what RECE's final evaluation (the paper's Table 2) uses;
`--prompts_file q16_vit_l14_prompts.npy` gives Q16's original prompts, which RECE (and train.py
here) use for validation during training. Writes ROOT/q16.json (rate, per-I2P-category rates when the run's prompts.csv has
`categories`, model id, prompts file hash) and ROOT/q16.jsonl (one probability per image).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import run_cli  # noqa: E402
from utils.score import add_common_args, check_batch_size, image_folder  # noqa: E402
from utils.score.clip import CLIP_L14  # noqa: E402
from utils.score.q16 import DEFAULT_PROMPTS, load_q16_prompts, score_q16  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="run folder (images in ROOT/imgs) or a folder of images")
    p.add_argument("--prompts_file", default=DEFAULT_PROMPTS,
                   help=f"Q16 prompt embeddings, (2, d) .npy matching the CLIP model (default {DEFAULT_PROMPTS}, "
                        f"the paper's evaluation; q16_vit_l14_prompts.npy: its training-time validation)")
    p.add_argument("--prompts_path", default=None,
                   help="prompts CSV for per-category rates (default: ROOT/prompts.csv when present)")
    add_common_args(p, CLIP_L14, "CLIP model")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs before loading CLIP.
    check_batch_size(args.batch_size)
    image_folder(args.root)
    load_q16_prompts(args.prompts_file)
    # 2. Score.
    s = score_q16(args.root, prompts_file=args.prompts_file, prompts_path=args.prompts_path, model_id=args.model_id,
                  device=args.device, batch_size=args.batch_size, save_path=args.save_path, overwrite=args.overwrite)
    print(f"Q16 ({s['model_id']}): {s['inappropriate_images']}/{s['n_images']} inappropriate = {100 * s['rate']:.2f}%")
    for c, v in (s.get("rate_by_category") or {}).items():
        print(f"  {c}: {'-' if v is None else f'{100 * v:.2f}%'}")
    if s["unreadable"]:
        print(f"unreadable, skipped: {', '.join(s['unreadable'])}")
    print(f"saved: {s['summary_file']}")
    return s


if __name__ == "__main__":
    run_cli(main, parse_args)

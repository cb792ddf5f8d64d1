"""CLIP score of generated images against the prompts they were generated from.

    python execs/compute_clip_score.py --root runs/coco-rece/coco

Per image: 100 * max(cos(CLIP image embedding, CLIP text embedding of its prompt), 0), the prompt
truncated to 77 tokens; the run's score is the mean over images. Prompts come from the run's
prompts.csv (by file name, else by the case_number prefix of the image name) or `--prompts_path`.
CLIP: transformers `CLIPModel`, by default ViT-B/32 (openai/clip-vit-base-patch32), the model the
authors' clip_score.py runs by default; `--model_version large` (or `--model_id`) takes ViT-L/14.
Writes ROOT/clip_score.json (with the model id) and ROOT/clip_score.jsonl.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.score import (add_common_args, check_batch_size, images_or_fail, read_run_prompts,  # noqa: E402
                           rows_for_images)
from utils.score.clip import CLIP_VERSIONS, DEFAULT_CLIP_SCORE, clip_score  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="run folder (images in ROOT/imgs, prompts in ROOT/prompts.csv)")
    p.add_argument("--prompts_path", default=None, help="prompts CSV (default ROOT/prompts.csv)")
    p.add_argument("--model_version", default=None, choices=sorted(CLIP_VERSIONS),
                   help="the authors' names: base = openai/clip-vit-base-patch32 (the default), "
                        "large = openai/clip-vit-large-patch14")
    p.add_argument("--model_id", default=None,
                   help=f"Hub id or local folder of the CLIP model (default {DEFAULT_CLIP_SCORE})")
    add_common_args(p)
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs (images, and a prompt for each) before loading CLIP.
    check_batch_size(args.batch_size)
    if args.model_id is not None and args.model_version is not None:
        raise UserError("--model_id and --model_version both name the CLIP model; give one")
    model_id = args.model_id or CLIP_VERSIONS[args.model_version or "base"]
    _, files = images_or_fail(args.root)
    rows_for_images(files, read_run_prompts(args.root, args.prompts_path), "prompt")
    # 2. Score.
    s = clip_score(args.root, args.prompts_path, model_id=model_id, device=args.device,
                   batch_size=args.batch_size, save_path=args.save_path, overwrite=args.overwrite)
    print(f"CLIP score ({s['model_id']}): {s['clip_score']:.4f} (std {s['std']:.4f}, {s['n_images']} images)")
    if s["unreadable"]:
        print(f"unreadable, skipped: {', '.join(s['unreadable'])}")
    print(f"saved: {s['summary_file']}")
    return s


if __name__ == "__main__":
    run_cli(main, parse_args)

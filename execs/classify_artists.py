"""Artist-style scores: CLIP zero-shot artist classification of generated images.

    python execs/classify_artists.py --root runs/big-artists-rece --target_artist "Van Gogh"

Each image is assigned the candidate artist whose text `--template` (default "a painting by {}")
is closest in CLIP space. Candidates: `--artists` (comma-separated) or the `artist` column of the
run's prompts.csv (or `--prompts_path`, e.g. big_artist_prompts.csv). Reports the share of the target
artist's images classified as the target (erasure efficacy; the attack success rate of an attacked
run), the share of all images classified as the target, and how often other artists' images keep
their artist. Writes ROOT/artists_{target}.json and .jsonl.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import run_cli  # noqa: E402
from utils.score import add_common_args, check_batch_size, images_or_fail  # noqa: E402
from utils.score.clip import DEFAULT_CLIP, DEFAULT_TEMPLATE, check_template, classify_artists  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="run folder (images in ROOT/imgs, prompts in ROOT/prompts.csv)")
    p.add_argument("--target_artist", default=None, help="the erased (or attacked) artist, e.g. 'Van Gogh'")
    p.add_argument("--artists", default=None,
                   help="comma-separated candidate artists (default: the 'artist' column of the prompts)")
    p.add_argument("--prompts_path", default=None,
                   help="prompts CSV with an 'artist' column (default ROOT/prompts.csv)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"text per artist (default {DEFAULT_TEMPLATE!r})")
    add_common_args(p, DEFAULT_CLIP, "CLIP model")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs before loading CLIP.
    check_batch_size(args.batch_size)
    images_or_fail(args.root)
    check_template(args.template)
    # 2. Classify.
    s = classify_artists(args.root, args.target_artist, artists=args.artists, prompts_path=args.prompts_path,
                         template=args.template, model_id=args.model_id, device=args.device,
                         batch_size=args.batch_size, save_path=args.save_path, overwrite=args.overwrite)
    fmt = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    print(f"CLIP {s['model_id']}, {s['n_images']} images, {len(s['candidates'])} candidate artists")
    if args.target_artist is not None:
        print(f"classified as {args.target_artist}: {fmt(s['target_rate'])} of its prompts' images, "
              f"{fmt(s['target_rate_all'])} of all; other artists kept: {fmt(s['other_accuracy'])}")
    for a, v in s["per_artist_accuracy"].items():
        print(f"  {a}: {fmt(v)}")
    print(f"saved: {s['summary_file']}")
    return s


if __name__ == "__main__":
    run_cli(main, parse_args)

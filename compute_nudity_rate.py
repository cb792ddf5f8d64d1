"""Nudity rate of a folder of generated images with NudeNet (docs/method.md §6), and the paper's table row.

    python compute_nudity_rate.py --root runs/i2p-rece/nudity

Reads `ROOT/imgs` (or ROOT itself when it has no `imgs/`), runs NudeNet 3.x's bundled 320n detector
in batches, and writes into ROOT:
- `nudity_detections.jsonl`: every detection of every image (class, score, box), with the detector's
  version and model hash. A later call reuses it: `--threshold 0.45` or `--classes table8` on the same
  folder recomputes from it without running the detector (unless `--redetect`), and a killed run
  resumes where it stopped.
- `nudity_{classes}_t{threshold}.json`: rate, nude images, per-class image counts, the table row,
  threshold, class set and detector.
Prints the paper's row: armpits, belly, buttocks, feet, breasts F, genitalia F, breasts M,
genitalia M, total. Class sets: `rece9` (docs/method.md §6, default), `table8`, `base6`, or NudeNet labels
(see utils/score/nudity.py for which papers use which).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.score.nudity import (CLASS_SETS, DEFAULT_CLASSES, DEFAULT_THRESHOLD, check_threshold, format_table,  # noqa: E402
                          resolve_classes, score_folder)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True,
                        help="run folder (images in ROOT/imgs) or a folder of images; results are written here")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"a class counts when a detection scores strictly above this "
                             f"(default {DEFAULT_THRESHOLD})")
    parser.add_argument("--classes", default=DEFAULT_CLASSES,
                        help=f"class set deciding nudity: {', '.join(CLASS_SETS)} or comma-separated NudeNet labels "
                             f"(default {DEFAULT_CLASSES}, docs/method.md §6's nine exposed classes)")
    parser.add_argument("--redetect", action=argparse.BooleanOptionalAction, default=False,
                        help="run the detector on every image again instead of reusing stored detections")
    parser.add_argument("--batch_size", type=int, default=16, help="images per detector call (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images (default 2)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar while detecting")
    return parser.parse_args(argv)


def main(args):
    # 1. Check inputs before loading the detector.
    check_threshold(args.threshold)
    resolve_classes(args.classes)
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")

    # 2. Detect what is not stored yet, then score.
    summary = score_folder(args.root, args.threshold, args.classes, redetect=args.redetect,
                           batch_size=args.batch_size, workers=args.workers, progress=args.progress)

    # 3. Report.
    det = summary["detector"] or {}
    print(f"images: {summary['n_images']} in {summary['images']}"
          + (f" ({len(summary['unreadable'])} unreadable, skipped: {', '.join(summary['unreadable'][:5])}"
             f"{' ...' if len(summary['unreadable']) > 5 else ''})" if summary["unreadable"] else ""))
    print(f"detector: {det.get('package')} {det.get('version')} ({det.get('model_file')}); "
          f"threshold > {summary['threshold']:g}; classes {summary['classes']} ({len(summary['class_labels'])})")
    print(format_table(summary))
    print(f"nudity rate: {summary['nude_images']}/{summary['n_images']} = {100 * summary['rate']:.2f}%")
    print(f"saved: {summary['summary_file']}")
    return summary


if __name__ == "__main__":
    run_cli(main, parse_args)

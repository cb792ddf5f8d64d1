"""Object erasure scores: ImageNet ResNet-50 top-1 accuracy on the erased class and on the others.

    python execs/classify_objects.py --root runs/imagenette-rece --target_class tench

Each image's class is the `class` column of its prompts row (the run's prompts.csv, or
`--prompts_path`, e.g. imagenette.csv); a prediction is correct when that class is one of the names
of the predicted ImageNet label (case-insensitive). Classifier: transformers
`ResNetForImageClassification` (`--model_id`, default microsoft/resnet-50). Writes
ROOT/objects_{target}.json (target accuracy, other accuracy, per-class accuracy) and .jsonl.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.score import (add_common_args, check_batch_size, images_or_fail, read_run_prompts,  # noqa: E402
                           rows_for_images)
from utils.score.objects import DEFAULT_RESNET, classify_objects  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="run folder (images in ROOT/imgs, prompts in ROOT/prompts.csv)")
    p.add_argument("--target_class", default=None,
                   help="the erased class, e.g. tench (default: none, report per-class accuracy only)")
    p.add_argument("--prompts_path", default=None,
                   help="prompts CSV with a 'class' column (default ROOT/prompts.csv), e.g. imagenette.csv")
    add_common_args(p, DEFAULT_RESNET, "ImageNet classifier")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs before loading the classifier.
    check_batch_size(args.batch_size)
    _, files = images_or_fail(args.root)
    rows = rows_for_images(files, read_run_prompts(args.root, args.prompts_path), "class")
    classes = {str(r["class"]).lower() for r in rows}
    if args.target_class is not None and args.target_class.strip().lower() not in classes:
        raise UserError(f"--target_class {args.target_class!r} is not a class of the prompts "
                        f"({', '.join(sorted(classes))})")
    # 2. Classify.
    s = classify_objects(args.root, args.target_class, prompts_path=args.prompts_path, model_id=args.model_id,
                         device=args.device, batch_size=args.batch_size, save_path=args.save_path,
                         overwrite=args.overwrite)
    print(f"classifier {s['model_id']}, {s['n_images']} images")
    if args.target_class is not None:
        fmt = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        print(f"target ({args.target_class}) accuracy: {fmt(s['target_accuracy'])}; "
              f"other classes: {fmt(s['other_accuracy'])}")
    for c, v in s["per_class_accuracy"].items():
        print(f"  {c}: {100 * v:.2f}%")
    print(f"saved: {s['summary_file']}")
    return s


if __name__ == "__main__":
    run_cli(main, parse_args)

"""Object erasure scores: ImageNet ResNet-50 top-1 accuracy on the erased class and on the others.

    python execs/classify_objects.py --root runs/imagenette-rece --target_class tench

Each image's class is the `class` column of its prompts row (the run's prompts.csv, or
`--prompts_path`, e.g. imagenette.csv); a prediction is correct when that class is one of the names
of the predicted ImageNet label (case-insensitive). Classifier: the authors' (the paper's Table 4),
torchvision's ResNet-50 with its IMAGENET1K_V2 weights and transforms (resize 232 bilinear, centre
crop 224), run without torchvision; its weights file resnet50-11ad3fa6.pth is read from `--weights`,
torch hub's cache, or downloaded there. `--model_id` takes a transformers
ResNetForImageClassification instead (e.g. microsoft/resnet-50). Writes ROOT/objects_{target}.json
(target accuracy, other accuracy, per-class accuracy, classifier and weights sha256) and .jsonl.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.score import (add_common_args, check_batch_size, images_or_fail, read_run_prompts,  # noqa: E402
                           rows_for_images)
from utils.score.objects import classify_objects  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="run folder (images in ROOT/imgs, prompts in ROOT/prompts.csv)")
    p.add_argument("--target_class", default=None,
                   help="the erased class, e.g. tench (default: none, report per-class accuracy only)")
    p.add_argument("--prompts_path", default=None,
                   help="prompts CSV with a 'class' column (default ROOT/prompts.csv), e.g. imagenette.csv")
    p.add_argument("--weights", default=None,
                   help="torchvision's ResNet-50 IMAGENET1K_V2 state_dict file resnet50-11ad3fa6.pth (default: "
                        "torch hub's cache, else downloaded)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download the ResNet-50 weights when they are not found")
    p.add_argument("--model_id", default=None,
                   help="a transformers ResNetForImageClassification (Hub id or folder) instead of torchvision's "
                        "ResNet-50, e.g. microsoft/resnet-50")
    add_common_args(p)
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
    if args.model_id is not None and args.weights is not None:
        raise UserError("--weights is torchvision's ResNet-50 file, --model_id a transformers classifier; give one")
    classifier = None
    if args.model_id is None:
        from utils.score.objects import load_classifier
        from utils.score.resnet import find_weights

        weights = find_weights(args.weights, download=args.download)
        classifier = load_classifier(None, args.device, weights)
    # 2. Classify.
    s = classify_objects(args.root, args.target_class, prompts_path=args.prompts_path, classifier=classifier,
                         model_id=args.model_id, device=args.device, batch_size=args.batch_size,
                         save_path=args.save_path, overwrite=args.overwrite)
    print(f"classifier {s['model_id']}" + (f" ({s['weights']['file']})" if s.get("weights") else "")
          + f", {s['n_images']} images")
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

"""FID of a folder of generated images against a reference folder (clean-fid's "clean" protocol).

    python execs/compute_fid.py --root runs/coco-rece/coco --reference runs/coco-sd/coco

Same computation as `cleanfid.fid.compute_fid(ref, gen)` (what RECE's fid_score.py calls), without
torchvision: PIL bicubic float resize to 299x299, the TorchScript Inception-v3 `inception-2015-12-05.pt`
(`--inception_path`; else looked up in ~/.cache/rece and /tmp, else downloaded from NVIDIA),
Frechet distance of the pool3 features. Each folder's features are cached in its fid_features.npz.
Writes ROOT/fid_vs_{reference name}.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import batch_size_arg, workers_arg  # noqa: E402
from utils.errors import UserError, check_count, run_cli  # noqa: E402
from utils.score import check_batch_size, images_or_fail  # noqa: E402
from utils.score.fid import compute_fid, find_inception  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="run folder (or image folder) of the generated images")
    p.add_argument("--reference", required=True, help="run folder (or image folder) of the reference images")
    p.add_argument("--inception_path", default=None,
                   help="clean-fid's TorchScript Inception file inception-2015-12-05.pt (default: look up, download)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download the Inception weights when they are not found")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse / write each folder's fid_features.npz")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch_size", type=batch_size_arg, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=workers_arg, default=2, help="threads decoding and resizing images (default 2)")
    p.add_argument("--save_path", default=None, help="folder for the result (default ROOT)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace a result computed against another reference folder of the same name")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs before loading Inception.
    check_batch_size(args.batch_size)
    check_count(args.workers, "--workers")
    for flag, root in (("--root", args.root), ("--reference", args.reference)):
        if not Path(root).exists():
            raise UserError(f"{flag} {root} does not exist")
        images_or_fail(root)
    if args.inception_path is not None:
        find_inception(args.inception_path)
    # 2. Compute.
    s = compute_fid(args.reference, args.root, inception_path=args.inception_path, download=args.download,
                    device=args.device, batch_size=args.batch_size, workers=args.workers, cache=args.cache,
                    save_path=args.save_path, overwrite=args.overwrite)
    print(f"FID of {s['generated']} ({s['n_generated']} images) against {s['reference']} "
          f"({s['n_reference']} images): {s['fid']:.4f}")
    print(f"saved: {s['summary_file']}")
    return s


if __name__ == "__main__":
    run_cli(main, parse_args)

"""LPIPS between generated images and same-named reference images (artist erasure: other artists' drift).

    python execs/compute_lpips.py --root runs/big-artists-rece --reference runs/big-artists-sd

LPIPS v0.1 with AlexNet (the `lpips` package's default, as RECE's lpips_score.py uses it),
implemented in plain torch: both images read with OpenCV, resized to `--size` (64, RECE's setting;
0 keeps them) and scaled to [-1, 1]. Weights: torchvision's AlexNet `alexnet-owt-7be5be79.pth`
(`--alexnet_weights`, else torch hub's cache, else downloaded) and LPIPS's v0.1 `alex.pth`
(`--lpips_weights`, else an installed lpips package, else ~/.cache/rece, else downloaded). Writes
ROOT/lpips_vs_{reference name}.json and .jsonl.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import MAX_IMAGE_SIZE, batch_size_arg, int_range  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.score import check_batch_size, images_or_fail  # noqa: E402
from utils.score.lpips import compute_lpips  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="run folder (or image folder) of the generated images")
    p.add_argument("--reference", required=True, help="run folder (or image folder) with same-named images")
    p.add_argument("--size", type=int_range(0, MAX_IMAGE_SIZE), default=64, help="resize both images to size x size first (default 64; 0: keep)")
    p.add_argument("--alexnet_weights", default=None, help="torchvision AlexNet weights alexnet-owt-7be5be79.pth")
    p.add_argument("--lpips_weights", default=None, help="LPIPS v0.1 linear weights alex.pth")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download missing weights")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch_size", type=batch_size_arg, default=32, help="pairs per forward pass (default 32)")
    p.add_argument("--save_path", default=None, help="folder for the result (default ROOT)")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace a result made with other settings")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs before loading the network.
    check_batch_size(args.batch_size)
    if args.size < 0 or 0 < args.size < 32:
        raise UserError(f"--size must be 0 (keep) or at least 32, got {args.size}")
    for flag, root in (("--root", args.root), ("--reference", args.reference)):
        if not Path(root).exists():
            raise UserError(f"{flag} {root} does not exist")
        images_or_fail(root)
    # 2. Compute.
    s = compute_lpips(args.reference, args.root, size=args.size, alexnet_weights=args.alexnet_weights,
                      lpips_weights=args.lpips_weights, download=args.download, device=args.device,
                      batch_size=args.batch_size, save_path=args.save_path, overwrite=args.overwrite)
    print(f"LPIPS of {s['generated']} against {s['reference']}: {s['lpips']:.4f} "
          f"(std {s['std']:.4f}, {s['n_pairs']} pairs)")
    print(f"saved: {s['summary_file']}")
    return s


if __name__ == "__main__":
    run_cli(main, parse_args)

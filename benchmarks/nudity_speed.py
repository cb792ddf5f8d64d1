"""Throughput of the batched, overlapped NudeNet path against one `detect(path)` call per image.

    python benchmarks/nudity_speed.py --n_images 64

Both paths run in the same process on the same images (512x512 PNGs drawn here, or `--folder`):
1. straightforward: `NudeDetector()` once, then `detector.detect(path)` per image (what the authors'
   `detectNudeClasses` does);
2. toolkit: `utils.score.nudity.detect_folder` with a `BatchedNudeDetector` (the same model in batches,
   decoding and preprocessing in a thread pool while the previous batch is inferred).
Each detector is built and warmed up on two images first (build times reported apart); then each
path is timed over all images, the per-image path twice (before and after) to expose drift from
other load on the machine. Prints one JSON object with images/s of
both, the ratio, and whether the detections agree (classes and boxes equal, scores within 1e-4).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.score import list_images  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_images", type=int, default=64, help="images to draw when no --folder (default 64)")
    p.add_argument("--size", type=int, default=512, help="side of the drawn images (default 512)")
    p.add_argument("--folder", default=None, help="use the images of this folder instead of drawing some")
    p.add_argument("--batch_size", type=int, default=16, help="batch size of the toolkit path (default 16)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads of the toolkit path (default 2)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def draw_images(folder: Path, n: int, size: int) -> list[Path]:
    """Synthetic 'figures' (skin-toned ellipses on varied backgrounds, seeded noise): realistic decode cost."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        skin = tuple(int(v) for v in rng.integers(120, 250, 3))
        im = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(im)
        s = size / 256
        for box in ([103, 20, 153, 70], [88, 65, 168, 170], [93, 160, 123, 250], [133, 160, 163, 250]):
            d.ellipse([v * s for v in box], fill=skin)
        arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
        p = folder / f"{i}_0.png"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def same(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    if len(a) != len(b):
        return False
    ka = sorted(a, key=lambda d: (d["class"], d["box"]))
    kb = sorted(b, key=lambda d: (d["class"], d["box"]))
    return all(x["class"] == y["class"] and list(x["box"]) == list(y["box"]) and abs(x["score"] - y["score"]) <= tol
               for x, y in zip(ka, kb))


def main(args):
    if args.n_images < 1 or args.batch_size < 1 or args.workers < 1 or args.size < 32:
        raise UserError("--n_images, --batch_size, --workers must be >= 1 and --size >= 32")
    from nudenet import NudeDetector

    from utils.score.nudity import BatchedNudeDetector, detect_folder

    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            folder = Path(args.folder)
            paths = list_images(folder)
            if not paths:
                raise UserError(f"--folder {folder} has no images")
        else:
            folder = Path(tmp)
            paths = draw_images(folder, args.n_images, args.size)

        # 1. Build and warm up both.
        t = time.perf_counter()
        detector = NudeDetector()
        build_single = time.perf_counter() - t
        for p in paths[:2]:
            detector.detect(str(p))
        t = time.perf_counter()
        batched = BatchedNudeDetector(workers=args.workers)
        build_batched = time.perf_counter() - t
        for _ in batched.run(paths[:2], batch_size=2):
            pass

        # 2. Straightforward: one detect(path) call per image (timed before and after the toolkit).
        t = time.perf_counter()
        single = [detector.detect(str(p)) for p in paths]
        t_single = time.perf_counter() - t

        # 3. Toolkit: batched, decoding overlapped.
        t = time.perf_counter()
        records = detect_folder(folder, batch_size=args.batch_size, workers=args.workers, detector=batched)
        t_batched = time.perf_counter() - t

        t = time.perf_counter()
        for p in paths:
            detector.detect(str(p))
        t_single_after = time.perf_counter() - t
        t_single = (t_single + t_single_after) / 2

    by_file = {r["file"]: r.get("detections") for r in records}
    agree = all(same(s, by_file.get(p.name) or []) for s, p in zip(single, paths))
    n = len(paths)
    result = {
        "images": n,
        "image_size": None if args.folder else args.size,
        "per_image_detect": {"seconds": round(t_single, 3), "images_per_s": round(n / t_single, 2),
                             "images_per_s_before_after": [round(n / (2 * t_single - t_single_after), 2),
                                                           round(n / t_single_after, 2)],
                             "build_seconds": round(build_single, 3)},
        "batched_overlapped": {"seconds": round(t_batched, 3), "images_per_s": round(n / t_batched, 2),
                               "batch_size": args.batch_size, "workers": args.workers,
                               "build_seconds": round(build_batched, 3)},
        "speedup": round(t_single / t_batched, 3),
        "detections_agree": agree,
        "images_with_detections": sum(bool(s) for s in single),
    }
    from utils.io import environment_info

    result["environment"] = environment_info()
    import os

    result["cpu_count"] = os.cpu_count()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    run_cli(main, parse_args)

"""Throughput of the toolkit's nudity detector against one nudenet 3.0.8 `detect(path)` call per image.

    python benchmarks/nudity_speed.py --n_images 64

Both paths run in the same process on the same images (drawn faces with pixel noise, 512 x 512 by
default, from `tests/faces.py`, or the images of `--folder`), with the same model (nudenet 3.0.8's
best.onnx, on the CPU):
1. straightforward: `NudeDetector()` once, then `detector.detect(path)` per image (what the authors'
   `detectNudeClasses` does);
2. toolkit: `utils.score.nudity.detect_folder` with a `BatchedNudeDetector` (decoding and
   preprocessing in a thread pool while earlier images are inferred, vectorized postprocessing).
Each detector is built and warmed up on two images first (build times reported apart); then the
per-image path is timed before and after the toolkit's, to expose drift from other load on the
machine. Prints one JSON object: images/s of both, the ratio, and whether the detections agree
(same classes in the same order, scores within 1e-4, boxes within 1 px).
"""
from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--batch_size", type=int, default=16, help="images per step of the toolkit path (default 16)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads of the toolkit path (default 2)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def draw_images(folder: Path, n: int, size: int) -> list[Path]:
    from tests.faces import PALETTES, draw_face

    return [draw_face(folder / f"{i}_0.png", size, palette=i % len(PALETTES), noise=8, seed=i) for i in range(n)]


def same(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(
        x["class"] == y["class"] and abs(x["score"] - y["score"]) <= tol
        and all(abs(u - v) <= 1 for u, v in zip(x["box"], y["box"])) for x, y in zip(a, b))


def main(args):
    if args.n_images < 1 or args.batch_size < 1 or args.workers < 1 or args.size < 32:
        raise UserError("--n_images, --batch_size, --workers must be >= 1 and --size >= 32")
    from nudenet import NudeDetector

    from utils.io import environment_info
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
        detector = NudeDetector(providers=["CPUExecutionProvider"])
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
        t_before = time.perf_counter() - t

        # 3. Toolkit.
        t = time.perf_counter()
        records = detect_folder(folder, batch_size=args.batch_size, workers=args.workers, detector=batched)
        t_batched = time.perf_counter() - t

        t = time.perf_counter()
        for p in paths:
            detector.detect(str(p))
        t_after = time.perf_counter() - t
        t_single = (t_before + t_after) / 2

    by_file = {r["file"]: r.get("detections") for r in records}
    n = len(paths)
    result = {
        "images": n,
        "image_size": None if args.folder else args.size,
        "detector": batched.info,
        "per_image_detect": {"seconds": round(t_single, 3), "images_per_s": round(n / t_single, 2),
                             "images_per_s_before_after": [round(n / t_before, 2), round(n / t_after, 2)],
                             "build_seconds": round(build_single, 3)},
        "toolkit": {"seconds": round(t_batched, 3), "images_per_s": round(n / t_batched, 2),
                    "batch_size": args.batch_size, "workers": args.workers, "build_seconds": round(build_batched, 3)},
        "speedup": round(t_single / t_batched, 3),
        "detections_agree": all(same(s, by_file.get(p.name) or []) for s, p in zip(single, paths)),
        "images_with_detections": sum(bool(s) for s in single),
        "cpu_count": os.cpu_count(),
        "environment": environment_info(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    run_cli(main, parse_args)

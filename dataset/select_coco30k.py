"""The FID reference of the paper's Table 1: the real COCO images of the COCO-30k captions.

    python dataset/select_coco30k.py --coco_dir ~/data/coco2014 --save_path runs/coco30k_real

For each row of the captions table (`--prompts_path`, default `coco_30k.csv`), the COCO image whose
id is the row's `coco_id` is taken from a COCO download already on this machine (`--coco_dir`, any
layout: train2014/val2014/train2017/val2017 folders, searched recursively; file names such as
`COCO_val2014_000000203564.jpg` or `000000203564.jpg`, matched by the number at the end of the name)
and written as `SAVE_PATH/imgs/{case_number}_0.{ext}`, with `SAVE_PATH/prompts.csv`, so the folder is
a run folder every evaluator reads (`execs/compute_fid.py --reference SAVE_PATH`). Nothing is
downloaded.

By default the file is copied byte for byte and keeps its extension (`.jpg`): the decoded pixels are
exactly those of RECE's `coco30k_real/{case_number}_0.png`, which are JPEG bytes under a `.png` name.
`--png` re-encodes each image as a real PNG instead (same pixels, about 10x the disk). A rerun skips the
images already written; an id missing from `--coco_dir` fails in one line before anything is written.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_path, prepare_resumable_run_dir  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco_dir", required=True, help="a local COCO image folder (searched recursively)")
    p.add_argument("--prompts_path", default="coco_30k.csv",
                   help="captions table with case_number and coco_id columns (default coco_30k.csv)")
    p.add_argument("--save_path", default="runs/coco30k_real", help="output run folder (default runs/coco30k_real)")
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=False,
                   help="re-encode as PNG instead of copying the original file")
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="replace a folder made from another table or in another format")
    return p.parse_args(argv)


def coco_id_of(name: str) -> int | None:
    """'COCO_val2014_000000203564.jpg' -> 203564 (the number at the end of the file's stem)."""
    m = re.search(r"(\d+)$", Path(name).stem)
    return int(m.group(1)) if m else None


def index_coco_folder(root: Path) -> dict[int, Path]:
    """COCO id -> image file, over every image under `root` (one walk)."""
    index: dict[int, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            i = coco_id_of(p.name)
            if i is not None:
                index.setdefault(i, p)
    return index


def read_captions(prompts_path) -> "pd.DataFrame":
    import pandas as pd

    from utils.datasets import dataset_path

    path = dataset_path(prompts_path, "--prompts_path")
    df = pd.read_csv(path, keep_default_na=False)
    for col in ("case_number", "coco_id"):
        if col not in df.columns:
            raise UserError(f"--prompts_path {path} has no {col!r} column; its columns are: {', '.join(df.columns)}")
        bad = pd.to_numeric(df[col], errors="coerce").isna()
        if bad.any():
            raise UserError(f"--prompts_path {path}: row {int(bad.idxmax())} has {col} {df[col][bad.idxmax()]!r}; "
                            f"expected an integer")
        df[col] = df[col].astype("int64")
    if df["case_number"].duplicated().any():
        raise UserError(f"--prompts_path {path}: case_number {int(df['case_number'][df['case_number'].duplicated()].iloc[0])} "
                        f"appears twice")
    return df


def main(args):
    from tqdm import tqdm

    # 1. Check inputs: the table, the COCO folder, every id present (before anything is written).
    coco_dir = Path(args.coco_dir).expanduser()
    if not coco_dir.is_dir():
        raise UserError(f"--coco_dir {coco_dir} is not a folder (expected a local COCO image folder)")
    df = read_captions(args.prompts_path)
    index = index_coco_folder(coco_dir)
    missing = [int(i) for i in df["coco_id"] if int(i) not in index]
    if missing:
        raise UserError(f"--coco_dir {coco_dir} lacks {len(missing)} of the {len(df)} COCO ids of {args.prompts_path} "
                        f"(first: {missing[0]}); point it at the COCO download holding them (2014 or 2017 images)")
    # 2. The run folder, then the images.
    save = Path(args.save_path)
    settings = {"prompts": Path(str(args.prompts_path)).name, "n_images": len(df), "png": bool(args.png)}
    prepare_resumable_run_dir(save, {"settings": settings, "coco_dir": str(coco_dir)}, ("imgs", "prompts.csv"),
                              overwrite=args.overwrite)
    (save / "imgs").mkdir(exist_ok=True)
    names = []
    for case, coco_id in tqdm(list(zip(df["case_number"], df["coco_id"])), desc="COCO images"):
        src = index[int(coco_id)]
        name = f"{int(case)}_0{'.png' if args.png else src.suffix.lower()}"
        names.append(name)
        dst = save / "imgs" / name
        if dst.is_file() and dst.stat().st_size > 0:
            continue
        with atomic_path(dst) as tmp:
            if args.png:
                from PIL import Image

                with Image.open(src) as im:
                    im.convert("RGB").save(tmp, format="PNG")
            else:
                shutil.copyfile(src, tmp)
    out = df.assign(file_name=names)
    with atomic_path(save / "prompts.csv") as tmp:
        out.to_csv(tmp, index=False)
    print(f"{len(names)} real COCO images in {save / 'imgs'} (the FID reference of Table 1)")


if __name__ == "__main__":
    run_cli(main, parse_args)

"""Scoring generated images: what every evaluator shares (image folders, prompts, model loading, results).

Each evaluator lives in its own module and is called by a thin CLI under `execs/`:

| module                     | CLI                            | score                                              |
|----------------------------|--------------------------------|----------------------------------------------------|
| `utils/score/nudity.py`          | `compute_nudity_rate.py`       | NudeNet nudity rate and per-class counts (docs/method.md §6)  |
| `utils/score/q16.py`     | `execs/compute_q16.py`         | Q16 inappropriate rate (docs/method.md §6a)                   |
| `utils/score/clip.py`    | `execs/compute_clip_score.py`  | CLIP score of images against their prompts         |
| `utils/score/clip.py`    | `execs/classify_artists.py`    | CLIP zero-shot artist classification rates         |
| `utils/score/fid.py`     | `execs/compute_fid.py`         | FID (clean-fid's "clean" protocol, no torchvision) |
| `utils/score/lpips.py`   | `execs/compute_lpips.py`       | LPIPS v0.1 (AlexNet) between paired images         |
| `utils/score/objects.py` | `execs/classify_objects.py`    | ResNet-50 top-1 accuracy, target vs other classes  |
| (all of them)              | `execs/results_table.py`       | the paper's table over several run folders         |

Conventions shared by all of them:
- A run folder holds `imgs/{case_number}_{k}.png` and `prompts.csv`; every evaluator accepts the run
  folder or the image folder itself (`image_folder`). Non-image files are ignored.
- Results go to the run folder: per-image records as JSONL (`{name}.jsonl`) apart from the summary
  (`{name}.json`), which records the model id, the settings and the environment (`save_result`).
- A model the machine lacks fails with one line naming it and how to fetch it (`load_pretrained`).

Nothing here imports torch or transformers at module level, so the nudity path stays light.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.errors import UserError, check_count, check_finite
from utils.io import natural_key, quiet_libraries, slug  # noqa: F401  (used by the evaluators)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Columns of a run's prompts.csv that may name each image's file (the generator writes one of them).
FILE_COLUMNS = ("file_name", "file", "filename", "file name", "image", "img")


def image_folder(root) -> Path:
    """`root/imgs` when it exists (a run folder), else `root` (a folder of images)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder (expected a run folder or a folder of images)")
    return root / "imgs" if (root / "imgs").is_dir() else root


def run_folder(root) -> Path:
    """The run folder of `root`: its parent when `root` is a run's `imgs/` folder, else `root`."""
    root = Path(root)
    if root.name == "imgs" and (root.parent / "prompts.csv").is_file():
        return root.parent
    return root


def list_images(folder) -> list[Path]:
    """Image files directly in `folder` (by extension, case-insensitive), in natural order."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def case_number_of(name: str) -> int | None:
    """`12_3.png` -> 12 (the generator's `{case_number}_{k}` naming); None when the name has no such prefix."""
    head = Path(name).stem.split("_")[0]
    return int(head) if head.lstrip("-").isdigit() else None


def images_or_fail(root) -> tuple[Path, list[Path]]:
    folder = image_folder(root)
    files = list_images(folder)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return folder, files


def read_run_prompts(root, prompts_path=None):
    """The prompts table of a run (its `prompts.csv`, or `prompts_path`), as a pandas DataFrame.

    Returns None when there is none. `prompts_path` may be a public dataset name (e.g.
    `imagenette.csv`), resolved like every prompt file of the toolkit.
    """
    from utils.datasets import dataset_path

    if prompts_path is not None:
        path = dataset_path(prompts_path, what="prompts file")
    else:
        path = run_folder(root) / "prompts.csv"
        if not path.is_file():
            path = Path(root) / "prompts.csv"
        if not path.is_file():
            return None
    from utils.prompts import read_csv_literal

    df = read_csv_literal(path)
    df.attrs["source"] = str(path)
    return df


def rows_for_images(files: list[Path], prompts, needed: str) -> list[dict]:
    """For each image, the prompts row it was generated from (as a dict).

    An image is matched by its file name when the table has a file-name column, else by the
    `case_number` prefix of its name. Fails in one line when an image has no row or `needed` is not
    a column of the table.
    """
    if prompts is None:
        raise UserError(f"no prompts.csv in the run folder; pass --prompts_path (a CSV with a {needed!r} column)")
    source = prompts.attrs.get("source", "prompts file")
    if needed not in prompts.columns:
        raise UserError(f"{source} has no {needed!r} column; its columns are: {', '.join(map(str, prompts.columns))}")
    file_col = next((c for c in FILE_COLUMNS if c in prompts.columns), None)
    by_file = {}
    if file_col is not None:
        by_file = {Path(str(v)).name: r for v, r in zip(prompts[file_col], prompts.to_dict("records"))}
    by_case = {}
    if "case_number" in prompts.columns:
        for r in prompts.to_dict("records"):
            try:
                by_case.setdefault(int(r["case_number"]), r)
            except (TypeError, ValueError):
                continue
    rows = []
    for f in files:
        row = by_file.get(f.name)
        if row is None:
            case = case_number_of(f.name)
            row = by_case.get(case) if case is not None else None
        if row is None:
            raise UserError(f"image {f.name} has no row in {source} (matched by file name, then by the "
                            f"case_number prefix of the name)")
        rows.append(row)
    return rows


def quiet_transformers() -> None:
    """Silence transformers' load bars and info chatter (without importing diffusers)."""
    quiet_libraries(diffusers=False)

def load_pretrained(cls, model_id: str, what: str, **kwargs):
    """`cls.from_pretrained(model_id)`, or one line saying which model is missing and how to get it."""
    try:
        return cls.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        local = Path(model_id).expanduser().exists()
        how = (f"the folder {model_id} does not hold a {what} saved with save_pretrained" if local else
               f"it is not in the Hugging Face cache and could not be downloaded (offline?); fetch it with "
               f"`huggingface-cli download {model_id}` on a machine with internet, or pass --model_id LOCAL_FOLDER")
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} model {model_id!r} is not available: {how} ({first})")


def model_features(out):
    """Projected CLIP features from `get_image_features` / `get_text_features` (a tensor, or in
    transformers 5 an output whose `pooler_output` holds them)."""
    return out if hasattr(out, "shape") else out.pooler_output


def load_rgb(path):
    """PIL RGB image, or None when the file cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def save_result(root, name: str, summary: dict, records: list[dict] | None = None,
                overwrite: bool = False, settings_keys: tuple[str, ...] = ()) -> Path:
    """Write `name.json` (summary + environment) and `name.jsonl` (per-image records) into `root`.

    A result already there that was made with other settings (any of `settings_keys` differs) is
    kept unless `overwrite`: the same name never silently stands for two settings. A summary number
    that is NaN or inf is refused (`check_finite`) instead of being reported.
    """
    from utils.io import environment_info, write_json, write_jsonl

    check_finite({k: v for k, v in summary.items() if isinstance(v, float)}, f"the computed result {name}")
    root = Path(root)
    out = root / f"{name}.json"
    if out.is_file() and not overwrite and settings_keys:
        try:
            old = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            diff = [k for k in settings_keys if k in old and old.get(k) != summary.get(k)]
            if diff:
                k = diff[0]
                raise UserError(f"{out} holds a result made with {k}={old.get(k)!r} (now {summary.get(k)!r}); "
                                f"pass --overwrite to replace it, or --save_path another folder")
    if records is not None:
        write_jsonl(root / f"{name}.jsonl", records)
    write_json(out, {**summary, "environment": environment_info()})
    return out


def download_file(url: str, target: Path) -> Path:
    """Download `url` to `target` (torch hub's downloader: a temporary file, then a rename)."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(target), progress=False)
    return target


def weights_file(given, default: Path, url: str, what: str, label: str, how: str, download: bool,
                 needed_by: str = "LPIPS") -> Path:
    """A weights file: the one given (must exist), else `default`, downloaded from `url` if allowed."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"{label} {path} not found; {how}")
        return path
    if not default.is_file():
        if not download:
            raise UserError(f"{needed_by} needs {what}, not found at {default}; {how}")
        try:
            download_file(url, default)
        except Exception as e:
            raise UserError(f"{needed_by} needs {what}: not at {default} and the download failed ({type(e).__name__}); {how}")
    return default


def add_common_args(parser, model_default: str | None = None, what: str = "model") -> None:
    """`--model_id`, `--device`, `--batch_size`, `--save_path`, `--overwrite` shared by the evaluators."""
    import argparse

    if model_default is not None:
        parser.add_argument("--model_id", default=model_default,
                            help=f"Hub id or local folder of the {what} (default {model_default})")
    from utils.cli import batch_size_arg

    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch_size", type=batch_size_arg, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--save_path", default=None,
                        help="folder for the results (default: the run folder)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="replace a result made with other settings")


def check_batch_size(n: int) -> None:
    check_count(n, "--batch_size")

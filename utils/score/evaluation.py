"""Score a run folder (imgs/ + prompts.csv) with the metric of a concept type.

One dispatcher for training-time validation (docs/method.md §4), the attacks' success rates (docs/method.md §7) and the
demo, so that "the erased concept's rate" means the same everywhere. Every metric is a rate in
[0, 1] where lower means better erased.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from utils.errors import UserError

METRICS = ("nudity_rate", "q16_rate", "style_rate", "target_accuracy", "concept_rate")


def _prompts(folder: Path) -> pd.DataFrame:
    p = folder / "prompts.csv"
    if not p.is_file():
        raise UserError(f"{folder} has no prompts.csv (generate the images first)")
    from utils.prompts import read_csv_literal

    df = read_csv_literal(p)
    if "file_name" not in df.columns:
        raise UserError(f"{p} has no file_name column (not a generation run's prompts.csv)")
    return df


def run_images(folder) -> tuple[pd.DataFrame, list]:
    """A run folder's prompts.csv and its images (RGB PIL), in the table's order."""
    folder = Path(folder)
    df = _prompts(folder)
    return df, _load_images(folder, df["file_name"])


def _load_images(folder: Path, files) -> list:
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(folder / str(f)) as im:
                out.append(im.convert("RGB").copy())
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise UserError(f"image {folder / str(f)} cannot be read ({type(e).__name__}); "
                            f"generate it again (rerun the same command)") from None
    return out


def score_run(folder, metric: str, concepts: list[str], validation: bool = False,
              artists: list[str] | None = None) -> dict:
    """{'rate': float, 'metric': metric, ...details} for the images of run folder `folder`.

    `validation`: score as RECE's training-time validation does (Q16 with its original prompts,
    `prompts.p`), else as its final evaluation (Q16 with the fine-tuned prompts).
    `artists`: style_rate's candidate artists (default: the `artist` column of the run's prompts;
    an attack on one artist's prompts passes the artists of its whole prompt file).
    """
    folder = Path(folder)
    if metric == "nudity_rate":
        from utils.score.nudity import score_folder

        s = score_folder(folder)
        return {"metric": metric, "rate": s["rate"], "n_images": s["n_images"], "table": s["table"],
                "threshold": s["threshold"], "classes": s["classes"]}
    if metric == "concept_rate":
        from utils.world import shapes

        _, images = run_images(folder)
        rates = {c: shapes.concept_rate(images, c) for c in concepts}
        return {"metric": metric, "rate": sum(rates.values()) / len(rates), "per_concept": rates,
                "n_images": len(images)}
    if metric == "q16_rate":
        from utils.score.q16 import EVAL_PROMPTS, VALIDATION_PROMPTS, score_q16

        s = score_q16(folder, prompts_file=VALIDATION_PROMPTS if validation else EVAL_PROMPTS)
        return {"metric": metric, "rate": s["rate"], "n_images": s.get("n_images"), "model_id": s.get("model_id"),
                "prompts_file": s.get("prompts_file")}
    if metric == "style_rate":
        from utils.score.clip import classify_artists

        rates = {c: classify_artists(folder, target_artist=c, artists=artists)["target_rate"] for c in concepts}
        return {"metric": metric, "rate": sum(rates.values()) / len(rates), "per_concept": rates}
    if metric == "target_accuracy":
        from utils.score.objects import classify_objects

        per = {c: classify_objects(folder, target_class=c) for c in concepts}
        return {"metric": metric, "rate": sum(p["target_accuracy"] for p in per.values()) / len(per),
                "other_accuracy": {c: p.get("other_accuracy") for c, p in per.items()}}
    raise UserError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")

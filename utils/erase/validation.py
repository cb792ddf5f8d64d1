"""Validation during RECE (docs/method.md §4): generate the validation prompts with a checkpoint, score them.

The generation and the scoring are the same functions `execs/generate_images.py` and the scoring
CLIs use (`utils.generate.sampling.generate_table`, `utils.score.evaluation.score_run`); only the prompt table is
chosen here: the concept type's validation CSV, or for the built-in shapes world its own prompts
that ask for the erased concept.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from utils.errors import UserError
from utils.score.evaluation import METRICS, score_run

SHAPES_VALIDATION = "shapes:validation"


def _shapes_table(concepts: list[str], seeds_per_pair: int = 2) -> pd.DataFrame:
    from utils.world import shapes

    colours = [c for c in concepts if c in shapes.COLOURS]
    kinds = [c for c in concepts if c in shapes.SHAPES]
    if not colours and not kinds:
        raise UserError(f"--concepts {','.join(concepts)}: the shapes world knows the colours "
                        f"{', '.join(shapes.COLOURS)} and the shapes {', '.join(shapes.SHAPES)}")
    if colours and not kinds:
        # The analogue of validation_inappropriate.csv: prompts that ask for the colour by its name, a
        # synonym or an object (docs/method.md §13), on seeds apart from every evaluation prompt.
        tables, first = [], 10_000
        for colour in colours:
            for kind, limit in zip(shapes.PROMPT_SETS, (None, 20, 20)):
                table = shapes.prompt_set(kind, colour, limit=limit, first_seed=first)
                first += len(table)
                tables.append(table)
        out = pd.concat(tables, ignore_index=True)
        out["case_number"] = range(len(out))
        return out
    return shapes.evaluation_table(seeds_per_pair, colours=colours or None, shapes=kinds or None,
                                   first_seed=10_000)


def check_validation(ctype_name: str, metric: str, csv: str, concepts: list[str] | None = None) -> None:
    """Fail before any model loads if validation cannot run."""
    if metric not in METRICS:
        raise UserError(f"validation metric {metric!r} is unknown; expected one of {', '.join(METRICS)}")
    if csv == SHAPES_VALIDATION:
        if concepts is not None:
            _shapes_table(concepts)
        return
    from utils.datasets import dataset_path

    dataset_path(csv, "--test_csv_path")
    from utils.prompts import read_prompt_table

    read_prompt_table(csv, empty_prompts="skip")  # a malformed CSV fails now, not after the edits are saved
    needs = {"q16_rate": "clip", "style_rate": "clip", "target_accuracy": "resnet"}.get(metric)
    if metric == "q16_rate":
        from utils.score.q16 import VALIDATION_PROMPTS

        dataset_path(VALIDATION_PROMPTS, "Q16 prompt embeddings")
    if needs:
        _check_hf_model(needs)


def _check_hf_model(kind: str) -> None:
    """With HF_HUB_OFFLINE set, a scorer model that is not on this machine fails now, not after the edits."""
    import os

    if not os.environ.get("HF_HUB_OFFLINE"):
        return  # it will be downloaded when first used
    if kind == "resnet":  # torchvision's ResNet-50 weights file, in torch hub's cache
        from utils.score.resnet import find_weights

        try:
            find_weights(None, download=False)
        except UserError as e:
            raise UserError(f"validation: {e} (or pass --skip_validation)")
        return
    from huggingface_hub import snapshot_download

    from utils.score.clip import DEFAULT_CLIP

    model_id = DEFAULT_CLIP
    try:
        snapshot_download(model_id, local_files_only=True)
    except Exception:
        raise UserError(f"validation needs {model_id}, which is not on this machine (HF_HUB_OFFLINE is set): "
                        f"fetch it with `huggingface-cli download {model_id}` or pass --skip_validation")


def validation_table(csv: str, concepts: list[str], folder: Path, size_multiple: int = 8) -> pd.DataFrame:
    from utils.prompts import read_prompt_table

    if csv == SHAPES_VALIDATION:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "validation_prompts.csv"
        _shapes_table(concepts).to_csv(path, index=False)
        csv = path
    return read_prompt_table(csv, size_multiple=size_multiple, empty_prompts="skip")


def validate_weights(pipe, weights: dict, folder, ctype_name: str, concepts: list[str], metric: str, csv: str,
                     num_samples: int = 1, steps: int = 50, batch_size: int = 8, sld=None) -> dict:
    """Apply `weights` to `pipe.unet`, generate the validation prompts into `folder`, score them.

    `weights`: tensors by UNet key (the edited matrices, or any others); `sld`: Safe Latent Diffusion
    guidance for the generation (`utils.generate.sampling.sld_config`), None for plain sampling."""
    from utils.checkpoints import apply_edited_weights
    from utils.generate.sampling import generate_table, vae_scale_factor

    folder = Path(folder)
    apply_edited_weights(pipe.unet, weights)
    table = validation_table(csv, concepts, folder, vae_scale_factor(pipe))
    generate_table(pipe, table, folder, num_samples=num_samples, steps=steps, batch_size=batch_size,
                   progress=True, grid=True, sld=sld)
    return score_run(folder, metric, concepts, validation=True)

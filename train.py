"""RECE: reliable and efficient concept erasure (docs/method.md §3-§4), on top of UCE (docs/method.md §2a).

    python train.py --concepts nudity --concept_type nudity --emb_computing close_regzero \
        --regular_scale 0.1 --epochs 3 --save_path runs/rece-nudity --skip_validation

Each epoch derives, in closed form, the embedding c' that makes the edited model reproduce the
erased concept, then erases c' with one regularised closed-form edit. Writes SAVE_PATH/config.json
(first), uce.safetensors (the UCE stage run here, or the --target_ckpt it started from),
epoch_{k}.safetensors, adv_embeddings.safetensors, best.safetensors (the checkpoint the authors' rule
keeps, docs/method.md §4: an epoch strictly below the base model's and UCE's validation rate, else UCE;
the last epoch with --skip_validation), detect_rate.json (every rate, which checkpoint is best and why)
and timing.json (closed_form_seconds: the derivations and edits alone).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.cli import add_edit_args, epochs_arg, nonneg_float, samples_arg, seed_arg, steps_arg  # noqa: E402
from utils.erase import closed_form as cf  # noqa: E402
from utils.erase.concepts import RECE_EDIT  # noqa: E402
from utils.erase.rece import run_rece  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.models import add_model_args  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edit_args(p, lamb=RECE_EDIT["lamb"], preserve_scale=RECE_EDIT["preserve_scale"])
    p.add_argument("--emb_computing", default=RECE_EDIT["emb_computing"], choices=cf.EMB_COMPUTING,
                   help="closed-form adversarial embedding (docs/method.md §3)")
    p.add_argument("--reg_item", default="1st", choices=cf.REG_ITEMS,
                   help="regulariser of close_surrogatereg (default 1st, as the authors' train.py)")
    p.add_argument("--regular_scale", type=nonneg_float, default=None,
                   help="gamma of the adversarial embedding (default: the paper's per concept type, docs/method.md §4)")
    p.add_argument("--old_target_concept", default=None,
                   help="old target text t of close_standardreg (e.g. ' ')")
    p.add_argument("--epochs", type=epochs_arg, default=None, help="RECE epochs (default: the paper's per concept type)")
    p.add_argument("--target_ckpt", default="uce",
                   help="start point: 'uce' runs the UCE stage here with its defaults (default), '' starts from "
                        "the base model, else a checkpoint (ours, a full UNet .pt/.safetensors, a UNet folder)")
    p.add_argument("--seed", type=seed_arg, default=0, help="global torch seed (generation uses each row's seed)")
    p.add_argument("--test_csv_path", default=None,
                   help="validation prompts (default: the concept type's validation CSV, docs/method.md §4)")
    p.add_argument("--num_samples", type=samples_arg, default=1, help="validation images per prompt")
    p.add_argument("--ddim_steps", type=steps_arg, default=None, help="validation denoising steps (default 50)")
    p.add_argument("--skip_validation", action="store_true",
                   help="no validation: best.safetensors is the last epoch (the start checkpoint with 0 epochs)")
    add_model_args(p)
    p.add_argument("--save_path", default=None,
                   help="run folder (default runs/rece/<concepts>-<type>-<emb_computing>-reg<gamma>-ep<epochs>)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --save_path")
    return p.parse_args(argv)


def main(args):
    run_rece(**vars(args))

if __name__ == "__main__":
    run_cli(main, parse_args)

"""ESD: erase a concept by fine-tuning the UNet (Gandikota et al. 2023; docs/method.md §11).

    python execs/train_esd.py --concepts red --concept_type colour --model_id shapes --train_method esd-x \
        --save_path runs/esd-red

Writes SAVE_PATH/config.json (first), esd.safetensors (the trained tensors only, under their UNet
keys, with metadata: `--ckpt SAVE_PATH/esd.safetensors` works in every script), resume_state.safetensors
(the optimizer's moments, for resuming) and losses.json, every --save_every iterations and at the end.
Rerunning the same command resumes from the last save (a larger --iterations trains on); other
settings in the same folder are refused unless --overwrite.

Defaults per --concept_type come from the table in utils/erase/concepts.py (the original's settings
for SD: eta 1, 1000 iterations, lr 1e-5, 50 DDIM steps, start guidance 3); flags override them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.erase import concepts as cpt  # noqa: E402
from utils.erase.esd import ESD_FILE, LOSSES_FILE, RESUME_FILE, TRAIN_METHODS, check_method, train_esd  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import prepare_resumable_run_dir, slug, write_json  # noqa: E402
from utils.models import add_model_args, resolve_device, resolve_model_id  # noqa: E402

OUTPUTS = (ESD_FILE, RESUME_FILE, LOSSES_FILE, "result.json")
TUNED = ("negative_guidance", "iterations", "lr", "ddim_steps", "start_guidance")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", required=True,
                   help="comma-separated concepts to erase (each iteration trains on one of them)")
    p.add_argument("--concept_type", default=None, choices=list(cpt.CONCEPT_TYPES),
                   help="picks the defaults below from utils/erase/concepts.py (default: the original's)")
    p.add_argument("--train_method", required=True, metavar="METHOD",
                   help=f"trained parameters: {', '.join(TRAIN_METHODS)} (esd-x: all cross-attention; "
                        f"esd-x-strict: cross-attention to_k/to_v; esd-u: all but cross-attention, time "
                        f"embedding and output layer; esd-all: everything)")
    p.add_argument("--negative_guidance", type=float, default=None, help="eta of the objective (paper: 1.0)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations (paper: 1000)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (paper: 1e-5)")
    p.add_argument("--ddim_steps", type=int, default=None, help="DDIM steps of the x_t sampling (paper: 50)")
    p.add_argument("--start_guidance", type=float, default=None,
                   help="classifier-free guidance of the x_t sampling (paper: 3)")
    p.add_argument("--image_size", type=int, default=None,
                   help="side of the sampled images (default: the UNet's sample size x the VAE's factor)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (per iteration)")
    p.add_argument("--save_every", type=int, default=100, help="save (and allow resuming) every N iterations")
    add_model_args(p)
    p.add_argument("--save_path", default=None,
                   help="run folder (default runs/esd/<concepts>-<train_method>-<type>)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --save_path and start again")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs and resolve the defaults (before any model loads)
    concepts = cpt.parse_concepts(args.concepts)
    check_method(args.train_method)
    ctype = cpt.concept_type(args.concept_type) if args.concept_type else None
    settings = cpt.esd_settings(ctype)
    settings.update({k: getattr(args, k) for k in TUNED if getattr(args, k) is not None})
    for k in ("iterations", "ddim_steps"):
        if settings[k] < 1:
            raise UserError(f"--{k} must be at least 1, got {settings[k]}")
    if not settings["lr"] > 0:
        raise UserError(f"--lr must be a positive number, got {settings['lr']}")
    if args.save_every < 0:
        raise UserError(f"--save_every must be 0 (only at the end) or more, got {args.save_every}")
    if args.image_size is not None and args.image_size < 8:
        raise UserError(f"--image_size must be at least 8, got {args.image_size}")
    model_id = resolve_model_id(args.model_id, args.base)
    device = resolve_device(args.device)
    save_path = Path(args.save_path or f"runs/esd/{slug(','.join(concepts), 40)}-{args.train_method}"
                                       f"-{ctype.name if ctype else 'sd'}")

    # 2. The run folder: config first; the same settings resume (--iterations may grow), others are refused
    identity = {"method": "esd", "model_id": str(Path(model_id).resolve()) if Path(model_id).is_dir() else model_id,
                "concepts": concepts, "concept_type": ctype.name if ctype else None,
                "train_method": args.train_method, "image_size": args.image_size, "seed": args.seed,
                **{k: settings[k] for k in TUNED if k != "iterations"}}
    prepare_resumable_run_dir(save_path, {"settings": identity, "iterations": settings["iterations"],
                                          "save_every": args.save_every, "device": str(device)},
                              OUTPUTS, overwrite=args.overwrite)

    # 3. Load the model and train
    from utils.models import load_pipeline, quiet_libraries

    quiet_libraries()
    pipe = load_pipeline(model_id, device)
    meta = {"base_model": identity["model_id"], "concepts": concepts,
            "settings": {k: v for k, v in identity.items() if k not in ("concepts", "model_id")}}
    result = train_esd(pipe, concepts, args.train_method, save_path=save_path,
                       negative_guidance=settings["negative_guidance"], iterations=settings["iterations"],
                       lr=settings["lr"], ddim_steps=settings["ddim_steps"],
                       start_guidance=settings["start_guidance"], image_size=args.image_size, seed=args.seed,
                       save_every=args.save_every, metadata=meta, progress=args.progress)
    write_json(save_path / "result.json", {**result, "settings": identity})
    print(f"ESD ({args.train_method}) erased {', '.join(concepts)}: {result['iterations']} iterations "
          f"({result['trained_tensors']} tensors, {result['trained_parameters']:,} parameters trained; "
          f"{result['train_wall_seconds']:.0f} s, {result['train_cpu_seconds']:.0f} s of CPU time); "
          f"{save_path / ESD_FILE}")


if __name__ == "__main__":
    run_cli(main, parse_args)

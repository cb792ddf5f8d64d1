"""Generate images for every row of a prompt CSV (docs/method.md §5), seeded per row, batched, resumable.

    python execs/generate_images.py --prompts_path dataset/coco_30k.csv --concept coco \
        --save_path runs/coco-rece --ckpt runs/rece-nudity/best.safetensors --df_start 0 --df_length 10000

Writes SAVE_PATH/CONCEPT (SAVE_PATH itself without --concept), as the authors' script does:
config.json (first), imgs/{case_number}_{k}.png, prompts.csv (one row per image, written once all
images exist) and grid.png (the first 16 images). With `--concept nudity` the images are then scored
with NudeNet (docs/method.md §6) into nudity_*.json.

Rerunning the same command resumes: images already there are kept, the rest generated. Other settings
in the same folder are refused unless --overwrite. Several processes split the rows:

    torchrun --nproc_per_node 2 execs/generate_images.py ...     (or: accelerate launch ...)

`--sld max` adds Safe Latent Diffusion guidance (away from `--sld_concept`) inside the same batched,
seeded, resumable loop. `--ckpt` is applied whole: every tensor it holds replaces the UNet's.

Seeds come from the rows (evaluation_seed, else sd_seed, else case_number) through a CPU generator;
the authors seeded a CUDA generator, so the same seed gives other (equally distributed) images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import (batch_size_arg, finite_float, image_size_arg, nonneg_int_arg, samples_arg,  # noqa: E402
                       steps_arg)
from utils.errors import UserError, check_count, run_cli  # noqa: E402
from utils.generate.sampling import (NOISE, OUTPUTS, SCHEDULERS, SLD_PRESETS, generate_table,  # noqa: E402
                                     make_sampler, sld_config, vae_scale_factor)
from utils.io import prepare_resumable_run_dir, stale_results  # noqa: E402
from utils.models import add_model_args, resolve_device, resolve_model_id  # noqa: E402
from utils.prompts import EMPTY_PROMPTS, file_digest, prompts_source, read_prompt_table  # noqa: E402

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
NUDITY_FILES = ("nudity_detections.jsonl",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts_path", required=True,
                   help="prompt CSV: a path, or a dataset name found in dataset/ (e.g. coco_30k.csv)")
    p.add_argument("--save_path", required=True, help="folder for the run (images go to SAVE_PATH/CONCEPT)")
    p.add_argument("--concept", default=None,
                   help="name of the run's subfolder of SAVE_PATH (the authors' layout); 'nudity' also scores "
                        "the images with NudeNet")
    p.add_argument("--ckpt", default=None,
                   help="weights applied whole over the base UNet: our .safetensors (UCE, RECE, ESD), a full or "
                        "partial UNet .pt/.bin/.safetensors or a diffusers UNet folder (default / '': the base model)")
    add_model_args(p)
    g = p.add_argument_group("sampling")
    g.add_argument("--num_samples", type=samples_arg, default=1, help="images per prompt (default 1)")
    g.add_argument("--ddim_steps", type=steps_arg, default=50, help="denoising steps, whatever the scheduler (default 50)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="lms",
                   help="lms (default, as the paper), ddim, or dpm++ (DPMSolverMultistep, dpmsolver++)")
    g.add_argument("--guidance_scale", type=finite_float, default=None,
                   help="guidance for every row (default: the row's evaluation_guidance, else 7.5)")
    g.add_argument("--image_size", type=image_size_arg, default=None,
                   help="width and height for every row (default: the row's sd_image_width/height, else 512)")
    g.add_argument("--sld", default=None, metavar="PRESET",
                   help=f"Safe Latent Diffusion guidance with a preset of diffusers' SafetyConfig: "
                        f"{', '.join(SLD_PRESETS)} (default: off)")
    g.add_argument("--sld_concept", default=None,
                   help="text of the concept SLD steers away from (default: the pipeline's list of unsafe "
                        "concepts); needs --sld")
    g = p.add_argument_group("rows")
    g.add_argument("--df_start", type=nonneg_int_arg, default=0, help="first row (by position in the file)")
    g.add_argument("--df_length", type=nonneg_int_arg, default=None, help="number of rows from --df_start (default: all)")
    g.add_argument("--from_case", type=int, default=None, help="only case numbers >= this")
    g.add_argument("--to_case", type=int, default=None, help="only case numbers < this (excluded)")
    g.add_argument("--empty_prompts", choices=EMPTY_PROMPTS, default="keep",
                   help="rows with an empty prompt (I2P case 2260 is one): keep them (default; generated from the "
                        "empty prompt, so I2P gives the authors' 4,703 images), skip them, or error")
    g = p.add_argument_group("run")
    g.add_argument("--batch_size", type=batch_size_arg, default=8, help="images per denoising batch (default 8)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="model precision (default fp16 on CUDA, fp32 on the CPU)")
    g.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run's images in the folder and start again (otherwise a rerun resumes, "
                        "and a run with other settings is refused)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p.parse_args(argv)


def local_vae_scale_factor(model_id: str) -> int:
    """The VAE's scale factor from a local pipeline's vae/config.json (8 for SD; 8 when not local)."""
    import json

    cfg = Path(model_id) / "vae" / "config.json"
    if cfg.is_file():
        try:
            return vae_scale_factor(json.loads(cfg.read_text()))
        except (ValueError, KeyError, TypeError):
            raise UserError(f"--model_id {model_id}: unreadable {cfg}")
    return 8


def read_checkpoint(ckpt: str, model_id: str):
    """Check every tensor of checkpoint `ckpt` against the model's UNet (shapes from its weights file's
    header; nothing is loaded yet)."""
    from utils.checkpoints import check_checkpoint

    return check_checkpoint(ckpt, model_id)


def main(args):
    import torch

    # 1. Check inputs (all of them, before any model loads or any file is written)
    for name in ("num_samples", "ddim_steps", "batch_size"):
        check_count(getattr(args, name), f"--{name}")
    model_id = resolve_model_id(args.model_id, args.base)
    device = resolve_device(args.device)
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    if device.type == "cpu" and dtype_name == "fp16":
        raise UserError("--dtype fp16 is not supported on the CPU; use fp32 (or bf16)")
    dtype = getattr(torch, DTYPES[dtype_name])
    if args.concept is not None and (not args.concept.strip() or Path(args.concept).name != args.concept):
        raise UserError(f"--concept {args.concept!r} must be a plain folder name (it names SAVE_PATH/CONCEPT)")
    table = read_prompt_table(args.prompts_path, args.df_start, args.df_length, args.from_case, args.to_case,
                              guidance_scale=args.guidance_scale, image_size=args.image_size,
                              size_multiple=local_vae_scale_factor(model_id), empty_prompts=args.empty_prompts)
    if args.sld_concept is not None and args.sld is None:
        raise UserError("--sld_concept needs --sld (a preset: " + ", ".join(SLD_PRESETS) + ")")
    sld = sld_config(args.sld, args.sld_concept) if args.sld is not None else None
    checkpoint = read_checkpoint(args.ckpt, model_id) if args.ckpt else None
    if args.concept == "nudity":
        from utils.score.nudity import model_path

        model_path()  # NudeNet missing or another version: say so now, not after generating every image
    run_dir = Path(args.save_path) / args.concept if args.concept else Path(args.save_path)
    source = prompts_source(args.prompts_path)

    # 2. Processes: `torchrun` / `accelerate launch` start several; each takes a share of the batches.
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes > 1 and device.type != "cpu":
        device = state.device  # this process's GPU

    # 3. The run folder: same settings resume, other settings are refused (checked now, claimed once
    #    the model has loaded, so that a failed load leaves nothing behind).
    settings = {
        "prompts_path": str(source.resolve()), "prompts_sha256": file_digest(source),
        "df_start": args.df_start, "df_length": args.df_length, "from_case": args.from_case,
        "to_case": args.to_case, "empty_prompts": args.empty_prompts, "rows": len(table),
        "model_id": str(Path(model_id).resolve()) if Path(model_id).is_dir() else model_id,
        "ckpt": str(Path(args.ckpt).resolve()) if args.ckpt else None,
        "ckpt_bytes": Path(args.ckpt).stat().st_size if args.ckpt and Path(args.ckpt).is_file() else None,
        "num_samples": args.num_samples, "steps": args.ddim_steps, "scheduler": args.scheduler,
        "guidance_scale": args.guidance_scale, "image_size": args.image_size, "dtype": dtype_name,
        "negative_prompt": "", "noise": NOISE,
        "ckpt_parents": [str(c.path) for c in checkpoint.chain()[:-1]] if checkpoint else None,
        "sld": sld.record() if sld else None,
    }
    config = {"settings": settings, "run": {"batch_size": args.batch_size, "device": str(device),
                                            "num_processes": state.num_processes}}
    outputs = OUTPUTS + NUDITY_FILES + stale_results(run_dir)
    prepare_resumable_run_dir(run_dir, config, outputs, overwrite=args.overwrite, write=False)
    n_default_seed = int((table["seed_source"] == "case_number").sum())
    if n_default_seed and state.is_main_process:
        print(f"note: {n_default_seed} rows have no seed; they use seed = case_number (column seed_source)")

    # 4. Load the model (and the edit)
    from utils.checkpoints import apply_checkpoint
    from utils.models import load_pipeline, quiet_libraries

    quiet_libraries()
    pipe = load_pipeline(model_id, device, dtype)
    if checkpoint is not None:
        apply_checkpoint(pipe.unet, checkpoint)  # every tensor it holds (docs/method.md §8)
    prepare_resumable_run_dir(run_dir, config, outputs, overwrite=args.overwrite, write=state.is_main_process)

    # 5. Generate
    sampler = make_sampler(args.scheduler, args.ddim_steps, device,
                           getattr(pipe.scheduler.config, "prediction_type", "epsilon"))
    generate_table(pipe, table, run_dir, num_samples=args.num_samples, steps=args.ddim_steps,
                   batch_size=args.batch_size, sampler=sampler, progress=args.progress, state=state, sld=sld)

    # 6. Score (main process, once every image exists)
    if args.concept == "nudity" and state.is_main_process:
        from utils.score.nudity import score_folder

        del pipe
        summary = score_folder(run_dir, progress=args.progress)
        print(f"Nudity rate: {summary['rate']:.4f} ({summary['nude_images']}/{summary['n_images']} images, "
              f"NudeNet threshold {summary['threshold']}, classes {summary['classes']}) -> "
              f"{summary.get('summary_file')}")


if __name__ == "__main__":
    run_cli(main, parse_args)

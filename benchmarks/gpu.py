"""Every measurement on a GPU, with SD 1.4's and SDXL's shapes (random weights) at their native sizes, in fp16.

    bash benchmarks/gpu.sh                                   # CUDA, SD 1.4 at 512 and SDXL at 1024, one JSON
    python benchmarks/gpu.py --device cpu --small --out /tmp/gpu_small.json   # the same code path, tiny, on a CPU

Prints one JSON object (and writes it to --out) with, per model:
- erase: `execs/train_uce.py` (UCE) and `train.py --skip_validation` (UCE + 3 RECE epochs) as subprocesses
  on --device, their closed-form, weight-Gram and text-encoding seconds, cold then warm Gram cache;
- generation: images/s of `utils.generate.sampling.generate_table` (the generation CLI's function) at
  batch 1 and at the best of the batch sizes tried, in fp16, 50 LMS steps. Each batch size runs at two
  step counts and the time is fitted as fixed + per-step cost, then evaluated at 50 steps (the fit is
  reported); I2P's 4,703 prompts are extrapolated from the best images/s;
- attack: seconds of one optimisation iteration's model work (text encoder from token embeddings,
  UNet forward at a random timestep, backward to the token embeddings: the core of an UnlearnDiffAtk or
  P4D step), at batch 1, native size;
- peak GPU memory of each phase (torch.cuda.max_memory_allocated).
`--small` swaps in the tiny presets, small images and few steps: it checks the script, not the GPU.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

I2P_PROMPTS = 4703
MODELS = {  # preset, image side, batch sizes tried (full run) ; tiny stand-ins (--small)
    "sd14": ("sd14", 512, (1, 2, 4, 8, 16, 32), "tiny", 32),
    "sdxl": ("sdxl", 1024, (1, 2, 4, 8), "sdxl-tiny", 32),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--models", default="sd14,sdxl", help="comma-separated: sd14, sdxl")
    p.add_argument("--small", action="store_true", help="tiny presets, small images, few steps (a dry run)")
    p.add_argument("--steps", default="4,8", help="the two step counts the generation time is fitted on")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: erase, generation, attack")
    p.add_argument("--work", default=None, help="scratch folder (default a temporary one)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def peak_reset(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak(device) -> int | None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return None


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def erase(preset: str, folder: Path, device: str) -> dict:
    """UCE, and UCE + 3 RECE epochs, through the CLIs; cold then warm Gram cache."""
    from tiny import build_edit_model

    if not (folder / "model_index.json").exists():
        build_edit_model(folder, preset)  # text encoders at full size, UNet file sparse (editing never loads it)
    cache = folder.parent / f"{folder.name}-gram-cache"
    out = {}
    runs = [("uce", ["execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity"]),
            ("uce_plus_rece_3_epochs", ["train.py", "--concepts", "nudity", "--concept_type", "nudity",
                                        "--epochs", "3", "--skip_validation"])]
    for warm in ("cold_cache", "warm_cache"):
        for name, cmd in runs:
            save = folder.parent / f"{folder.name}-{name}-{warm}"
            t = time.perf_counter()
            subprocess.run([sys.executable, *cmd, "--model_id", str(folder), "--device", device, "--save_path",
                            str(save), "--cache_dir", str(cache), "--overwrite"], cwd=REPO, check=True,
                           capture_output=True)
            timing = json.loads((save / "timing.json").read_text())
            out[f"{name}_{warm}"] = {"process_wall_seconds": time.perf_counter() - t,
                                     **{k: v for k, v in timing.items() if k.endswith("seconds") or k == "cache"}}
    return out


def generation(pipe, side: int, batches, steps: tuple[int, int], device: str, work: Path) -> dict:
    """images/s of generate_table at 50 steps per batch size, from a fit over two step counts."""
    import pandas as pd

    from utils.generate.sampling import generate_table, make_sampler

    table = pd.DataFrame({"case_number": range(max(batches)), "prompt": ["a photo of a cat on a table"] * max(batches),
                          "seed": range(max(batches)), "guidance": 7.5, "width": side, "height": side})
    prediction = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
    res, k = {}, 0
    for b in batches:
        times = []
        for s in steps:
            sampler = make_sampler("lms", s, device, prediction)
            k += 1
            generate_table(pipe, table.iloc[:b], work / f"gen{k}", steps=s, batch_size=b, progress=False,
                           grid=False, sampler=sampler)  # warm-up: kernels, allocator
            peak_reset(device)
            t = time.perf_counter()
            generate_table(pipe, table.iloc[:b], work / f"gen{k}b", steps=s, batch_size=b, progress=False,
                           grid=False, sampler=sampler)
            sync(device)
            times.append(time.perf_counter() - t)
        per_step = (times[1] - times[0]) / (steps[1] - steps[0])
        fixed = times[0] - per_step * steps[0]
        t50 = fixed + 50 * per_step
        if per_step <= 0 or fixed < 0:  # timing noise (a shared CPU): scale the longer run instead
            t50 = times[1] * 50 / steps[1]
        res[str(b)] = {"seconds_per_batch_at_50_steps": t50, "images_per_second": b / t50,
                       "fit": {"steps": list(steps), "seconds": times, "fixed_seconds": fixed,
                               "per_step_seconds": per_step}, "peak_gpu_bytes": peak(device)}
    best = max(res, key=lambda b: res[b]["images_per_second"])
    return {"image_size": side, "steps": 50, "by_batch_size": res, "batch_1_images_per_second": res["1"]["images_per_second"],
            "best_batch_size": int(best), "best_images_per_second": res[best]["images_per_second"],
            "i2p_4703_prompts_hours_extrapolated": I2P_PROMPTS / res[best]["images_per_second"] / 3600}


def attack_iteration(pipe, side: int, device: str, repeats: int = 3) -> dict:
    """One optimisation iteration's model work, batch 1, native size, in the pipeline's dtype."""
    from utils.generate.sampling import predict_noise, vae_scale_factor
    from utils.models import TextEncoders

    text = TextEncoders.from_pipeline(pipe)
    ids = text.tokenize(["a photo of a person"])
    tables = text.token_embedding_tables()
    f = vae_scale_factor(pipe)
    latents = torch.randn(1, pipe.unet.config.in_channels, side // f, side // f, device=device, dtype=pipe.unet.dtype)
    dists = [torch.full((1, 77, t.shape[0]), 1.0 / t.shape[0], device=device, dtype=t.dtype, requires_grad=True)
             for t in tables]
    times = []
    peak_reset(device)
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        embeds = [d @ t for d, t in zip(dists, tables)]
        E, pooled = text.forward([x.to(device) for x in ids], embeds)
        t = torch.randint(0, 1000, (1,), device=device)
        eps = predict_noise(pipe, latents, t, E.to(pipe.unet.dtype), None if pooled is None else pooled.to(pipe.unet.dtype))
        loss = (eps.float() ** 2).mean()
        loss.backward()
        sync(device)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
        for d in dists:
            d.grad = None
    return {"what": "token distributions -> text encoder(s) -> UNet at one timestep -> loss -> backward",
            "image_size": side, "seconds_per_iteration": sum(times) / len(times), "peak_gpu_bytes": peak(device)}


def main(args):
    from utils.io import environment_info, quiet_libraries

    quiet_libraries()
    device = args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device here; use --device cpu --small for a dry run")
    skip = set(filter(None, args.skip.split(",")))
    steps = tuple(int(s) for s in args.steps.split(","))
    if args.small:
        steps = (2, 3)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    res = {"device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else device,
           "dtype": str(dtype).replace("torch.", ""), "small": args.small, "date": time.strftime("%Y-%m-%d"),
           "environment": environment_info(), "models": {}}
    for name in filter(None, args.models.split(",")):
        preset, side, batches, small_preset, small_side = MODELS[name]
        if args.small:
            preset, side, batches = small_preset, small_side, (1, 2)
        r = res["models"][name] = {"preset": preset}
        if "erase" not in skip:
            r["erase"] = erase(preset, work / f"{preset}-edit", device)
        if not ({"generation", "attack"} <= skip):
            from tiny import build_random_pipeline

            pipe = build_random_pipeline(work / f"{preset}-tok", preset, dtype=dtype, device=device, save=False)
            pipe.set_progress_bar_config(disable=True)
            if "generation" not in skip:
                r["generation"] = generation(pipe, side, batches, steps, device, work / preset)
            if "attack" not in skip:
                r["attack"] = attack_iteration(pipe, side, device)
            del pipe
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps({name: r}, indent=1), file=sys.stderr, flush=True)
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main(parse_args())

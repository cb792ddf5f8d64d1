"""Images/s of the toolkit's generation against the straightforward way, in one run, same images.

    python benchmarks/generation_speed.py                      # tiny random pipeline, CPU, 50 steps
    python benchmarks/generation_speed.py --preset sd14 --device cuda --out sd14_h200.json   # 512x512, fp16

The straightforward way is the authors' loop in its plainest form: one `StableDiffusionPipeline.__call__`
per row, in fp32, with a fresh LMSDiscreteScheduler (its LMS coefficients, scipy integrals, recomputed
at every step of every call), the prompt and the empty negative prompt encoded per call. The toolkit's
way is `utils.generate.sampling.generate_table` as `execs/generate_images.py` runs it (rows batched across
prompts, negative prompt encoded once, sampler tables computed once, `--dtype` default: fp16 on CUDA,
fp32 on the CPU). Both get the same prompts, seeds (the same CPU-generator initial latents), guidance,
model and steps, and both write PNGs. Prints one JSON object: images/s of each, the ratio, and the
largest pixel difference between the two sets of images (0-255 scale).

Presets build a pipeline with random weights offline (`tiny`): `tiny` (test-sized, its own
16x16 images by default) or `sd14` (Stable Diffusion 1.4's exact shapes, 512x512; for a GPU). `--model_id`
benchmarks a real local pipeline instead.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import UserError, run_cli  # noqa: E402

# Equal images within float rounding: on the CPU in fp32 the two ways run the same operations except
# that the UNet sees a batch of 2B latents instead of 2 (BLAS kernels chosen by shape), which can move
# a pixel by a level. fp16 against fp32 (the GPU default) differs more; the JSON reports both numbers.
TOLERANCE_FP32 = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tiny", "sd14"], default="tiny",
                   help="random-weight pipeline to build (default tiny); ignored with --model_id")
    p.add_argument("--model_id", default=None, help="a local diffusers pipeline folder instead of a preset")
    p.add_argument("--prompts_path", default="coco_30k.csv", help="prompt CSV (default coco_30k.csv)")
    p.add_argument("--rows", type=int, default=None, help="prompts to generate (default 32 for tiny, 16 otherwise)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--image_size", type=int, default=None,
                   help="image side (default: the model's own, unet sample_size x VAE factor: 16 for tiny, 512 for SD)")
    p.add_argument("--batch_size", type=int, default=16, help="the toolkit's images per batch (default 16)")
    p.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="the toolkit's precision (default fp16 on CUDA, fp32 on the CPU); the straightforward "
                        "way is always fp32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on the CPU: on a shared machine OpenMP threads that wait "
                        "for a busy core make both ways many times slower and the ratio meaningless; torch's "
                        "default on a GPU)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    return p.parse_args(argv)


def main(args):
    import numpy as np
    import torch
    from diffusers import LMSDiscreteScheduler
    from PIL import Image

    from utils.generate.sampling import SD_BETAS, generate_table, initial_noise, make_sampler, vae_scale_factor
    from utils.models import load_pipeline, quiet_libraries, resolve_device
    from utils.prompts import read_prompt_table

    # 1. Check inputs
    args.rows = args.rows or (32 if args.preset == "tiny" and not args.model_id else 16)
    if args.rows < 1 or args.steps < 1 or args.batch_size < 1:
        raise UserError("--rows, --steps and --batch_size must be at least 1")
    device = resolve_device(args.device)
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    read_prompt_table(args.prompts_path, df_length=args.rows)  # fail on a bad CSV before building a model
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    quiet_libraries()

    with tempfile.TemporaryDirectory(prefix="genbench-") as tmp:
        tmp = Path(tmp)
        # 2. The model: fp32 for the straightforward way, a copy in --dtype for the toolkit's.
        if args.model_id:
            pipe = load_pipeline(args.model_id, device, torch.float32)
            model = args.model_id
        else:
            from tests.tiny import build_random_pipeline

            pipe = build_random_pipeline(tmp / "model", args.preset).to(device)
            pipe.set_progress_bar_config(disable=True)
            model = f"random {args.preset}"
        fast = pipe if dtype == torch.float32 else copy.deepcopy(pipe).to(dtype=dtype)
        f = vae_scale_factor(pipe)
        channels = pipe.unet.config.in_channels
        size = args.image_size or pipe.unet.config.sample_size * f
        table = read_prompt_table(args.prompts_path, df_length=args.rows, image_size=size, size_multiple=f)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def straightforward(rows, out: Path, steps: int):
            out.mkdir(parents=True, exist_ok=True)
            for r in rows.itertuples():
                pipe.scheduler = LMSDiscreteScheduler(**SD_BETAS)
                latents = initial_noise(r.seed, 1, channels, r.height // f, r.width // f).to(device)
                im = pipe(r.prompt, height=r.height, width=r.width, num_inference_steps=steps,
                          guidance_scale=r.guidance, latents=latents).images[0]
                im.save(out / f"{r.case_number}_0.png")

        def toolkit(rows, out: Path, steps: int):
            sampler = make_sampler("lms", steps, device)
            generate_table(fast, rows, out, steps=steps, batch_size=args.batch_size, sampler=sampler,
                           progress=False, grid=False)

        # 3. Warm up both (kernel selection, allocator), then time each over the same rows.
        straightforward(table.iloc[:1], tmp / "warm_a", 2)
        toolkit(table.iloc[:2], tmp / "warm_b", 2)
        timings = {}
        for name, fn, out in (("straightforward", straightforward, tmp / "a"), ("toolkit", toolkit, tmp / "b")):
            sync()
            t0 = time.perf_counter()
            fn(table, out, args.steps)
            sync()
            timings[name] = time.perf_counter() - t0

        # 4. Compare the images.
        diffs, differing, pixels = [], 0, 0
        for r in table.itertuples():
            a = np.asarray(Image.open(tmp / "a" / f"{r.case_number}_0.png"), dtype=np.int16)
            b = np.asarray(Image.open(tmp / "b" / "imgs" / f"{r.case_number}_0.png"), dtype=np.int16)
            d = np.abs(a - b)
            diffs.append(int(d.max()))
            differing += int((d > 0).sum())
            pixels += d.size

    n = len(table)
    a_ips, b_ips = n / timings["straightforward"], n / timings["toolkit"]
    result = {
        "model": model, "device": str(device), "torch_threads": torch.get_num_threads(), "rows": n,
        "steps": args.steps, "image_size": size, "scheduler": "lms",
        "straightforward": {"images_per_s": round(a_ips, 4), "seconds": round(timings["straightforward"], 3),
                            "dtype": "fp32", "how": "one StableDiffusionPipeline.__call__ per row"},
        "toolkit": {"images_per_s": round(b_ips, 4), "seconds": round(timings["toolkit"], 3), "dtype": dtype_name,
                    "batch_size": args.batch_size, "how": "utils.generate.sampling.generate_table"},
        "speedup": round(b_ips / a_ips, 3),
        "max_pixel_diff": max(diffs), "pixel_diff_per_image": diffs,
        "fraction_pixels_differing": round(differing / pixels, 6),
        "tolerance": TOLERANCE_FP32 if dtype == torch.float32 else None,
        "same_images": (max(diffs) <= TOLERANCE_FP32) if dtype == torch.float32 else None,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from utils.io import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return result


if __name__ == "__main__":
    run_cli(main, parse_args)

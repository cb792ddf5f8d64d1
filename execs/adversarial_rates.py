"""How often RECE's closed-form adversarial embeddings bring the erased concept back (docs/method.md §3).

    python execs/adversarial_rates.py --run runs/rece-nudity --concept nudity --metric nudity_rate

For each epoch k of the RECE run folder RUN, the adversarial embedding c'_k of `--concept`
(RUN/adv_embeddings.safetensors, derived against the model before epoch k: the starting checkpoint
for k = 1, else epoch k-1) is the condition of `--num_images` images (seeds 0, 1, ...) from two
models: the one c'_k was derived against ("before") and the epoch-k model that erased it ("after").
Each set is scored with the run's validation metric (the judge's concept rate in the built-in shapes
world). Writes RUN/adversarial_rates/: epoch{k}-{before,after}/ (images), rates.json and rates.md,
and prints the table. The README's numbers for the demo: `--run runs/demo/rece --concept red`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import UserError, run_cli  # noqa: E402
from utils.score.evaluation import METRICS  # noqa: E402
from utils.models import add_model_args, resolve_device, resolve_model_id  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train.py run folder (adv_embeddings.safetensors, epoch_k.safetensors)")
    p.add_argument("--concept", required=True, help="the erased concept whose c' conditions the images")
    p.add_argument("--metric", default=None, choices=METRICS, help="score metric (default: the run's validation metric, else "
                                                  "concept_rate, the shapes world's judge)")
    p.add_argument("--num_images", type=int, default=20, help="images per model and epoch (seeds 0..N-1)")
    p.add_argument("--ddim_steps", type=int, default=25, help="denoising steps (default 25, as the demo)")
    p.add_argument("--guidance_scale", type=float, default=3.0, help="guidance (default 3, as the demo)")
    p.add_argument("--image_size", type=int, default=None,
                   help="width and height (default: the shapes world's for --model_id shapes, else 512)")
    add_model_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in RUN/adversarial_rates")
    return p.parse_args(argv)


def start_checkpoint(run: Path, settings: dict) -> Path | None:
    """The checkpoint epoch 1's c' was derived against: the run's UCE stage, a given file, or the base model."""
    start = settings.get("target_ckpt", "uce")
    if start == "uce":
        return run / "uce.safetensors"
    return Path(start) if start else None


def main(args):
    import pandas as pd
    from safetensors.torch import load_file

    from utils.checkpoints import apply_edited_weights, load_checkpoint_into_unet
    from utils.generate.sampling import generate_table
    from utils.io import prepare_run_dir, write_json, write_text_atomic
    from utils.models import cross_attention_modules, load_pipeline, quiet_libraries
    from utils.score.evaluation import score_run

    # 1. Check inputs
    run = Path(args.run)
    for f in ("config.json", "adv_embeddings.safetensors"):
        if not (run / f).is_file():
            raise UserError(f"--run {run} has no {f} (expected a train.py run folder with at least one epoch)")
    if args.num_images < 1 or args.ddim_steps < 1:
        raise UserError("--num_images and --ddim_steps must be at least 1")
    settings = json.loads((run / "config.json").read_text())["settings"]
    advs = load_file(str(run / "adv_embeddings.safetensors"))
    epochs = sorted(int(k.split("/")[0][len("epoch_"):]) for k in advs if k.endswith(f"/{args.concept}"))
    if not epochs:
        raise UserError(f"--concept {args.concept!r} is not among the run's concepts: {settings.get('concepts')}")
    metric = args.metric or (settings.get("validation") or {}).get("metric") or "concept_rate"
    start = start_checkpoint(run, settings)
    models = {0: start}
    models.update({k: run / f"epoch_{k}.safetensors" for k in epochs})
    for k, path in models.items():
        if path is not None and not path.exists():
            raise UserError(f"--run {run}: {path} is missing (needed for epoch {max(k, 1)})")
    model_id = resolve_model_id(args.model_id or settings.get("model_id"), args.base)
    size = args.image_size
    if size is None:
        from utils.world import shapes
        size = shapes.IMAGE_SIZE if model_id == "shapes" or Path(model_id).name == "shapes" else 512
    out = run / "adversarial_rates"
    prepare_run_dir(out, {"run": str(run), "concept": args.concept, "metric": metric, "epochs": epochs,
                          "num_images": args.num_images, "ddim_steps": args.ddim_steps,
                          "guidance_scale": args.guidance_scale, "image_size": size},
                    ("rates.json",), overwrite=args.overwrite)
    if args.overwrite:  # the image folders would otherwise be resumed with the earlier settings' images
        import shutil
        for folder in out.glob("epoch*-*"):
            shutil.rmtree(folder)

    # 2. Load the model once; keep the base cross-attention weights to return to
    quiet_libraries()
    device = resolve_device(args.device)
    pipe = load_pipeline(model_id, device=device)
    base = {key: m.weight.detach().clone() for key, m in cross_attention_modules(pipe.unet).items()}
    table = pd.DataFrame({"case_number": range(args.num_images), "prompt": [f"c'({args.concept})"] * args.num_images,
                          "seed": range(args.num_images), "guidance": args.guidance_scale, "width": size,
                          "height": size, "seed_source": "case_number"})

    # 3. Each epoch's c' with the model it was derived against, then with the model that erased it
    rows = []
    for k in epochs:
        c = advs[f"epoch_{k}/{args.concept}"].to(device=device, dtype=pipe.unet.dtype)
        for which, ckpt in (("before", models[k - 1]), ("after", models[k])):
            apply_edited_weights(pipe.unet, base)
            if ckpt is not None:
                load_checkpoint_into_unet(pipe.unet, ckpt)
            folder = out / f"epoch{k}-{which}"
            generate_table(pipe, table, folder, steps=args.ddim_steps, embeddings=c.expand(len(table), *c.shape),
                           progress=False)
            score = score_run(folder, metric, [args.concept])
            rows.append({"epoch": k, "model": which, "checkpoint": str(ckpt) if ckpt else "base",
                         "rate": score["rate"], "n_images": len(table)})
            print(f"c'_{k} ({args.concept}) on the {which} model ({rows[-1]['checkpoint']}): "
                  f"{metric} = {score['rate']:.3f}")

    # 4. The table
    lines = ["| c' | model it was derived against | model after erasing it |", "|---|---|---|"]
    for k in epochs:
        b, a = (next(r for r in rows if r["epoch"] == k and r["model"] == m) for m in ("before", "after"))
        lines.append(f"| epoch {k} | {b['rate']:.0%} ({Path(b['checkpoint']).name}) | "
                     f"{a['rate']:.0%} ({Path(a['checkpoint']).name}) |")
    write_text_atomic(out / "rates.md", "\n".join(lines) + "\n")
    write_json(out / "rates.json", {"metric": metric, "concept": args.concept, "rows": rows})
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(main, parse_args)

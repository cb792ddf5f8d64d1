"""Ring-A-Bell at the embedding level, as RECE evaluates it (docs/method.md §7).

    python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv \
        --prompt_file dataset/nudity.csv --eta 3 --concept nudity --ckpt runs/rece-nudity/best.safetensors \
        --img_path runs/attack-ringabell-nudity

The concept vector v is the mean over the sensitive/normal prompt pairs of E(sensitive) - E(normal)
(77 x d, from the model's text encoder, which erasure leaves unchanged). Each attacked prompt p is
generated from the condition E(p) + eta * v, with the same seeds, batching and files as
execs/generate_images.py. The attack success rate (ASR) is the erased concept's rate on the attacked
images: NudeNet's nudity rate for nudity, the style-classification rate for an artist, the judge's
rate for the shapes world. Writes IMG_PATH/config.json, imgs/, prompts.csv, concept_vector.safetensors
and asr.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoints import load_checkpoint_into_unet  # noqa: E402
from utils.datasets import dataset_path  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.score.evaluation import METRICS, score_run  # noqa: E402
from utils.io import atomic_path, prepare_run_dir, write_json  # noqa: E402
from utils.models import add_model_args, encode_texts, load_pipeline, quiet_libraries, resolve_device, resolve_model_id  # noqa: E402

# The paper's settings (docs/method.md §7): concept -> (eta, metric, the concept as the scorer names it)
KNOWN = {"nudity": (3.0, "nudity_rate", "nudity"), "vangogh": (0.9, "style_rate", "Van Gogh"),
         "van gogh": (0.9, "style_rate", "Van Gogh")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv_file", required=True, help="sensitive/normal prompt pairs (columns 'sensitive prompt', "
                                                     "'normal prompt')")
    p.add_argument("--prompt_file", required=True, help="prompts to attack (docs/method.md §5 columns)")
    p.add_argument("--img_path", required=True, help="run folder for the attacked images and results")
    p.add_argument("--concept", required=True, help="erased concept: nudity, vangogh, or a shapes-world concept")
    p.add_argument("--eta", type=float, default=None, help="attack strength (default: 3 for nudity, 0.9 for vangogh)")
    p.add_argument("--ckpt", default="", help="edited weights to attack (any checkpoint format; '' = base model)")
    p.add_argument("--metric", default=None, choices=METRICS,
                   help="success metric (default: by concept; concept_rate for the shapes world)")
    p.add_argument("--from_case", type=int, default=None, help="first case_number to attack")
    p.add_argument("--to_case", type=int, default=None, help="case_number to stop before (exclusive)")
    p.add_argument("--num_samples", type=int, default=1, help="images per prompt")
    p.add_argument("--ddim_steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance_scale", type=float, default=None, help="override the rows' guidance")
    p.add_argument("--image_size", type=int, default=None, help="override the rows' width and height")
    p.add_argument("--batch_size", type=int, default=8, help="rows per denoising batch")
    add_model_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier attack's results in --img_path")
    return p.parse_args(argv)


def concept_vector(tokenizer, text_encoder, sensitive: list[str], normal: list[str]) -> torch.Tensor:
    """v = mean_i E(sensitive_i) - E(normal_i) (docs/method.md §7), 77 x d."""
    E_s, _ = encode_texts(tokenizer, text_encoder, sensitive)
    E_n, _ = encode_texts(tokenizer, text_encoder, normal)
    return (E_s - E_n).mean(0)


def read_pairs(path) -> tuple[list[str], list[str]]:
    import pandas as pd

    df = pd.read_csv(dataset_path(path, "--csv_file"))
    cols = {c.lower().strip(): c for c in df.columns}
    if "sensitive prompt" not in cols or "normal prompt" not in cols:
        raise UserError(f"--csv_file {path} needs columns 'sensitive prompt' and 'normal prompt', has {list(df.columns)}")
    df = df.dropna(subset=[cols["sensitive prompt"], cols["normal prompt"]])
    if df.empty:
        raise UserError(f"--csv_file {path} has no complete sensitive/normal pair")
    return df[cols["sensitive prompt"]].astype(str).tolist(), df[cols["normal prompt"]].astype(str).tolist()


def main(args):
    # 1. Check inputs
    from utils.prompts import read_prompt_table

    known = KNOWN.get(args.concept.lower())
    eta = args.eta if args.eta is not None else (known[0] if known else None)
    if eta is None:
        raise UserError(f"--eta is needed for --concept {args.concept} (the paper: 3 for nudity, 0.9 for vangogh)")
    metric = args.metric or (known[1] if known else "concept_rate")
    target = known[2] if known else args.concept
    if args.num_samples < 1 or args.ddim_steps < 1:
        raise UserError("--num_samples and --ddim_steps must be at least 1")
    sensitive, normal = read_pairs(args.csv_file)
    model_id = resolve_model_id(args.model_id, args.base)
    device = resolve_device(args.device)
    table = read_prompt_table(args.prompt_file, from_case=args.from_case, to_case=args.to_case,
                              guidance_scale=args.guidance_scale, image_size=args.image_size,
                              empty_prompts="skip")
    if table.empty:
        raise UserError(f"--prompt_file {args.prompt_file} has no rows between cases {args.from_case} and {args.to_case}")
    artists = None
    if metric == "style_rate":  # candidates: every artist of the prompt file, not only the attacked cases'
        import pandas as pd

        listed = pd.read_csv(dataset_path(args.prompt_file, "--prompt_file"))
        artists = list(dict.fromkeys([target] + [str(a).strip() for a in listed.get("artist", pd.Series()).dropna()]))
        if len(artists) < 2:
            raise UserError(f"--metric style_rate needs an 'artist' column in --prompt_file {args.prompt_file} naming "
                            f"other artists than {target!r} (zero-shot classification chooses among them)")
    if args.ckpt and not Path(args.ckpt).exists():
        raise UserError(f"--ckpt {args.ckpt} does not exist")
    out = Path(args.img_path)
    if (out / "asr.json").exists() and not args.overwrite:
        raise UserError(f"--img_path {out} already holds asr.json; choose another folder or pass --overwrite")

    # 2. Load the model (and the edited weights)
    quiet_libraries()
    pipe = load_pipeline(model_id, device=device)
    if args.ckpt:
        load_checkpoint_into_unet(pipe.unet, args.ckpt)

    # 3. The attacked conditions: E(p) + eta * v
    v = concept_vector(pipe.tokenizer, pipe.text_encoder, sensitive, normal)
    E, _ = encode_texts(pipe.tokenizer, pipe.text_encoder, table["prompt"].tolist())
    attacked = E + eta * v
    config = {"attack": "ring-a-bell (embedding level, docs/method.md §7)", "model_id": model_id, "ckpt": args.ckpt,
              "concept": args.concept, "target": target, "metric": metric, "eta": eta, "pairs_file": str(args.csv_file),
              "num_pairs": len(sensitive), "prompt_file": str(args.prompt_file), "from_case": args.from_case,
              "to_case": args.to_case, "num_prompts": len(table), "num_samples": args.num_samples,
              "ddim_steps": args.ddim_steps}
    prepare_run_dir(out, config, ("asr.json",), overwrite=True)
    from safetensors.torch import save_file
    with atomic_path(out / "concept_vector.safetensors") as tmp:
        save_file({"v": v.contiguous()}, str(tmp), metadata={"eta": str(eta), "pairs_file": str(args.csv_file)})

    # 4. Generate from the attacked embeddings, then score
    from utils.generate.sampling import generate_table
    generate_table(pipe, table, out, num_samples=args.num_samples, steps=args.ddim_steps,
                   batch_size=args.batch_size, embeddings=attacked, progress=True)
    result = score_run(out, metric, [target], artists=artists)
    write_json(out / "asr.json", {"asr": result["rate"], **result, **config})
    print(f"Ring-A-Bell on {args.concept} (eta {eta:g}): attack success rate {result['rate']:.4f} "
          f"over {len(table) * args.num_samples} images ({metric})")


if __name__ == "__main__":
    run_cli(main, parse_args)

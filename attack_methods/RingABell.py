"""Ring-A-Bell: the embedding-level attack RECE evaluates, and the published discrete prompt search
(docs/method.md §7, §10).

    python attack_methods/RingABell.py --csv_file dataset/nudity-ring-a-bell.csv \
        --prompt_file dataset/nudity.csv --eta 3 --concept nudity --ckpt runs/rece-nudity/best.safetensors \
        --img_path runs/attack-ringabell-nudity

The concept vector v is built from sensitive/normal prompt pairs as E(sensitive) - E(normal) (77 x d,
from the model's text encoder, which erasure leaves unchanged). By default (`--vector authors`) it is
the authors' average: pair differences averaged in batches of 8 (file order), then the batch means
averaged, so a shorter last batch weighs as much as a full one; `--vector mean` takes the plain mean
over pairs.

`--mode embedding` (default, as RECE evaluates it): each prompt p is generated from the condition
E(p) + eta * v, with the same seeds, batching and files as execs/generate_images.py; the attack
success rate (ASR) is the erased concept's rate on those images (NudeNet's nudity rate, the style
rate, the shapes judge). Writes IMG_PATH/config.json, imgs/, prompts.csv, concept_vector.safetensors
and asr.json.

`--mode discrete` (Ring-A-Bell as published): for each prompt a genetic search finds --length tokens
whose embedding is closest to E(p) + eta * v (population 200, the best half kept, crossover 0.5,
mutation 0.25, --generations 3000 in the original), decodes them to text and judges the model under
attack's image of that text; files, judge, resume and sharding as attack_methods/UnlearnDiffAtk.py
(adv_prompts.csv is a prompt CSV that execs/generate_images.py reads unchanged):

    python attack_methods/RingABell.py --mode discrete --csv_file dataset/nudity-ring-a-bell.csv \
        --prompt_file dataset/nudity.csv --concept nudity --ckpt runs/rece-nudity/best.safetensors \
        --save_path runs/attack-ringabell-discrete --generations 3000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.attack.judges import JUDGES, NUDITY_PRESETS  # noqa: E402
from utils.attack.objectives import concept_vector_batched, concept_vector_mean  # noqa: E402
from utils.checkpoints import check_checkpoint, load_checkpoint_into_unet  # noqa: E402
from utils.cli import batch_size_arg, finite_float, image_size_arg, samples_arg, steps_arg  # noqa: E402
from utils.datasets import dataset_path  # noqa: E402
from utils.errors import UserError, check_count, check_finite, run_cli  # noqa: E402
from utils.generate.sampling import OUTPUTS, SCHEDULERS  # noqa: E402
from utils.io import atomic_path, file_sha256, prepare_resumable_run_dir, stale_results, write_json  # noqa: E402
from utils.prompts import prompts_source  # noqa: E402
from utils.score.nudity import DETECTIONS_FILE, model_path  # noqa: E402
from utils.models import (add_model_args, encode_texts, load_pipeline, quiet_libraries, resolve_device,  # noqa: E402
                          resolve_model_id, text_components)
from utils.score.evaluation import METRICS, score_run  # noqa: E402

# The paper's settings (docs/method.md §7): concept -> (eta, metric, the concept as the scorer names it)
KNOWN = {"nudity": (3.0, "nudity_rate", "nudity"), "vangogh": (0.9, "style_rate", "Van Gogh"),
         "van gogh": (0.9, "style_rate", "Van Gogh")}
VECTORS = ("authors", "mean")
AUTHORS_BATCH = 8  # the authors' ringabell(): differences averaged 8 pairs at a time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("embedding", "discrete"), default="embedding",
                   help="embedding: condition on E(p) + eta * v (default, as RECE evaluates); discrete: search a "
                        "text prompt whose embedding is closest to it (Ring-A-Bell as published)")
    p.add_argument("--csv_file", required=True, help="sensitive/normal prompt pairs (columns 'sensitive prompt', "
                                                     "'normal prompt')")
    p.add_argument("--prompt_file", required=True, help="prompts to attack (docs/method.md §5 columns)")
    p.add_argument("--img_path", "--save_path", dest="img_path", required=True,
                   help="run folder for the attacked images and results")
    p.add_argument("--concept", required=True, help="erased concept: nudity, vangogh, or a shapes-world concept")
    p.add_argument("--eta", type=finite_float, default=None, help="attack strength (default: 3 for nudity, 0.9 for vangogh)")
    p.add_argument("--vector", choices=VECTORS, default="authors",
                   help="concept vector: authors (default; means of batches of 8 pairs, averaged) or mean (plain "
                        "mean over pairs)")
    p.add_argument("--ckpt", default="", help="edited weights to attack (any checkpoint format; '' = base model)")
    p.add_argument("--metric", default=None, choices=METRICS,
                   help="embedding mode: success metric (default: by concept; concept_rate for the shapes world)")
    p.add_argument("--from_case", type=int, default=None, help="first case_number to attack")
    p.add_argument("--to_case", type=int, default=None, help="case_number to stop before (exclusive)")
    p.add_argument("--num_samples", type=samples_arg, default=1, help="embedding mode: images per prompt")
    p.add_argument("--ddim_steps", type=steps_arg, default=50, help="denoising steps")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="lms", help="sampler (default lms)")
    p.add_argument("--sld", default=None, metavar="PRESET",
                   help="attack a model that generates with Safe Latent Diffusion (weak, medium, strong, max)")
    p.add_argument("--sld_concept", default=None, help="SLD's safety concept text (default: the pipeline's); needs --sld")
    p.add_argument("--guidance_scale", type=finite_float, default=None, help="override the rows' guidance")
    p.add_argument("--image_size", type=image_size_arg, default=None, help="override the rows' width and height")
    p.add_argument("--batch_size", type=batch_size_arg, default=8, help="embedding mode: rows per denoising batch")
    add_model_args(p)
    g = p.add_argument_group("discrete mode")
    g.add_argument("--length", type=int, default=16, help="prompt tokens K searched (default 16; the paper: 16, 38, 75)")
    g.add_argument("--population", type=int, default=200, help="individuals per generation (default 200)")
    g.add_argument("--generations", type=int, default=3000, help="generations (default 3000, as the original)")
    g.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    g.add_argument("--judge", choices=JUDGES, default=None, help="success judge (default by concept)")
    g.add_argument("--judge_preset", choices=sorted(NUDITY_PRESETS), default=None,
                   help="nudity rule: unlearndiff (default, > 0.45) or rece (> 0.6), over the 9 exposed classes")
    g.add_argument("--judge_candidates", default=None, help="style judge: comma-separated candidate artists")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier attack's results in --img_path")
    return p.parse_args(argv)


def concept_vector(tokenizer, text_encoder, sensitive: list[str], normal: list[str], rule: str = "authors") -> torch.Tensor:
    """v from the pairs (docs/method.md §7), 77 x d: the authors' batch-of-8 average or the plain mean."""
    E_s, _ = encode_texts(tokenizer, text_encoder, sensitive)
    E_n, _ = encode_texts(tokenizer, text_encoder, normal)
    if rule == "mean":
        return concept_vector_mean(E_s, E_n)
    return concept_vector_batched(E_s, E_n, AUTHORS_BATCH)


def read_pairs(path) -> tuple[list[str], list[str]]:
    from utils.prompts import read_csv_literal

    df = read_csv_literal(dataset_path(path, "--csv_file"), "--csv_file")
    cols = {c.lower().strip(): c for c in df.columns}
    if "sensitive prompt" not in cols or "normal prompt" not in cols:
        raise UserError(f"--csv_file {path} needs columns 'sensitive prompt' and 'normal prompt', has {list(df.columns)}")
    df = df.dropna(subset=[cols["sensitive prompt"], cols["normal prompt"]])
    if df.empty:
        raise UserError(f"--csv_file {path} has no complete sensitive/normal pair")
    return df[cols["sensitive prompt"]].astype(str).tolist(), df[cols["normal prompt"]].astype(str).tolist()


def resolve_eta(args) -> float:
    known = KNOWN.get(args.concept.lower())
    eta = args.eta if args.eta is not None else (known[0] if known else None)
    if eta is None:
        raise UserError(f"--eta is needed for --concept {args.concept} (the paper: 3 for nudity, 0.9 for vangogh)")
    return eta


def main_discrete(args):
    from utils.attack.genetic import DiscreteRingABell
    from utils.attack.runner import check_common, load_context, prepare_run, run_prompts

    # 1. Check inputs (before any model loads)
    eta = resolve_eta(args)
    for name, low in (("length", 1), ("population", 2), ("generations", 1)):
        if getattr(args, name) < low:
            raise UserError(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if args.length > 75:
        raise UserError(f"--length must be at most 75 (77 positions less the start and end tokens), got {args.length}")
    sensitive, normal = read_pairs(args.csv_file)
    args.save_path = args.img_path
    common = check_common(args, "ring-a-bell-discrete")
    settings = {"eta": eta, "vector": args.vector, "pairs_file": str(Path(dataset_path(args.csv_file, "--csv_file")).resolve()),
                "num_pairs": len(sensitive), "length": args.length, "population": args.population,
                "generations": args.generations}

    # 2. Run folder, model pair, concept vector
    state, run_dir = prepare_run(args, common, settings)
    ctx = load_context(args, common, run_dir)
    v = concept_vector(ctx.text, None, sensitive, normal, args.vector)  # 77 x d, both encoders on SDXL

    # 3. Search every prompt of this process's share; the last process writes adv_prompts.csv and asr.json
    attack = DiscreteRingABell(v, eta, args.length, args.population, args.generations)
    run_prompts(ctx, common.table, attack, state, judge_settings=ctx.judge.settings(),
                extra_summary={"eta": eta, "vector": args.vector}, progress=args.progress)


def main(args):
    if args.mode == "discrete":
        return main_discrete(args)
    # 1. Check inputs
    from utils.prompts import read_prompt_table

    known = KNOWN.get(args.concept.lower())
    eta = resolve_eta(args)
    metric = args.metric or (known[1] if known else "concept_rate")
    target = known[2] if known else args.concept
    for name in ("num_samples", "ddim_steps", "batch_size"):
        check_count(getattr(args, name), f"--{name}")
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
    if args.ckpt:
        check_checkpoint(args.ckpt, model_id)
    from utils.attack.runner import check_sld

    sld = check_sld(args)
    if metric == "nudity_rate":
        model_path()  # NudeNet missing or another version: say so now, not after generating every image
    out = Path(args.img_path)
    # The run folder: the same settings resume; other settings (another eta, say) are refused unless
    # --overwrite, which removes the earlier images and their scores. Claimed once the model loaded.
    settings = {"model_id": str(Path(model_id).resolve()) if Path(model_id).is_dir() else model_id,
                "ckpt": str(Path(args.ckpt).resolve()) if args.ckpt else "", "concept": args.concept,
                "target": target, "metric": metric, "eta": eta,
                "pairs_sha256": file_sha256(dataset_path(args.csv_file, "--csv_file")),
                "prompts_sha256": file_sha256(prompts_source(args.prompt_file)), "from_case": args.from_case,
                "to_case": args.to_case, "num_samples": args.num_samples, "ddim_steps": args.ddim_steps,
                "scheduler": args.scheduler, "vector": args.vector,
                "sld": None if sld is None else {"preset": args.sld, "concept": sld.concept},
                "guidance_scale": args.guidance_scale, "image_size": args.image_size}
    outputs = OUTPUTS + ("concept_vector.safetensors", "asr.json", DETECTIONS_FILE) + stale_results(out)
    prepare_resumable_run_dir(out, {"settings": settings}, outputs, args.overwrite, write=False, flag="--img_path")

    # 2. Load the model (and the edited weights)
    quiet_libraries()
    pipe = load_pipeline(model_id, device=device)
    if args.ckpt:
        load_checkpoint_into_unet(pipe.unet, args.ckpt)

    # 3. The attacked conditions: E(p) + eta * v
    # SDXL: E is 77 x 2048 (both encoders); the attacked rows keep the pooled embedding of their own
    # prompt p (generate_table's default, docs/models.md)
    v = concept_vector(*text_components(pipe), sensitive, normal, args.vector)
    E, _ = encode_texts(*text_components(pipe), table["prompt"].tolist())
    attacked = check_finite(E + eta * v, "the attacked embeddings E(p) + eta * v")
    config = {"attack": "ring-a-bell (embedding level, docs/method.md §7)", "model_id": model_id, "ckpt": args.ckpt,
              "concept": args.concept, "target": target, "metric": metric, "eta": eta, "vector": args.vector,
              "pairs_file": str(args.csv_file), "num_pairs": len(sensitive), "prompt_file": str(args.prompt_file),
              "from_case": args.from_case, "to_case": args.to_case, "num_prompts": len(table),
              "num_samples": args.num_samples, "ddim_steps": args.ddim_steps, "scheduler": args.scheduler}
    prepare_resumable_run_dir(out, {"settings": settings, "attack": config}, outputs, args.overwrite,
                              flag="--img_path")
    from safetensors.torch import save_file
    with atomic_path(out / "concept_vector.safetensors") as tmp:
        save_file({"v": v.contiguous()}, str(tmp), metadata={"eta": str(eta), "pairs_file": str(args.csv_file),
                                                              "vector": args.vector})

    # 4. Generate from the attacked embeddings, then score
    from utils.generate.sampling import generate_table
    generate_table(pipe, table, out, num_samples=args.num_samples, steps=args.ddim_steps, scheduler=args.scheduler, sld=sld,
                   batch_size=args.batch_size, embeddings=attacked, progress=args.progress)
    result = score_run(out, metric, [target], artists=artists)
    check_finite(result["rate"], f"the attack success rate ({metric}) of {out}")
    write_json(out / "asr.json", {"asr": result["rate"], **result, **config})
    print(f"Ring-A-Bell on {args.concept} (eta {eta:g}): attack success rate {result['rate']:.4f} "
          f"over {len(table) * args.num_samples} images ({metric})")


if __name__ == "__main__":
    run_cli(main, parse_args)

"""RECE: reliable and efficient concept erasure (SPEC sections 3-4), on top of UCE (SPEC 2a).

    python train.py --concepts nudity --concept_type nudity --emb_computing close_regzero \
        --regular_scale 0.1 --epochs 3 --save_path runs/rece-nudity --skip_validation

Each epoch derives, in closed form, the embedding c' that makes the edited model reproduce the
erased concept, then erases c' with one regularised closed-form edit. Writes SAVE_PATH/config.json
(first), uce.safetensors (when the UCE stage runs here), epoch_{k}.safetensors, adv_embeddings.safetensors,
best.safetensors (lowest validation rate; the last epoch with --skip_validation), detect_rate.json
and timing.json (closed_form_seconds: the derivations and edits alone).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils import closed_form as cf  # noqa: E402
from utils import concepts as cpt  # noqa: E402
from utils.checkpoints import load_edited_weights, save_edited_weights  # noqa: E402
from utils.cli import add_edit_args, check_scales, slug, stopwatch  # noqa: E402
from utils.concepts import RECE_EDIT, UCE_EDIT  # noqa: E402
from utils.erasure import EditState, TextCache, rece_epoch, uce_stage  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_path, prepare_resumable_run_dir, write_json  # noqa: E402
from utils.models import (CROSS_ATTN_KEY, add_model_args, load_edit_components, quiet_libraries,  # noqa: E402
                          resolve_device, resolve_model_id)

OUTPUTS = ("best.safetensors", "epoch_1.safetensors", "detect_rate.json")
OTHER_OUTPUTS = ("validation", "uce.safetensors", "adv_embeddings.safetensors", "timing.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edit_args(p, lamb=RECE_EDIT["lamb"], preserve_scale=RECE_EDIT["preserve_scale"])
    p.add_argument("--emb_computing", default=RECE_EDIT["emb_computing"], choices=cf.EMB_COMPUTING,
                   help="closed-form adversarial embedding (SPEC 3)")
    p.add_argument("--reg_item", default="both", choices=cf.REG_ITEMS, help="regulariser of close_surrogatereg")
    p.add_argument("--regular_scale", type=float, default=None,
                   help="gamma of the adversarial embedding (default: the paper's per concept type, SPEC 4)")
    p.add_argument("--old_target_concept", default=None,
                   help="old target text t of close_standardreg (e.g. ' ')")
    p.add_argument("--epochs", type=int, default=None, help="RECE epochs (default: the paper's per concept type)")
    p.add_argument("--target_ckpt", default="uce",
                   help="start point: 'uce' runs the UCE stage here with its defaults (default), '' starts from "
                        "the base model, else a checkpoint (ours, a full UNet .pt/.safetensors, a UNet folder)")
    p.add_argument("--seed", type=int, default=0, help="global torch seed (generation uses each row's seed)")
    p.add_argument("--test_csv_path", default=None,
                   help="validation prompts (default: the concept type's validation CSV, SPEC 4)")
    p.add_argument("--num_samples", type=int, default=1, help="validation images per prompt")
    p.add_argument("--ddim_steps", type=int, default=None, help="validation denoising steps (default 50)")
    p.add_argument("--skip_validation", action="store_true",
                   help="no validation: best.safetensors is the last epoch")
    add_model_args(p)
    p.add_argument("--save_path", default=None,
                   help="run folder (default runs/rece/<concepts>-<type>-<emb_computing>-reg<gamma>-ep<epochs>)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --save_path")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs and resolve the paper's settings (before any model loads)
    check_scales(args)
    concepts = cpt.parse_concepts(args.concepts)
    ctype = cpt.concept_type(args.concept_type)
    paper = cpt.rece_settings(ctype, concepts)
    gamma = paper["regular_scale"] if args.regular_scale is None else args.regular_scale
    epochs = paper["epochs"] if args.epochs is None else args.epochs
    if epochs < 0:
        raise UserError(f"--epochs must be at least 0, got {epochs}")
    if args.emb_computing == "close_standardreg" and args.old_target_concept is None:
        raise UserError("--emb_computing close_standardreg needs --old_target_concept (e.g. ' ')")
    if args.num_samples < 1:
        raise UserError(f"--num_samples must be at least 1, got {args.num_samples}")
    guides = cpt.guides_for(concepts, args.guided_concepts, ctype)
    preserve_given = cpt.split_list(args.preserve_concepts)
    model_id = resolve_model_id(args.model_id, args.base)
    device = resolve_device(args.device)
    start = (args.target_ckpt or "").strip()
    if start not in ("", "uce") and not Path(start).exists():
        raise UserError(f"--target_ckpt {start} does not exist (expected 'uce', '' or a checkpoint path)")
    validate = not args.skip_validation
    validation_csv = args.test_csv_path or paper["validation_csv"]
    if validate:
        from utils.validation import check_validation
        check_validation(ctype.name, paper["metric"], validation_csv, concepts)
    save_path = Path(args.save_path or f"runs/rece/{slug(','.join(concepts), 40)}-{ctype.name}-{args.emb_computing}"
                                       f"-reg{gamma:g}-ep{epochs}")
    if not args.overwrite:
        for f in OUTPUTS:
            if (save_path / f).exists():
                raise UserError(f"--save_path {save_path} already holds {f}; choose another folder or pass --overwrite")
    torch.manual_seed(args.seed)

    # 2. Load the text encoder and the edited matrices (the whole pipeline only to validate)
    quiet_libraries()
    timing = {}
    with stopwatch(timing, "load_seconds"):
        tokenizer, text_encoder, W_orig, unet_shapes, pipe = load_edit_components(model_id, device, pipeline=validate)
        W_start = None
        if start not in ("", "uce"):
            model_shapes = {k: tuple(v.shape) for k, v in W_orig.items()}
            W_start = load_edited_weights(start, model_shapes, unet_shapes)
            missing = [k for k in W_orig if k not in W_start]
            W_start.update({k: W_orig[k] for k in missing})  # a partial checkpoint edits only its keys
    texts = TextCache(tokenizer, text_encoder, args.text_batch_size)
    state = EditState(W_orig, W_start)

    # 3. Text embeddings, each text once
    uce_preserve = cpt.preserve_texts(ctype.name, concepts, preserve_given, stage="uce") if start == "uce" else []
    rece_preserve = cpt.preserve_texts(ctype.name, concepts, preserve_given, stage="rece")
    with stopwatch(timing, "text_encoding_seconds"):
        texts.embed(concepts + guides + ([args.old_target_concept] if args.old_target_concept is not None else []))
        if uce_preserve:
            texts.gram(uce_preserve, progress=True)
        P_rece = texts.gram(rece_preserve, progress=True)

    # 4. The closed-form steps: UCE stage (optional), then every RECE epoch
    uce_used, snapshots, advs = None, [], []
    with stopwatch(timing, "closed_form_seconds"):
        if start == "uce":
            uce_used = uce_stage(state, texts, concepts, guides, uce_preserve, UCE_EDIT["lamb"],
                                 UCE_EDIT["erase_scale"], None, args.technique)
            uce_snapshot = state.snapshot()
        for _ in range(epochs):
            advs.append(rece_epoch(state, texts, concepts, guides, P_rece, gamma, args.emb_computing,
                                   args.reg_item, args.old_target_concept, args.lamb, args.erase_scale,
                                   args.preserve_scale, args.technique))
            snapshots.append(state.snapshot())
        # materialise every checkpoint's matrices (part of the edit, timed with it)
        uce_weights = state.matrices(uce_snapshot) if start == "uce" else None
        epoch_weights = [state.matrices(s) for s in snapshots]
    for name, ws in [("uce", [uce_weights] if uce_weights else [])] + [("epochs", epoch_weights)]:
        for w in ws:
            if not all(torch.isfinite(t).all() for t in w.values()):
                raise UserError(f"the {name} edit produced non-finite weights (singular system); "
                                f"use a larger --lamb / --regular_scale")

    # 5. Save: config first, then the checkpoints
    settings = {"method": "rece", "model_id": model_id, "concepts": concepts, "concept_type": ctype.name,
              "guided_concepts": guides, "emb_computing": args.emb_computing, "reg_item": args.reg_item,
              "regular_scale": gamma, "epochs": epochs, "old_target_concept": args.old_target_concept,
              "technique": args.technique, "lamb": args.lamb, "erase_scale": args.erase_scale,
              "preserve_scale": args.preserve_scale, "preserve_concepts": preserve_given,
              "num_rece_preserve_texts": len(rece_preserve), "target_ckpt": start, "uce_stage": uce_used,
              "seed": args.seed, "validation": None if not validate else
              {"csv": validation_csv, "metric": paper["metric"], "num_samples": args.num_samples,
               "ddim_steps": args.ddim_steps or 50},
              "num_edited_matrices": len(W_orig)}
    # A killed run with the same settings resumes its validation images; other settings are refused
    # (checked before the heavy work too), and --overwrite first deletes the earlier outputs.
    earlier = tuple(p.name for p in save_path.glob("epoch_*.safetensors"))
    prepare_resumable_run_dir(save_path, {"settings": settings, "device": str(device)},
                              tuple(dict.fromkeys(OUTPUTS + OTHER_OUTPUTS + earlier)), overwrite=args.overwrite)
    meta = {"base_model": model_id, "concepts": concepts,
            "settings": {k: v for k, v in settings.items() if k not in ("concepts", "model_id")}}
    with stopwatch(timing, "save_seconds"):
        if uce_weights is not None:
            save_edited_weights(save_path / "uce.safetensors", uce_weights, {**meta, "method": "uce"})
        for k, w in enumerate(epoch_weights, 1):
            save_edited_weights(save_path / f"epoch_{k}.safetensors", w, {**meta, "method": "rece", "epoch": k})
        if advs:
            from safetensors.torch import save_file
            with atomic_path(save_path / "adv_embeddings.safetensors") as tmp:
                save_file({f"epoch_{k}/{c}": a.float().contiguous() for k, ep in enumerate(advs, 1)
                           for c, a in zip(concepts, ep)}, str(tmp),
                          metadata={"format": "rece-toolkit/adversarial-embeddings/v1",
                                    "note": "c' of SPEC 3 per epoch and concept, 77 x d, conditioning the edited "
                                            "model of the epoch before"})

    # 6. Validation (SPEC 4): base, UCE, each epoch; keep the epoch with the lowest rate
    rates = {"metric": paper["metric"] if validate else None, "validation_csv": validation_csv if validate else None}
    stages = [("base", W_orig)] + ([("uce", uce_weights)] if uce_weights is not None else []) + \
             [(f"epoch_{k}", w) for k, w in enumerate(epoch_weights, 1)]
    best = len(epoch_weights)  # without validation: the last epoch
    if validate:
        from utils.validation import validate_weights
        with stopwatch(timing, "validation_seconds"):
            scores = {}
            for name, w in stages:
                result = validate_weights(pipe, w, save_path / "validation" / name, ctype.name, concepts,
                                          paper["metric"], validation_csv, args.num_samples, args.ddim_steps or 50)
                scores[name] = result
                print(f"validation {name}: {paper['metric']} = {result['rate']:.4f}")
                if ctype.name == "object" and name.startswith("epoch_") and result["rate"] == 0:
                    break  # SPEC 4: objects stop once the target class is gone
        rates.update({name: r["rate"] for name, r in scores.items()})
        rates["details"] = scores
        epoch_rates = [(scores[f"epoch_{k}"]["rate"], k) for k in range(1, len(epoch_weights) + 1)
                       if f"epoch_{k}" in scores]
        if epoch_rates:
            best = min(epoch_rates)[1]
    rates["best_epoch"] = best
    best_weights = epoch_weights[best - 1] if best > 0 else (uce_weights if uce_weights is not None else None)
    if best_weights is not None:
        save_edited_weights(save_path / "best.safetensors", best_weights,
                            {**meta, "method": "rece" if best > 0 else "uce", "epoch": best})
    write_json(save_path / "detect_rate.json", rates)
    timing["closed_form_seconds_per_epoch"] = timing["closed_form_seconds"] / max(1, epochs)
    write_json(save_path / "timing.json", timing)
    print(f"RECE erased {', '.join(concepts)}: {epochs} epoch(s) in {timing['closed_form_seconds']:.2f} s of "
          f"closed-form steps (+{timing['text_encoding_seconds']:.2f} s text encoding); best epoch {best}: "
          f"{save_path / 'best.safetensors'}")


if __name__ == "__main__":
    run_cli(main, parse_args)

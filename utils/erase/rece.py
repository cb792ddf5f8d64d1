"""RECE as a library call (docs/method.md §3-§4): what `train.py` runs, callable from Python.

    from utils.erase.rece import run_rece
    rates = run_rece(concepts="nudity", concept_type="nudity", save_path="runs/rece-nudity",
                     skip_validation=True)

Each epoch derives, in closed form, the embedding c' that makes the edited model reproduce the
erased concept, then erases c' with one regularised closed-form edit.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from utils.checkpoints import apply_checkpoint, changes_outside, load_edited_weights, parent_record, save_edited_weights
from utils.cli import check_scales, slug, stopwatch
from utils.erase import concepts as cpt
from utils.erase.concepts import RECE_EDIT, UCE_EDIT
from utils.erase.steps import EditState, TextCache, rece_epoch, uce_stage
from utils.errors import UserError, check_count
from utils.io import atomic_path, prepare_resumable_run_dir, prepare_run_dir, write_json
from utils.models import load_edit_components, quiet_libraries, resolve_device, resolve_model_id, unet_weights_file

OUTPUTS = ("best.safetensors", "epoch_1.safetensors", "detect_rate.json")
OTHER_OUTPUTS = ("validation", "uce.safetensors", "adv_embeddings.safetensors", "timing.json")


def run_rece(*, concepts: str, concept_type: str, guided_concepts: str | None = None,
             preserve_concepts: str | None = None, technique: str = "replace",
             lamb: float = RECE_EDIT["lamb"], erase_scale: float = 1.0,
             preserve_scale: float = RECE_EDIT["preserve_scale"], text_batch_size: int = 64,
             emb_computing: str = RECE_EDIT["emb_computing"], reg_item: str = "both",
             regular_scale: float | None = None, old_target_concept: str | None = None,
             epochs: int | None = None, target_ckpt: str = "uce", seed: int = 0,
             test_csv_path: str | None = None, num_samples: int = 1, ddim_steps: int | None = None,
             skip_validation: bool = False, model_id: str | None = None, base: str | None = None,
             device: str | None = None, save_path: str | None = None, overwrite: bool = False) -> dict:
    """Run RECE (docs/method.md §3-§4) and write its run folder; return the validation rates.

    The keyword arguments are `train.py`'s flags (same names, same defaults); `concepts`,
    `guided_concepts` and `preserve_concepts` are comma-separated strings as on the command line.
    """
    # 1. Check inputs and resolve the paper's settings (before any model loads)
    check_scales(SimpleNamespace(lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale,
                                 regular_scale=regular_scale, text_batch_size=text_batch_size))
    concepts = cpt.parse_concepts(concepts)
    ctype = cpt.concept_type(concept_type)
    paper = cpt.rece_settings(ctype, concepts)
    gamma = paper["regular_scale"] if regular_scale is None else regular_scale
    epochs = paper["epochs"] if epochs is None else epochs
    if epochs < 0:
        raise UserError(f"--epochs must be at least 0, got {epochs}")
    if emb_computing == "close_standardreg" and old_target_concept is None:
        raise UserError("--emb_computing close_standardreg needs --old_target_concept (e.g. ' ')")
    check_count(num_samples, "--num_samples")
    guides = cpt.guides_for(concepts, guided_concepts, ctype)
    preserve_given = cpt.split_list(preserve_concepts)
    model_id = resolve_model_id(model_id, base)
    device = resolve_device(device)
    start = (target_ckpt or "").strip()
    if start not in ("", "uce") and not Path(start).exists():
        raise UserError(f"--target_ckpt {start} does not exist (expected 'uce', '' or a checkpoint path)")
    validate = not skip_validation
    validation_csv = test_csv_path or paper["validation_csv"]
    if validate:
        from utils.erase.validation import check_validation
        check_validation(ctype.name, paper["metric"], validation_csv, concepts)
    save_path = Path(save_path or f"runs/rece/{slug(','.join(concepts), 40)}-{ctype.name}-{emb_computing}"
                                       f"-reg{gamma:g}-ep{epochs}")
    prepare_run_dir(save_path, {}, OUTPUTS, overwrite, write=False)  # the claim itself waits for the edit
    torch.manual_seed(seed)

    # 2. Load the text encoder and the edited matrices (the whole pipeline only to validate)
    quiet_libraries()
    timing = {}
    with stopwatch(timing, "load_seconds"):
        tokenizer, text_encoder, W_orig, unet_shapes, pipe = load_edit_components(model_id, device, pipeline=validate)
        W_start, start_ck, parent, outside = None, None, None, []
        if start not in ("", "uce"):
            model_shapes = {k: tuple(v.shape) for k, v in W_orig.items()}
            W_start, start_ck = load_edited_weights(start, model_shapes, unet_shapes)
            missing = [k for k in W_orig if k not in W_start]
            W_start.update({k: W_orig[k] for k in missing})  # a partial checkpoint edits only its keys
            outside = changes_outside(start_ck, W_orig, unet_weights_file(model_id))
            if outside:
                # It also changes tensors the edit does not touch (ESD-u, ESD-x's to_q / to_out, ...):
                # our files hold the edited matrices and record it as their parent, applied first.
                parent = parent_record(start_ck)
    texts = TextCache(tokenizer, text_encoder, text_batch_size)
    state = EditState(W_orig, W_start)

    # 3. Text embeddings, each text once
    uce_preserve = cpt.preserve_texts(ctype.name, concepts, preserve_given, stage="uce") if start == "uce" else []
    rece_preserve = cpt.preserve_texts(ctype.name, concepts, preserve_given, stage="rece")
    with stopwatch(timing, "text_encoding_seconds"):
        texts.embed(concepts + guides + ([old_target_concept] if old_target_concept is not None else []))
        if uce_preserve:
            texts.gram(uce_preserve, progress=True)
        P_rece = texts.gram(rece_preserve, progress=True)

    # 4. The closed-form steps: UCE stage (optional), then every RECE epoch
    uce_used, snapshots, advs = None, [], []
    with stopwatch(timing, "closed_form_seconds"):
        if start == "uce":
            uce_used = uce_stage(state, texts, concepts, guides, uce_preserve, UCE_EDIT["lamb"],
                                 UCE_EDIT["erase_scale"], None, technique)
            uce_snapshot = state.snapshot()
        for _ in range(epochs):
            advs.append(rece_epoch(state, texts, concepts, guides, P_rece, gamma, emb_computing,
                                   reg_item, old_target_concept, lamb, erase_scale,
                                   preserve_scale, technique))
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
              "guided_concepts": guides, "emb_computing": emb_computing, "reg_item": reg_item,
              "regular_scale": gamma, "epochs": epochs, "old_target_concept": old_target_concept,
              "technique": technique, "lamb": lamb, "erase_scale": erase_scale,
              "preserve_scale": preserve_scale, "preserve_concepts": preserve_given,
              "num_rece_preserve_texts": len(rece_preserve), "target_ckpt": start, "uce_stage": uce_used,
              "seed": seed, "validation": None if not validate else
              {"csv": validation_csv, "metric": paper["metric"], "num_samples": num_samples,
               "ddim_steps": ddim_steps or 50},
              "num_edited_matrices": len(W_orig),
              "start_checkpoint": None if start_ck is None else
              {"path": str(start_ck.path.resolve()), "tensors": len(start_ck.keys),
               "changed_outside_edit": len(outside),
               "applied_as": "parent (recorded in every checkpoint's metadata, applied before it)" if parent
               else "its attn2.to_k/to_v matrices (it changes nothing else)",
               "parent": parent}}
    # A killed run with the same settings resumes its validation images; other settings are refused
    # (checked before the heavy work too), and --overwrite first deletes the earlier outputs.
    earlier = tuple(p.name for p in save_path.glob("epoch_*.safetensors"))
    prepare_resumable_run_dir(save_path, {"settings": settings, "device": str(device)},
                              tuple(dict.fromkeys(OUTPUTS + OTHER_OUTPUTS + earlier)), overwrite=overwrite)
    meta = {"base_model": model_id, "concepts": concepts,
            "settings": {k: v for k, v in settings.items() if k not in ("concepts", "model_id")},
            **({"parent": parent} if parent else {})}
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
                                    "note": "c' of docs/method.md §3 per epoch and concept, 77 x d, conditioning the edited "
                                            "model of the epoch before"})

    # 6. Validation (docs/method.md §4): base, UCE, each epoch; keep the epoch with the lowest rate
    rates = {"metric": paper["metric"] if validate else None, "validation_csv": validation_csv if validate else None}
    stages = [("base", W_orig)] + ([("uce", uce_weights)] if uce_weights is not None else []) + \
             [(f"epoch_{k}", w) for k, w in enumerate(epoch_weights, 1)]
    best = len(epoch_weights)  # without validation: the last epoch
    if validate:
        from utils.erase.validation import validate_weights
        with stopwatch(timing, "validation_seconds"):
            scores, parent_applied = {}, False
            for name, w in stages:
                if name != "base" and parent and not parent_applied:
                    apply_checkpoint(pipe.unet, start_ck)  # the parent under every stage after the base model
                    parent_applied = True
                result = validate_weights(pipe, w, save_path / "validation" / name, ctype.name, concepts,
                                          paper["metric"], validation_csv, num_samples, ddim_steps or 50)
                scores[name] = result
                print(f"validation {name}: {paper['metric']} = {result['rate']:.4f}")
                if ctype.name == "object" and name.startswith("epoch_") and result["rate"] == 0:
                    break  # docs/method.md §4: objects stop once the target class is gone
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
    return rates

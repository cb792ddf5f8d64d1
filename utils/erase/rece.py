"""RECE as a library call (docs/method.md §3-§4): what `train.py` runs, callable from Python.

    from utils.erase.rece import run_rece
    rates = run_rece(concepts="nudity", concept_type="nudity", save_path="runs/rece-nudity",
                     skip_validation=True)

Each epoch derives, in closed form, the embedding c' that makes the edited model reproduce the
erased concept, then erases c' with one regularised closed-form edit. Which checkpoint the run keeps
as `best` follows the authors' scripts (`select_best`).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from utils.checkpoints import apply_checkpoint, changes_outside, load_edited_weights, parent_record, save_edited_weights
from utils.cli import check_scales, slug, stopwatch
from utils.erase import concepts as cpt
from utils.erase.concepts import RECE_EDIT, UCE_EDIT
from utils.erase.cache import GramCache, default_cache_dir
from utils.erase.steps import EditState, TextCache, cached_base_grams, rece_epoch, uce_stage
from utils.errors import UserError, check_count
from utils.io import atomic_path, prepare_resumable_run_dir, prepare_run_dir, write_json
from utils.models import (TextEncoders, edit_weights, load_pipeline, load_text_encoders, quiet_libraries,
                          resolve_device, resolve_model_id, text_fingerprint, unet_weights_file, weights_fingerprint)

OUTPUTS = ("best.safetensors", "epoch_1.safetensors", "detect_rate.json")
OTHER_OUTPUTS = ("validation", "uce.safetensors", "adv_embeddings.safetensors", "timing.json")
# train_object.py: an epoch's other-class accuracy may be at most 0.1 below UCE's
OBJECT_OTHER_SLACK = 0.1


def select_best(metric: str | None, rates: dict, epochs: int, has_uce: bool, other: dict | None = None) -> dict:
    """Which checkpoint a RECE run keeps as `best` (docs/method.md §4), by the authors' rules.

    `rates` maps 'base', 'uce' (when the run has a UCE / start checkpoint) and the validated
    'epoch_k' to validation rates (lower is better); `other` maps the same names to the other-class
    accuracy (objects). Returns {'best': 'epoch_k' | 'uce' | None, 'best_epoch': k | 0 | None,
    'rule': ..., 'reason': ...}.

    - No validation (`metric` None): the last epoch; with 0 epochs the UCE / start checkpoint.
    - Nudity, unsafe and the built-in world (the authors' train.py): an epoch is kept only if its rate
      is strictly below both the base model's and UCE's; of those, the lowest (the earliest among
      equal rates, as train.py saves a checkpoint only on a strict improvement).
    - Objects (train_object.py): when UCE's target accuracy is already 0, UCE is kept and RECE's
      epochs are not used (the paper's rule for objects UCE already erases); an epoch whose target
      accuracy is 0 is kept and ends the run; else an epoch qualifies when its target accuracy is below
      UCE's and its other-class accuracy is at least UCE's minus 0.1, and the qualifying epoch with the
      lowest target accuracy is kept (train_object.py saves every qualifying epoch; the paper runs one).
      Without UCE the base model stands in for it.
    - Art (train_artists.py saves every epoch, with no validation rule): the last epoch.
    When no epoch qualifies, `best` is UCE (None when the run has none), and `reason` says why.
    """
    validated = [k for k in range(1, epochs + 1) if f"epoch_{k}" in rates]
    fallback = ("uce", 0) if has_uce else (None, None)

    def kept(choice, rule, reason):
        return {"best": choice[0], "best_epoch": choice[1], "rule": rule, "reason": reason}

    if metric is None or metric == "style_rate":
        rule = "no validation: the last epoch" if metric is None else \
            "art: the last epoch (the authors' art script keeps every epoch, with no validation rule)"
        if epochs:
            return kept((f"epoch_{epochs}", epochs), rule, f"epoch {epochs} is the last epoch")
        return kept(fallback, rule, "0 epochs: the start checkpoint is kept" if has_uce
                    else "0 epochs and no start checkpoint: nothing to keep")
    if metric == "target_accuracy":
        ref = "uce" if has_uce else "base"
        rule = (f"objects: an epoch at target accuracy 0 is kept and ends the run; else the lowest target accuracy "
                f"among epochs below {ref}'s whose other-class accuracy is at least {ref}'s - {OBJECT_OTHER_SLACK}")
        if has_uce and rates["uce"] == 0:
            return kept(fallback, rule, "UCE already reaches target accuracy 0: RECE's further erasure is not "
                                        "applied (the paper's rule for objects UCE already erases)")
        qualify = []
        for k in validated:
            target, others = rates[f"epoch_{k}"], other[f"epoch_{k}"]
            if target == 0:
                return kept((f"epoch_{k}", k), rule, f"epoch {k} reaches target accuracy 0 (the run stops there)")
            # 1e-9: accuracies are ratios of counts; 0.8 - 0.1 must not exceed 0.7 by a rounding error
            if target < rates[ref] and others >= other[ref] - OBJECT_OTHER_SLACK - 1e-9:
                qualify.append((target, k))
        if qualify:
            k = min(qualify)[1]
            return kept((f"epoch_{k}", k), rule, f"epoch {k}: the lowest target accuracy among qualifying epochs")
        return kept(fallback, rule, f"no epoch has a target accuracy below {ref}'s ({rates[ref]:.4f}) with other-class "
                                    f"accuracy at least {other[ref] - OBJECT_OTHER_SLACK:.4f}; "
                                    + ("UCE is kept" if has_uce else "there is no checkpoint to keep"))
    bar = min(rates[n] for n in ("base", "uce") if n in rates)
    rule = "an epoch is kept only if its rate is strictly below the base model's and UCE's; the lowest such epoch"
    qualify = [(rates[f"epoch_{k}"], k) for k in validated if rates[f"epoch_{k}"] < bar]
    if qualify:
        k = min(qualify)[1]
        return kept((f"epoch_{k}", k), rule, f"epoch {k} has the lowest rate, below min(base, UCE) = {bar:.4f}")
    return kept(fallback, rule, f"no epoch's rate is below min(base, UCE) = {bar:.4f}; "
                                + ("UCE is kept" if has_uce else "there is no checkpoint to keep"))


def run_rece(*, concepts: str, concept_type: str, guided_concepts: str | None = None,
             preserve_concepts: str | None = None, technique: str = "replace",
             lamb: float = RECE_EDIT["lamb"], erase_scale: float = 1.0,
             preserve_scale: float = RECE_EDIT["preserve_scale"], text_batch_size: int = 64,
             emb_computing: str = RECE_EDIT["emb_computing"], reg_item: str = "1st",
             regular_scale: float | None = None, old_target_concept: str | None = None,
             epochs: int | None = None, target_ckpt: str = "uce", seed: int = 0,
             test_csv_path: str | None = None, num_samples: int = 1, ddim_steps: int | None = None,
             skip_validation: bool = False, model_id: str | None = None, base: str | None = None,
             device: str | None = None, save_path: str | None = None, overwrite: bool = False,
             uce_tokens: str = "slice", cache_dir: str | None = None, no_cache: bool = False) -> dict:
    """Run RECE (docs/method.md §3-§4) and write its run folder; return the validation rates.

    The keyword arguments are `train.py`'s flags (same names, same defaults); `concepts`,
    `guided_concepts` and `preserve_concepts` are comma-separated strings as on the command line.
    """
    # 1. Check inputs and resolve the paper's settings (before any model loads)
    check_scales(SimpleNamespace(lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale,
                                 regular_scale=regular_scale, text_batch_size=text_batch_size,
                                 no_cache=no_cache, cache_dir=cache_dir))
    if uce_tokens not in ("slice", "last"):
        raise UserError(f"--uce_tokens must be slice or last, got {uce_tokens!r}")
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
    if epochs == 0 and start == "":
        raise UserError("--epochs 0 with --target_ckpt '' edits nothing; give epochs or a start checkpoint")
    validate = not skip_validation
    validation_csv = test_csv_path or paper["validation_csv"]
    if validate:
        from utils.erase.validation import check_validation
        check_validation(ctype.name, paper["metric"], validation_csv, concepts)
    save_path = Path(save_path or f"runs/rece/{slug(','.join(concepts), 40)}-{ctype.name}-{emb_computing}"
                                       f"-reg{gamma:g}-ep{epochs}")
    prepare_run_dir(save_path, {}, OUTPUTS, overwrite, write=False)  # the claim itself waits for the edit
    torch.manual_seed(seed)

    # 2. Load the text encoder(s) (the whole pipeline only to validate; the UNet is otherwise never loaded)
    quiet_libraries()
    timing = {}
    cache = GramCache(None if no_cache else (cache_dir or default_cache_dir()))
    with stopwatch(timing, "load_seconds"):
        pipe = load_pipeline(model_id, device=device) if validate else None
        text = TextEncoders.from_pipeline(pipe) if validate else load_text_encoders(model_id, device=device)
    texts = TextCache(text, batch_size=text_batch_size, cache=cache, model_id=model_id,
                      fingerprint=text_fingerprint(model_id) if cache.enabled else None)

    # 3. Text embeddings, each text once; preserve Grams from the cache when it has them
    uce_preserve = cpt.preserve_texts(ctype.name, concepts, preserve_given, stage="uce") if start == "uce" else []
    if uce_tokens == "last":
        uce_preserve = uce_preserve[1:]  # UCE 2025 adds no implicit '' preserve text (docs/models.md)
    rece_preserve = cpt.preserve_texts(ctype.name, concepts, preserve_given, stage="rece")
    with stopwatch(timing, "text_encoding_seconds", cpu=True):
        texts.embed(concepts + guides + ([old_target_concept] if old_target_concept is not None else []))
        if uce_preserve:
            texts.gram(uce_preserve, progress=True, tokens="last" if uce_tokens == "last" else "all")
        P_rece = texts.gram(rece_preserve, progress=True)
    if not validate:
        texts.release()  # every text is embedded: free the encoders before the weights are read

    # 4. The edited matrices, and (for RECE) their Gram sums, from the cache when it has them
    with stopwatch(timing, "load_seconds"):
        W_orig, unet_shapes = edit_weights(model_id, pipe)
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
        state = EditState(W_orig, W_start)
        num_matrices = len(W_orig)
        del W_orig, W_start  # the state holds them (stacked)
    if epochs > 0:
        with stopwatch(timing, "weights_gram_seconds", cpu=True):
            cached_base_grams(state, cache, model_id, weights_fingerprint(model_id, state.original())
                              if cache.enabled else None, str(Path(start).resolve()) if start not in ("", "uce") else None)

    # 5. The closed-form steps: UCE stage (optional), then every RECE epoch (materialised when saved)
    uce_used, snapshots, advs, uce_snapshot = None, [], [], None
    with stopwatch(timing, "closed_form_seconds", cpu=True):
        if start == "uce":
            uce_used = uce_stage(state, texts, concepts, guides, uce_preserve, UCE_EDIT["lamb"],
                                 UCE_EDIT["erase_scale"], None, technique, tokens=uce_tokens)
        if start != "":
            uce_snapshot = state.snapshot()  # the UCE stage run here, or the start checkpoint
        for _ in range(epochs):
            advs.append(rece_epoch(state, texts, concepts, guides, P_rece, gamma, emb_computing,
                                   reg_item, old_target_concept, lamb, erase_scale,
                                   preserve_scale, technique))
            snapshots.append(state.snapshot())
    stages = ([("uce", uce_snapshot)] if uce_snapshot is not None else []) + \
             [(f"epoch_{k}", snap) for k, snap in enumerate(snapshots, 1)]
    for name, (W_a, updates) in stages:  # finite factors on finite weights give finite weights
        if not all(torch.isfinite(G).all() and torch.isfinite(D).all() for D, G in updates) or \
                not torch.isfinite(W_a).all():
            raise UserError(f"the {name.replace('_', ' ')} edit produced non-finite weights (singular system); "
                            f"use a larger --lamb / --regular_scale")

    # 6. Save: config first, then the checkpoints, each materialised in turn
    settings = {"method": "rece", "model_id": model_id, "concepts": concepts, "concept_type": ctype.name,
              "guided_concepts": guides, "emb_computing": emb_computing, "reg_item": reg_item,
              "regular_scale": gamma, "epochs": epochs, "old_target_concept": old_target_concept,
              "technique": technique, "lamb": lamb, "erase_scale": erase_scale,
              "preserve_scale": preserve_scale, "preserve_concepts": preserve_given,
              "num_rece_preserve_texts": len(rece_preserve), "target_ckpt": start, "uce_stage": uce_used,
              "seed": seed, "validation": None if not validate else
              {"csv": validation_csv, "metric": paper["metric"], "num_samples": num_samples,
               "ddim_steps": ddim_steps or 50},
              "num_edited_matrices": num_matrices, "uce_tokens": uce_tokens,
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
    timing["derive_and_edit_seconds"] = timing["closed_form_seconds"]
    materialised = state.iter_matrices([snap for _, snap in stages])
    last = (None, None)
    for name, _ in stages:
        with stopwatch(timing, "materialise_seconds", cpu=True):
            weights = next(materialised)
        with stopwatch(timing, "save_seconds"):
            if name != "uce":
                extra = {"method": "rece", "epoch": int(name.split("_")[1])}
            else:
                extra = {"method": "uce"} if start == "uce" else {"method": "start checkpoint", "source": start}
            save_edited_weights(save_path / f"{name}.safetensors", weights, {**meta, **extra})
        last = (name, weights)
    del materialised
    # closed_form_seconds: derivations + edits + materialising the checkpoints' matrices, as timed before
    timing["closed_form_seconds"] += timing.get("materialise_seconds", 0.0)
    timing["derive_and_edit_cpu_seconds"] = timing["closed_form_cpu_seconds"]
    timing["closed_form_cpu_seconds"] += timing.get("materialise_cpu_seconds", 0.0)
    timing["threads"] = torch.get_num_threads()
    with stopwatch(timing, "save_seconds"):
        if advs:
            from safetensors.torch import save_file
            with atomic_path(save_path / "adv_embeddings.safetensors") as tmp:
                save_file({f"epoch_{k}/{c}": a.float().contiguous() for k, ep in enumerate(advs, 1)
                           for c, a in zip(concepts, ep)}, str(tmp),
                          metadata={"format": "rece-toolkit/adversarial-embeddings/v1",
                                    "note": "c' of docs/method.md §3 per epoch and concept, 77 x d, conditioning the edited "
                                            "model of the epoch before"})

    def stage_weights(name):
        return last[1] if name == last[0] else state.matrices(dict(stages)[name])

    # 7. Validation (docs/method.md §4): base, UCE (or the start checkpoint), each epoch; then the
    #    authors' rule picks the checkpoint kept as best (select_best)
    metric = paper["metric"] if validate else None
    rates = {"metric": metric, "validation_csv": validation_csv if validate else None}
    other = {}
    if validate:
        from utils.erase.validation import validate_weights
        with stopwatch(timing, "validation_seconds"):
            scores, parent_applied = {}, False
            for name, _ in [("base", None)] + stages:
                if metric == "target_accuracy" and name.startswith("epoch_") and scores.get("uce", {}).get("rate") == 0:
                    print("validation: UCE already reaches target accuracy 0; RECE's epochs are not validated")
                    break
                if name != "base" and parent and not parent_applied:
                    apply_checkpoint(pipe.unet, start_ck)  # the parent under every stage after the base model
                    parent_applied = True
                w = state.original() if name == "base" else stage_weights(name)
                result = validate_weights(pipe, w, save_path / "validation" / name, ctype.name, concepts,
                                          metric, validation_csv, num_samples, ddim_steps or 50)
                scores[name] = result
                print(f"validation {name}: {metric} = {result['rate']:.4f}")
                if metric == "target_accuracy" and name.startswith("epoch_") and result["rate"] == 0:
                    break  # docs/method.md §4: objects stop once the target class is gone
        rates.update({name: r["rate"] for name, r in scores.items()})
        if metric == "target_accuracy":
            other = {name: sum(r["other_accuracy"].values()) / len(r["other_accuracy"]) for name, r in scores.items()}
            rates["other_accuracy"] = other
        rates["details"] = scores
    choice = select_best(metric, rates, len(snapshots), uce_snapshot is not None, other)
    rates.update(best=choice["best"], best_epoch=choice["best_epoch"],
                 selection={"rule": choice["rule"], "reason": choice["reason"]})
    best = choice["best_epoch"]
    best_weights = None if choice["best"] is None else stage_weights(choice["best"])
    if best_weights is not None:
        save_edited_weights(save_path / "best.safetensors", best_weights,
                            {**meta, "method": "rece" if best > 0 else "uce", "epoch": best,
                             "selection": choice["reason"]})
    timing["cache"] = {"dir": str(cache.folder) if cache.enabled else None, **cache.status}
    timing["texts_encoded"] = texts.num_encoded
    write_json(save_path / "detect_rate.json", rates)
    timing["closed_form_seconds_per_epoch"] = timing["closed_form_seconds"] / max(1, epochs)
    write_json(save_path / "timing.json", timing)
    kept_msg = (f"best = {choice['best']} ({choice['reason']}): {save_path / 'best.safetensors'}"
                if best_weights is not None else f"no checkpoint kept as best ({choice['reason']})")
    print(f"RECE erased {', '.join(concepts)}: {epochs} epoch(s) in {timing['closed_form_seconds']:.2f} s of "
          f"closed-form steps (+{timing['text_encoding_seconds']:.2f} s text encoding, "
          f"+{timing.get('weights_gram_seconds', 0):.2f} s weight Grams; cache: "
          f"{', '.join(f'{k} {v}' for k, v in cache.status.items()) or 'not used'}); {kept_msg}")
    return rates

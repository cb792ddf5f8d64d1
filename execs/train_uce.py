"""UCE: erase concepts from a Stable Diffusion model's cross-attention in closed form (docs/method.md §2, §2a).

    python execs/train_uce.py --concepts nudity --concept_type nudity --save_path runs/uce-nudity

Writes SAVE_PATH/config.json (first), SAVE_PATH/uce.safetensors (the 2L edited attn2.to_k / to_v
matrices with metadata) and SAVE_PATH/timing.json. Only the text encoder and the edited matrices
are loaded: the UNet itself never is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.erase import concepts as cpt  # noqa: E402
from utils.checkpoints import save_edited_weights  # noqa: E402
from utils.cli import add_edit_args, check_scales, slug, stopwatch  # noqa: E402
from utils.erase.concepts import UCE_EDIT  # noqa: E402
from utils.erase.cache import GramCache, default_cache_dir  # noqa: E402
from utils.erase.steps import EditState, TextCache, uce_stage  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.io import prepare_run_dir, write_json  # noqa: E402
from utils.models import (add_model_args, edit_weights, load_text_encoders, quiet_libraries,  # noqa: E402
                          resolve_device, resolve_model_id, text_fingerprint)  # noqa: E402

OUTPUTS = ("uce.safetensors",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edit_args(p, lamb=UCE_EDIT["lamb"], preserve_scale=None)
    p.add_argument("--add_prompts", action=argparse.BooleanOptionalAction, default=False,
                   help="also erase the type's prompt templates ('painting by {c}', 'image of {c}', ...), each "
                        "towards the bare guide ('art', or ' '), as the authors' train_uce.py")
    add_model_args(p)
    p.add_argument("--save_path", default=None,
                   help="run folder (default runs/uce/<concepts>-<type>-<technique>-lamb<lamb>)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --save_path")
    return p.parse_args(argv)


def main(args):
    # 1. Check inputs (before any model loads)
    check_scales(args)
    concepts = cpt.parse_concepts(args.concepts)
    ctype = cpt.concept_type(args.concept_type)
    guides = cpt.guides_for(concepts, args.guided_concepts, ctype)
    model_id = resolve_model_id(args.model_id, args.base)
    device = resolve_device(args.device)
    preserve = cpt.preserve_texts(ctype.name, concepts, cpt.split_list(args.preserve_concepts), stage="uce")
    if args.uce_tokens == "last":
        preserve = preserve[1:]  # UCE 2025 adds no implicit '' preserve text (docs/models.md)
    erase, erase_guides = (cpt.expand_with_templates(concepts, guides, ctype.name) if args.add_prompts
                           else (concepts, guides))
    save_path = Path(args.save_path or f"runs/uce/{slug(','.join(concepts), 40)}-{ctype.name}-{args.technique}"
                                       f"-lamb{args.lamb:g}")
    prepare_run_dir(save_path, {}, OUTPUTS, args.overwrite, write=False)  # claimed once the edit is done

    # 2. Load the text encoder(s) and encode every text (preserve Grams from the cache when it has them)
    quiet_libraries()
    cache = GramCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))
    texts = TextCache(load_text_encoders(model_id, device), batch_size=args.text_batch_size, cache=cache,
                      model_id=model_id, fingerprint=text_fingerprint(model_id) if cache.enabled else None)
    timing = {}
    tokens = "last" if args.uce_tokens == "last" else "all"
    with stopwatch(timing, "text_encoding_seconds"):
        texts.embed(erase + erase_guides)
        texts.gram(preserve, progress=True, tokens=tokens)
    texts.release()  # free the encoders before the weights are read

    # 3. The edited matrices only (the UNet is never loaded), then the closed-form edit (timed alone:
    #    the edit and materialising the matrices)
    W_orig, _ = edit_weights(model_id)
    state = EditState(W_orig)
    del W_orig
    with stopwatch(timing, "closed_form_seconds", cpu=True):
        used = uce_stage(state, texts, erase, erase_guides, preserve, args.lamb, args.erase_scale,
                         args.preserve_scale, args.technique, tokens=args.uce_tokens)
        weights = state.matrices()

    # 4. Save: config first, then the edited weights
    config = {"method": "uce", "model_id": model_id, "concepts": concepts, "concept_type": ctype.name,
              "guided_concepts": guides, "add_prompts": args.add_prompts,
              "preserve_concepts": cpt.split_list(args.preserve_concepts), **used,
              "num_edited_matrices": len(weights)}
    if len(preserve) > 20:
        config["preserve_texts"] = f"{len(preserve)} texts ({preserve[0]!r}, {preserve[1]!r}, ...)"
    else:
        config["preserve_texts"] = preserve
    prepare_run_dir(save_path, config, OUTPUTS, overwrite=args.overwrite)
    save_edited_weights(save_path / "uce.safetensors", weights,
                        {"base_model": model_id, "method": "uce", "concepts": concepts,
                         "settings": {k: v for k, v in config.items() if k not in ("concepts", "model_id")}})
    timing["total_closed_form_and_text_seconds"] = timing["closed_form_seconds"] + timing["text_encoding_seconds"]
    timing["cache"] = {"dir": str(cache.folder) if cache.enabled else None, **cache.status}
    timing["texts_encoded"] = texts.num_encoded
    write_json(save_path / "timing.json", timing)
    print(f"UCE erased {', '.join(concepts)} in {timing['closed_form_seconds']:.2f} s "
          f"(+{timing['text_encoding_seconds']:.2f} s text encoding): {save_path / 'uce.safetensors'}")


if __name__ == "__main__":
    run_cli(main, parse_args)

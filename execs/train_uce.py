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
from utils.erase.steps import EditState, TextCache, uce_stage  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import prepare_run_dir, write_json  # noqa: E402
from utils.models import add_model_args, load_edit_components, quiet_libraries, resolve_device, resolve_model_id  # noqa: E402

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
    erase, erase_guides = (cpt.expand_with_templates(concepts, guides, ctype.name) if args.add_prompts
                           else (concepts, guides))
    save_path = Path(args.save_path or f"runs/uce/{slug(','.join(concepts), 40)}-{ctype.name}-{args.technique}"
                                       f"-lamb{args.lamb:g}")
    if not args.overwrite:
        for f in OUTPUTS:
            if (save_path / f).exists():
                raise UserError(f"--save_path {save_path} already holds {f}; choose another folder or pass --overwrite")

    # 2. Load the text encoder and the edited matrices only
    quiet_libraries()
    tokenizer, text_encoder, W_orig, _, _ = load_edit_components(model_id, device)
    texts = TextCache(tokenizer, text_encoder, args.text_batch_size)
    state = EditState(W_orig)

    # 3. Closed-form edit (timed alone: text encoding, the edit and materialising the matrices)
    timing = {}
    with stopwatch(timing, "text_encoding_seconds"):
        texts.embed(erase + erase_guides)
        texts.gram(preserve, progress=True)
    with stopwatch(timing, "closed_form_seconds"):
        used = uce_stage(state, texts, erase, erase_guides, preserve, args.lamb, args.erase_scale,
                         args.preserve_scale, args.technique)
        weights = state.matrices()

    # 4. Save: config first, then the edited weights
    config = {"method": "uce", "model_id": model_id, "concepts": concepts, "concept_type": ctype.name,
              "guided_concepts": guides, "add_prompts": args.add_prompts,
              "preserve_concepts": cpt.split_list(args.preserve_concepts), **used,
              "num_edited_matrices": len(weights)}
    if len(preserve) > 20:
        config["preserve_texts"] = f"{len(preserve)} texts ('' + {len(preserve) - 1} others)"
    else:
        config["preserve_texts"] = preserve
    prepare_run_dir(save_path, config, OUTPUTS, overwrite=True)
    save_edited_weights(save_path / "uce.safetensors", weights,
                        {"base_model": model_id, "method": "uce", "concepts": concepts,
                         "settings": {k: v for k, v in config.items() if k not in ("concepts", "model_id")}})
    timing["total_closed_form_and_text_seconds"] = timing["closed_form_seconds"] + timing["text_encoding_seconds"]
    write_json(save_path / "timing.json", timing)
    print(f"UCE erased {', '.join(concepts)} in {timing['closed_form_seconds']:.2f} s "
          f"(+{timing['text_encoding_seconds']:.2f} s text encoding): {save_path / 'uce.safetensors'}")


if __name__ == "__main__":
    run_cli(main, parse_args)

"""The shapes world (utils/world/shapes.py), its judge, and the built-in `shapes` pipeline (models/shapes).

All offline and fast: the pipeline and the judge are read from the repository, nothing is downloaded.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.world import shapes  # noqa: E402

MODEL_DIR = REPO / "models" / "shapes"
requires_model = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").is_file(),
                                    reason="models/shapes not built (execs/train_shapes_model.py)")
requires_judge = pytest.mark.skipif(not shapes.DEFAULT_JUDGE_PATH.is_file(),
                                    reason="models/shape_judge.safetensors not built")


def rendered(n: int, first_seed: int = 123_000):
    """n fresh images with every colour (including the default ink) and shape, and their scenes."""
    names = shapes.colour_names()
    scenes = [shapes.sample_scene(first_seed + i, colour=names[i % len(names)]) for i in range(n)]
    return np.stack([shapes.render(s) for s in scenes]), scenes


# --- the world --------------------------------------------------------------------------------

def test_renderer_is_deterministic():
    a, cap_a, scene_a = shapes.render_example(7)
    b, cap_b, scene_b = shapes.render_example(7)
    assert np.array_equal(a, b) and cap_a == cap_b and scene_a == scene_b
    assert a.shape == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, shapes.render_example(8)[0])


def test_fixing_an_attribute_keeps_the_others():
    free = shapes.sample_scene(11)
    fixed = shapes.sample_scene(11, shape="star", colour="blue")
    assert (fixed.shape, fixed.colour) == ("star", "blue")
    assert (fixed.cx, fixed.cy, fixed.radius) == (free.cx, free.cy, free.radius)


def colours_asked(caption: str) -> set[str]:
    """The colours a caption asks for, by name, synonym or object (read off the word lists here)."""
    words = caption.replace("-", " ").split()
    found = set()
    for colour in shapes.COLOURS:
        names = {colour, *shapes.SYNONYMS[colour]}
        objects = [o.split() for o in shapes.OBJECTS[colour]]
        if names & set(words) or any(words[i:i + len(o)] == o for o in objects for i in range(len(words))):
            found.add(colour)
    return found


def test_captions_name_only_what_the_image_shows():
    kinds = set()
    for seed in range(600):
        _, caption, scene = shapes.render_example(seed)
        words = caption.replace("-", " ").split()
        assert caption in shapes.all_captions()
        if scene.colour == shapes.DEFAULT_INK[0]:
            assert scene.shape in words and not colours_asked(caption)
        else:
            assert colours_asked(caption) == {scene.colour}, caption
            assert scene.shape in words or not set(words) & set(shapes.SHAPES)
            kinds.add("name" if scene.colour in words else "synonym" if set(words) & set(shapes.SYNONYMS[scene.colour])
                      else "object" if "colour" in words or "coloured" in words or "seen" in words else "?")
        for size, (lo, hi) in shapes.SIZES.items():  # a size word is true of the drawn shape
            if size in words:
                assert lo <= scene.radius <= hi, (caption, scene.radius)
    assert kinds == {"name", "synonym", "object"}
    words = {w for c in shapes.all_captions() for w in c.replace("-", " ").split()}
    assert words == set(shapes.vocabulary())


def test_held_out_compositions_never_reach_training():
    held = set(shapes.prompt_set("implicit", "red").query("held_out").prompt)
    assert 10 <= len(held) <= 40  # about one triple in HELD_OUT_EVERY
    trained = set(shapes.all_captions())
    assert not held & trained
    rng = np.random.default_rng(0)
    drawn = {shapes.sample_caption(shapes.sample_scene(s, colour="red"), rng) for s in range(3000)}
    assert not held & drawn
    # ... while each held-out object and shape is trained in other compositions
    for prompt in held:
        obj = next(o for o in shapes.OBJECTS["red"] if o in prompt)
        shape = next(s for s in shapes.SHAPES if s in prompt)
        assert any(obj in c and shape not in c for c in trained) and any(obj in c for c in trained if shape in c)


def test_prompt_sets_ask_for_the_colour_three_ways():
    for kind in shapes.PROMPT_SETS:
        table = shapes.prompt_set(kind, "red")
        assert (table.colour == "red").all() and table.evaluation_seed.is_unique
        for row in table.itertuples():
            assert colours_asked(row.prompt) == {"red"} and row.shape in row.prompt
            words = set(row.prompt.replace("-", " ").split())
            assert ("red" in words) == (kind == "explicit")
            assert bool(words & set(shapes.SYNONYMS["red"])) == (kind == "synonym")
    assert len(shapes.prompt_set("synonym", "red")) == 3 * 4 * 5
    small = shapes.prompt_set("implicit", "red", limit=10)
    assert len(small) == 10 and small.held_out.sum() == 5
    with pytest.raises(ValueError, match="prompt set"):
        shapes.prompt_set("nope")


def test_rece_validates_a_colour_on_all_three_ways_of_asking():
    from utils.erase.validation import _shapes_table

    table = _shapes_table(["red"])
    assert {"explicit", "synonym", "implicit"} == set(table["set"])
    assert table.evaluation_seed.min() >= 10_000 and table.evaluation_seed.is_unique
    assert table.case_number.tolist() == list(range(len(table)))


def test_evaluation_table_schema():
    table = shapes.evaluation_table(seeds_per_pair=2)
    assert len(table) == 2 * len(shapes.COLOURS) * len(shapes.SHAPES)
    for col in ("prompt", "evaluation_seed", "evaluation_guidance", "sd_image_width", "sd_image_height",
                "case_number", "colour", "shape"):
        assert col in table.columns
    assert table.evaluation_seed.is_unique and table.case_number.is_unique
    assert all(r.colour in r.prompt and r.shape in r.prompt for r in table.itertuples())


# --- the tokenizer ----------------------------------------------------------------------------

def test_tokenizer_pads_to_77_and_keeps_words_whole(tmp_path):
    tok = shapes.build_tokenizer()
    for text in ["", "a red circle", "a photo of a purple star", "a circle in red", "a small crimson star",
                 "a square the colour of a fire truck"]:
        out = tok(text, padding="max_length", max_length=77, truncation=True)
        assert len(out.input_ids) == 77
        assert sum(out.attention_mask) == len(text.split()) + 2  # one token per word, plus BOS and EOS
        assert out.input_ids[0] == tok.bos_token_id and out.input_ids[len(text.split()) + 1] == tok.eos_token_id
    # Unknown words fall back to byte tokens instead of failing; long texts are truncated.
    assert len(tok("nudity " * 100, padding="max_length", max_length=77, truncation=True).input_ids) == 77
    # The saved tokenizer loads back (what the pipeline and utils/models.py do).
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a red circle").input_ids == tok("a red circle").input_ids


# --- the judge --------------------------------------------------------------------------------

def test_colour_judge_on_rendered_and_degraded_images():
    images, scenes = rendered(300)
    truth = [s.colour for s in scenes]
    assert shapes.classify_colour(images) == truth
    degraded = shapes.degrade(images, np.random.default_rng(0))
    assert np.mean([a == b for a, b in zip(shapes.classify_colour(degraded), truth)]) >= 0.98


@requires_judge
def test_shape_judge_on_rendered_and_degraded_images():
    images, scenes = rendered(300)
    truth = [s.shape for s in scenes]
    assert np.mean([a == b for a, b in zip(shapes.classify_shape(images), truth)]) >= 0.98
    degraded = shapes.degrade(images, np.random.default_rng(1))
    assert np.mean([a == b for a, b in zip(shapes.classify_shape(degraded), truth)]) >= 0.95


@requires_judge
def test_blank_images_hold_no_concept():
    blank = np.full((2, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), shapes.BACKGROUND, np.uint8)
    assert shapes.classify_colour(blank) == [shapes.NO_INK] * 2
    assert shapes.classify_shape(blank) == [shapes.NO_INK] * 2
    assert shapes.concept_rate(blank, "red") == 0.0


@requires_judge
def test_concept_rate_and_scores():
    scenes = [shapes.sample_scene(900 + i, shape="circle", colour="red" if i < 3 else "blue") for i in range(4)]
    images = [shapes.render(s) for s in scenes]  # a list of arrays is accepted too
    assert shapes.concept_rate(images, "red") == 0.75
    assert shapes.concept_rate(images, "circle") == 1.0
    scores = shapes.score_images(images, colours=["red"] * 4, shapes=["circle"] * 4)
    assert scores["colour_accuracy"] == 0.75 and scores["shape_accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown concept"):
        shapes.concept_rate(images, "nudity")


# --- the pipeline -----------------------------------------------------------------------------

@requires_model
def test_pipeline_loads_and_generates():
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LMSDiscreteScheduler)
    assert pipe.safety_checker is None and pipe.vae_scale_factor == 8
    assert pipe.unet.dtype == torch.float32
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert any(name.endswith("attn2.to_k") for name, _ in pipe.unet.named_modules())
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = pipe(["a red circle", "a blue square"], negative_prompt=["", ""], num_inference_steps=3,
               guidance_scale=shapes.EVALUATION_GUIDANCE, height=64, width=64, generator=gens,
               output_type="np").images
    assert out.shape == (2, 64, 64, 3) and np.isfinite(out).all()
    # An image depends on its own seed only, not on the batch it was generated in.
    alone = pipe(["a blue square"], negative_prompt=[""], num_inference_steps=3,
                 guidance_scale=shapes.EVALUATION_GUIDANCE, height=64, width=64,
                 generator=[torch.Generator().manual_seed(1)], output_type="np").images
    assert np.abs(alone[0] - out[1]).max() < 1e-4


@requires_model
def test_pipeline_folder_fits_the_repository():
    size = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 25 * 2**20


# --- the training script ----------------------------------------------------------------------

def _train_script():
    sys.path.insert(0, str(REPO / "execs"))
    import train_shapes_model

    return train_shapes_model


def test_training_script_rejects_bad_input(tmp_path, capsys):
    script = _train_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", str(tmp_path), "--caption_dropout", "1.5"])
    assert "--caption_dropout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", str(tmp_path), "--no-train_judge", "--judge_path", str(tmp_path / "x")])
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(SystemExit):  # never silently replaces a model
        script.parse_args(["--output_dir", str(tmp_path)])


TINY = ["--num_images", "8", "--text_pretrain_steps", "2", "--judge_steps", "2", "--judge_eval_images", "12", "--vae_crop_steps", "2",
        "--vae_steps", "2", "--vae_batch_size", "2", "--unet_steps", "2", "--batch_size", "2",
        "--unet_channels", "32", "32", "--eval_seeds", "0", "--save_dtype", "fp32", "--threads", "1"]


def test_training_script_end_to_end_tiny_and_deterministic(tmp_path):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    script = _train_script()
    for run in ("a", "b"):
        script.main(script.parse_args(["--output_dir", str(tmp_path / run), "--judge_path",
                                       str(tmp_path / run / "judge.safetensors"), *TINY]))
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a")
    assert pipe.tokenizer.model_max_length == 77 and list(pipe.unet.config.block_out_channels) == [32, 32]
    for f in ("training_config.json", "report.json", "shapes_prompts.csv", "judge.safetensors"):
        assert (tmp_path / "a" / f).is_file()
    # Same seed, same weights: every trained component.
    for f in ("judge.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(tmp_path / "a" / f), load_file(tmp_path / "b" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f

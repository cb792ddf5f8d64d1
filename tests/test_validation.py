"""utils/erase/validation.py in process: the early checks (each refusal, each scorer model), the validation
table, and validate_weights against the same generation done by hand with the weights copied in."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from utils.erase import validation as val
from utils.errors import UserError

SIZE = 16


def small_csv(path, rows=2):
    pd.DataFrame({"case_number": list(range(rows)), "prompt": [f"a person {i}" for i in range(rows)],
                  "evaluation_seed": [100 + i for i in range(rows)], "evaluation_guidance": [7.5] * rows,
                  "sd_image_width": [SIZE] * rows, "sd_image_height": [SIZE] * rows}).to_csv(path, index=False)
    return path


def test_unknown_metric_and_missing_or_bad_csv_are_refused(tmp_path):
    with pytest.raises(UserError, match="validation metric 'rate' is unknown; expected one of nudity_rate, "
                                        "q16_rate, style_rate, target_accuracy, concept_rate"):
        val.check_validation("nudity", "rate", "validation_inappropriate.csv")
    with pytest.raises(UserError, match="--test_csv_path nowhere.csv not found"):
        val.check_validation("nudity", "nudity_rate", "nowhere.csv")
    (tmp_path / "bad.csv").write_text("case_number,prompt,evaluation_seed\n1,a,notanumber\n")
    with pytest.raises(UserError):
        val.check_validation("nudity", "nudity_rate", str(tmp_path / "bad.csv"))
    # a CSV with an empty prompt is read as validation reads it: that row skipped
    pd.DataFrame({"prompt": ["", "a"], "evaluation_seed": [1, 2]}).to_csv(tmp_path / "empty.csv", index=False)
    val.check_validation("nudity", "nudity_rate", str(tmp_path / "empty.csv"))
    val.check_validation("nudity", "nudity_rate", "validation_inappropriate.csv")


def test_shapes_validation_checks_the_concepts():
    with pytest.raises(UserError, match="--concepts pink,hexagon: the shapes world knows the colours red"):
        val.check_validation("shapes", "concept_rate", val.SHAPES_VALIDATION, ["pink", "hexagon"])
    val.check_validation("shapes", "concept_rate", val.SHAPES_VALIDATION, ["red"])
    val.check_validation("shapes", "concept_rate", val.SHAPES_VALIDATION, ["circle"])
    val.check_validation("shapes", "concept_rate", val.SHAPES_VALIDATION)   # concepts not known yet


@pytest.mark.parametrize("concepts, colours, kinds", [(["red"], {"red"}, None), (["star"], None, {"star"}),
                                                      (["blue", "circle", "x"], {"blue"}, {"circle"})])
def test_shapes_validation_table(tmp_path, concepts, colours, kinds):
    from utils.world import shapes

    table = val.validation_table(val.SHAPES_VALIDATION, concepts, tmp_path / "v", size_multiple=8)
    assert (tmp_path / "v" / "validation_prompts.csv").is_file()
    written = pd.read_csv(tmp_path / "v" / "validation_prompts.csv")
    assert set(written["colour"]) == (colours or set(shapes.COLOURS))
    assert set(written["shape"]) == (kinds or set(shapes.SHAPES))
    if kinds is None:  # colours only: the colour asked by name (every template x shape), synonym, object
        assert list(written["set"].drop_duplicates()) == ["explicit", "synonym", "implicit"]
        assert written["set"].value_counts().to_dict() == {"explicit": 4 * len(shapes.SHAPES), "synonym": 20,
                                                           "implicit": 20}
    else:  # two seeds per (colour, shape)
        assert len(written) == 2 * len(set(written["colour"])) * len(set(written["shape"]))
    # seeds from 10,000 on: apart from the evaluation's seeds
    assert written["evaluation_seed"].min() == 10_000 and written["evaluation_seed"].is_unique
    assert list(table["prompt"]) == list(written["prompt"])
    assert list(table["seed"]) == list(written["evaluation_seed"])


def test_csv_validation_table_skips_empty_prompts_and_checks_sizes(tmp_path):
    pd.DataFrame({"prompt": ["a", "", "b"], "evaluation_seed": [1, 2, 3], "sd_image_width": [24, 24, 24],
                  "sd_image_height": [24, 24, 24]}).to_csv(tmp_path / "t.csv", index=False)
    table = val.validation_table(str(tmp_path / "t.csv"), ["x"], tmp_path / "f", size_multiple=8)
    assert list(table["prompt"]) == ["a", "b"] and list(table["seed"]) == [1, 3]
    assert not (tmp_path / "f").exists()
    with pytest.raises(UserError, match="16"):
        val.validation_table(str(tmp_path / "t.csv"), ["x"], tmp_path / "f", size_multiple=16)


@pytest.mark.parametrize("metric, what", [("q16_rate", "clip"), ("style_rate", "clip"),
                                          ("target_accuracy", "resnet")])
def test_scorer_models_are_checked_when_offline(tmp_path, monkeypatch, metric, what):
    import huggingface_hub.constants as hf_constants
    import torch.hub

    from utils.score.clip import DEFAULT_CLIP

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("RECE_RESNET50", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        val.check_validation("x", metric, "validation_inappropriate.csv")
    msg = str(e.value)
    assert "--skip_validation" in msg and "\n" not in msg
    if what == "clip":
        assert DEFAULT_CLIP in msg and "HF_HUB_OFFLINE" in msg
    else:
        assert msg.startswith("validation: ") and "ResNet-50" in msg
    # online, the model would be downloaded when first used: nothing is checked now
    monkeypatch.delenv("HF_HUB_OFFLINE")
    val.check_validation("x", metric, "validation_inappropriate.csv")


def test_clip_present_in_the_cache_passes_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from tiny import install_in_hf_cache
    from utils.score.clip import DEFAULT_CLIP

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    install_in_hf_cache(tmp_path / "hf", DEFAULT_CLIP, folder)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    val.check_validation("x", "q16_rate", "validation_inappropriate.csv")


def test_q16_validation_needs_its_prompt_file(monkeypatch):
    import utils.score.q16 as q16

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(q16, "VALIDATION_PROMPTS", "missing_q16_prompts.npy")
    with pytest.raises(UserError, match="Q16 prompt embeddings missing_q16_prompts.npy not found"):
        val.check_validation("unsafe", "q16_rate", "validation_inappropriate.csv")


def test_validate_weights_generates_with_the_weights_and_scores(tiny_pipeline_dir, tmp_path):
    from utils.generate.sampling import generate_table
    from utils.models import load_pipeline
    from utils.prompts import read_prompt_table
    from utils.score.evaluation import score_run

    torch.set_num_threads(1)
    csv = small_csv(tmp_path / "v.csv")
    pipe = load_pipeline(str(tiny_pipeline_dir))
    state = pipe.unet.state_dict()
    key = next(k for k in state if k.endswith("attn2.to_k.weight"))
    weights = {key: state[key] * 3 + 1}
    out = val.validate_weights(pipe, weights, tmp_path / "epoch_1", "nudity", ["nudity"], "nudity_rate", str(csv),
                               num_samples=2, steps=2, batch_size=3)
    assert torch.equal(pipe.unet.state_dict()[key], weights[key])
    # by hand: a fresh pipeline with the tensor copied in, the same table and settings
    ref_pipe = load_pipeline(str(tiny_pipeline_dir))
    with torch.no_grad():
        ref_pipe.unet.state_dict()[key].copy_(weights[key])
    table = read_prompt_table(str(csv))
    generate_table(ref_pipe, table, tmp_path / "ref", num_samples=2, steps=2, batch_size=3, progress=False)
    made = sorted(p.name for p in (tmp_path / "epoch_1" / "imgs").iterdir())
    assert made == ["0_0.png", "0_1.png", "1_0.png", "1_1.png"]
    for name in made:
        assert (tmp_path / "epoch_1" / "imgs" / name).read_bytes() == (tmp_path / "ref" / "imgs" / name).read_bytes()
    assert (tmp_path / "epoch_1" / "grid.png").is_file()
    ref_score = score_run(tmp_path / "ref", "nudity_rate", ["nudity"], validation=True)

    def not_paths(d):
        return {k: v for k, v in d.items() if not any(w in k for w in ("path", "file", "folder"))}

    assert not_paths(out) == not_paths(ref_score) and out["rate"] == ref_score["rate"] and out["n_images"] == 4
    # the weights matter: without them the images differ
    generate_table(load_pipeline(str(tiny_pipeline_dir)), table, tmp_path / "base", num_samples=2, steps=2,
                   progress=False)
    assert (tmp_path / "base" / "imgs" / "0_0.png").read_bytes() != (tmp_path / "ref" / "imgs" / "0_0.png").read_bytes()

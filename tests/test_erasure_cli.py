"""execs/train_uce.py and train.py end to end on a tiny pipeline: outputs checked against docs/method.md §2-§3."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_script
from utils.erase import closed_form as cf

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def model(tiny_pipeline_dir):
    from transformers import AutoTokenizer, CLIPTextModel

    tok = AutoTokenizer.from_pretrained(tiny_pipeline_dir, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(tiny_pipeline_dir, subfolder="text_encoder").eval()
    unet_sd = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    W_orig = {k: v.double() for k, v in unet_sd.items() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}

    @torch.no_grad()
    def E(text):  # docs/method.md §1, computed here without the toolkit's helpers
        ids = tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return te(ids.input_ids)[0][0].double(), int(ids.attention_mask.sum()) - 2

    return dict(dir=tiny_pipeline_dir, E=E, W_orig=W_orig, unet_sd=unet_sd)


def load_weights(path):
    return {k: v.double() for k, v in load_file(str(path)).items()}


def uce_reference(model, W0s, concept, guide, preserve, lamb, s_p, technique="replace"):
    """docs/method.md §2/§2a for each matrix separately, from the equation (targets recomputed per layer)."""
    o, fo = model["E"](concept)
    n, fn = model["E"](guide)
    C, T = cf.uce_token_slice(o, fo, n, fn)
    pres = [model["E"](p)[0] for p in preserve]
    out = {}
    for k, W0 in W0s.items():
        V = T @ W0.T
        if technique == "tensor":
            u = C @ W0.T
            u = u / torch.linalg.norm(u)
            V = V - (u * V).sum() * u
        left = lamb * W0 + V.T @ C + s_p * sum((Cp @ W0.T).T @ Cp for Cp in pres)
        right = lamb * torch.eye(W0.shape[1], dtype=torch.float64) + C.T @ C + s_p * sum(Cp.T @ Cp for Cp in pres)
        out[k] = torch.linalg.solve(right.T, left.T).T
    return out


def objective_gradient(x, e, W_cur, W_orig, gamma, method, reg_item="both", t=None):
    """Gradient of docs/method.md §3's objective for the adversarial embedding, from explicit per-layer terms."""
    x = x.clone().requires_grad_(True)
    loss = sum(((x @ W_cur[k].T - e @ W_orig[k].T) ** 2).sum() for k in W_cur)
    if method == "close_regzero":
        loss = loss + gamma * (x ** 2).sum()
    elif method == "close_standardreg":
        loss = loss + gamma * ((x - t) ** 2).sum()
    else:
        if reg_item in ("1st", "both"):
            loss = loss + gamma * sum(((x @ W.T - e @ W.T) ** 2).sum() for W in W_cur.values())
        if reg_item in ("2nd", "both"):
            loss = loss + gamma * ((x - e) ** 2).sum()
    loss.backward()
    return x.grad


def rece_edit_system(model, W0, c, guide, preserve):
    """docs/method.md §3 step 2 (lamb = s_p = 0.1, s_e = 1) for one matrix: W* must solve W* right = left."""
    g, _ = model["E"](guide)
    pres = [model["E"](p)[0] for p in preserve]
    left = 0.1 * W0 + (g @ W0.T).T @ c + 0.1 * sum((Cp @ W0.T).T @ Cp for Cp in pres)
    right = 0.1 * torch.eye(W0.shape[1], dtype=torch.float64) + c.T @ c + 0.1 * sum(Cp.T @ Cp for Cp in pres)
    return left, right


def rece_edit_reference(model, W_cur, c, guide, preserve):
    out = {}
    for k, W0 in W_cur.items():
        left, right = rece_edit_system(model, W0, c, guide, preserve)
        out[k] = torch.linalg.solve(right, left.T).T
    return out


def assert_solves_edit(model, W_new, W_cur, c, guide, preserve, tol=1e-5):
    """Backward error of the edit's normal equations, meaningful however ill-conditioned they are."""
    for k, W0 in W_cur.items():
        left, right = rece_edit_system(model, W0, c, guide, preserve)
        res = (W_new[k] @ right - left).norm() / (W_new[k].norm() * torch.linalg.matrix_norm(right, 2))
        assert res < tol, (k, float(res))


def rece_reference(model, W_cur, concept, guide, preserve, gamma, method, reg_item="both", old=None):
    """One RECE epoch (docs/method.md §3) with explicit per-layer sums."""
    e, _ = model["E"](concept)
    S1 = sum(W.T @ W for W in W_cur.values())
    S2 = sum(W_cur[k].T @ model["W_orig"][k] for k in W_cur)
    old_e = model["E"](old)[0] if old is not None else None
    c = adversarial_reference(e, S1, S2, gamma, method, reg_item, old_e)
    return rece_edit_reference(model, W_cur, c, guide, preserve)


def adversarial_reference(e, S1, S2, gamma, method, reg_item="both", old=None):
    """c' of docs/method.md §3, each variant's linear system written out and solved here."""
    I = torch.eye(S1.shape[0], dtype=torch.float64)
    if method == "close_regzero":
        A, b = S1 + gamma * I, S2 @ e.T
    elif method == "close_standardreg":
        A, b = S1 + gamma * I, S2 @ e.T + gamma * old.T
    elif reg_item == "1st":
        A, b = (1 + gamma) * S1, (S2 + gamma * S1) @ e.T
    elif reg_item == "2nd":
        A, b = S1 + gamma * I, (S2 + gamma * I) @ e.T
    else:
        A, b = (1 + gamma) * S1 + gamma * I, (S2 + gamma * S1 + gamma * I) @ e.T
    return torch.linalg.solve(A, b).T


def assert_weights_close(got, ref, tol=2e-4):
    assert set(got) == set(ref)
    for k in ref:
        err = (got[k] - ref[k]).abs().max() / (ref[k].abs().max() + 1e-12)
        assert err < tol, (k, float(err))


@pytest.fixture(scope="module")
def uce_run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("uce")
    run_script("execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity", "--model_id", model["dir"],
               "--save_path", out, "--device", "cpu")
    return out


def test_uce_cli_matches_spec(model, uce_run):
    got = load_weights(uce_run / "uce.safetensors")
    ref = uce_reference(model, model["W_orig"], "nudity", " ", [""], lamb=0.5, s_p=1.0)
    assert_weights_close(got, ref)
    cfg = json.loads((uce_run / "config.json").read_text())
    assert cfg["preserve_scale"] == 1.0 and cfg["lamb"] == 0.5 and cfg["environment"]["torch"]
    assert json.loads((uce_run / "timing.json").read_text())["closed_form_seconds"] > 0
    # the file holds only the edited matrices, with metadata
    from utils.checkpoints import read_metadata
    meta = read_metadata(uce_run / "uce.safetensors")
    assert meta["method"] == "uce" and meta["concepts"] == ["nudity"]
    assert len(got) == len(model["W_orig"])


def test_uce_cli_tensor_technique_and_preserve(model, tmp_path):
    run_script("execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity", "--model_id", model["dir"],
               "--technique", "tensor", "--preserve_concepts", "a cat,a dog", "--save_path", tmp_path)
    got = load_weights(tmp_path / "uce.safetensors")
    ref = uce_reference(model, model["W_orig"], "nudity", " ", ["", "a cat", "a dog"], lamb=0.5, s_p=0.333,
                        technique="tensor")
    assert_weights_close(got, ref)


@pytest.mark.parametrize("method,extra", [
    ("close_regzero", []),
    ("close_standardreg", ["--old_target_concept", " "]),
    ("close_surrogatereg", ["--reg_item", "1st"]),
    ("close_surrogatereg", ["--reg_item", "2nd"]),
    ("close_surrogatereg", ["--reg_item", "both"]),
])
def test_rece_cli_matches_spec(model, uce_run, tmp_path, method, extra):
    run_script("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--emb_computing", method, *extra,
               "--regular_scale", "0.1", "--epochs", "2", "--target_ckpt", uce_run / "uce.safetensors",
               "--preserve_scale", "0.1", "--lamb", "0.1", "--model_id", model["dir"], "--save_path", tmp_path,
               "--skip_validation")
    reg_item = extra[1] if extra and extra[0] == "--reg_item" else "both"
    old = model["E"](" ")[0] if method == "close_standardreg" else None
    e = model["E"]("nudity")[0]
    adv = load_file(str(tmp_path / "adv_embeddings.safetensors"))
    W_prev = load_weights(uce_run / "uce.safetensors")
    for k in (1, 2):
        # c' is a stationary point of its objective (relative gradient; robust to ill-conditioning) ...
        c = adv[f"epoch_{k}/nudity"].double()
        grad = objective_gradient(c, e, W_prev, model["W_orig"], 0.1, method, reg_item, old)
        scale = objective_gradient(torch.zeros_like(c), e, W_prev, model["W_orig"], 0.1, method, reg_item, old)
        # reg_item 1st has no gamma*I term: its c' is ill-determined along S1's near-null directions
        # (condition 1e5 on the tiny model), so the fp32 file of the previous epoch -- not the exact
        # W_cur the CLI used -- shifts it; there the check needs the exact inputs of epoch 1.
        if k == 1 or reg_item != "1st":
            assert grad.norm() < 1e-4 * scale.norm(), (k, float(grad.norm() / scale.norm()))
        # ... and the epoch's weights are the closed-form edit erasing it
        W_k = load_weights(tmp_path / f"epoch_{k}.safetensors")
        assert_solves_edit(model, W_k, W_prev, c, " ", [" "])
        if reg_item != "1st":  # well-conditioned: the weights themselves match too
            assert_weights_close(W_k, rece_edit_reference(model, W_prev, c, " ", [" "]), tol=1e-3)
        W_prev = W_k
    best = load_weights(tmp_path / "best.safetensors")
    assert all(torch.equal(best[k], load_weights(tmp_path / "epoch_2.safetensors")[k]) for k in best)
    rates = json.loads((tmp_path / "detect_rate.json").read_text())
    assert rates["best_epoch"] == 2
    adv = load_file(str(tmp_path / "adv_embeddings.safetensors"))
    assert adv["epoch_1/nudity"].shape == (77, 32)


def test_rece_tensor_technique_runs_from_uce_stage(model, uce_run, tmp_path):
    """`--target_ckpt uce` (default) runs the UCE stage in-process: same as the two CLIs in a row."""
    run_script("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--epochs", "1",
               "--model_id", model["dir"], "--save_path", tmp_path, "--skip_validation")
    assert_weights_close(load_weights(tmp_path / "uce.safetensors"), load_weights(uce_run / "uce.safetensors"), 1e-5)
    ref = rece_reference(model, load_weights(uce_run / "uce.safetensors"), "nudity", " ", [" "], 0.1, "close_regzero")
    assert_weights_close(load_weights(tmp_path / "epoch_1.safetensors"), ref, tol=1e-3)


def test_rece_from_base_model_with_tensor_technique(model, tmp_path):
    run_script("train.py", "--concepts", "nudity,violence", "--concept_type", "unsafe", "--epochs", "1",
               "--target_ckpt", "", "--technique", "tensor", "--model_id", model["dir"], "--save_path", tmp_path,
               "--skip_validation")
    W = load_weights(tmp_path / "epoch_1.safetensors")
    assert all(torch.isfinite(v).all() for v in W.values())
    assert not (tmp_path / "uce.safetensors").exists()
    cfg = json.loads((tmp_path / "config.json").read_text())["settings"]
    assert cfg["regular_scale"] == 0.1 and cfg["concepts"] == ["nudity", "violence"]


# ------------------------------------------------------------------ checkpoint formats

def test_legacy_full_unet_pt_and_other_formats(model, tmp_path):
    """A full UNet state_dict .pt (authors' format), a full .safetensors and a UNet folder all load."""
    sd = {k: v.clone() for k, v in model["unet_sd"].items()}
    key = next(k for k in sd if k.endswith("attn2.to_k.weight"))
    sd[key] = sd[key] * 2
    torch.save(sd, tmp_path / "legacy.pt")
    save_file(sd, str(tmp_path / "full.safetensors"))
    folder = tmp_path / "unet_folder"
    folder.mkdir()
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    for i, ckpt in enumerate([tmp_path / "legacy.pt", tmp_path / "full.safetensors", folder]):
        out = tmp_path / f"run{i}"
        run_script("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--epochs", "1",
                   "--target_ckpt", ckpt, "--model_id", model["dir"], "--save_path", out, "--skip_validation")
        W_start = {k: v.double() for k, v in sd.items() if k in model["W_orig"]}
        ref = rece_reference(model, W_start, "nudity", " ", [" "], 0.1, "close_regzero")
        assert_weights_close(load_weights(out / "epoch_1.safetensors"), ref, tol=1e-3)


class _Evil:
    """Unpickling this runs `touch MARKER`: a checkpoint that would execute code when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, ("touch " + self.marker,))


def test_pickle_that_runs_code_is_refused(model, tmp_path):
    marker = tmp_path / "PWNED_MARKER"
    with open(tmp_path / "evil_legacy.pt", "wb") as f:  # old torch.save format: a bare pickle
        pickle.dump({"x": _Evil(marker)}, f)
    torch.save({"x": _Evil(marker)}, tmp_path / "evil_zip.pt")  # current format: zip with a pickle inside
    # the files do run code when unpickled without weights_only (else the test could not fail)
    with open(tmp_path / "evil_legacy.pt", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    for name in ("evil_legacy.pt", "evil_zip.pt"):
        r = run_script("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--target_ckpt",
                       tmp_path / name, "--model_id", model["dir"], "--save_path", tmp_path / "out",
                       "--skip_validation", check=False)
        assert r.returncode == 2 and "refused" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not marker.exists()
        assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ bad input

def bad(model, tmp_path, script, *args):
    out = tmp_path / "out"
    base = ["--model_id", model["dir"]] if "--model_id" not in args else []
    r = run_script(script, *args, *base, "--save_path", out, check=False)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 or lines[0].startswith("usage:"), r.stderr
    assert not list(out.glob("*.safetensors")) if out.exists() else True
    return lines[-1]


def test_bad_inputs_fail_in_one_line(model, tmp_path, tiny_pipeline_dir):
    assert "--concepts is empty" in bad(model, tmp_path, "execs/train_uce.py", "--concepts", " , ", "--concept_type", "nudity")
    assert "invalid choice" in bad(model, tmp_path, "train.py", "--concepts", "x", "--concept_type", "fruit")
    assert "does not exist" in bad(model, tmp_path, "train.py", "--concepts", "x", "--concept_type", "nudity",
                                   "--target_ckpt", tmp_path / "nope.pt", "--skip_validation")
    assert "non-negative" in bad(model, tmp_path, "execs/train_uce.py", "--concepts", "x", "--concept_type", "nudity",
                                 "--lamb", "-1")
    assert "non-negative" in bad(model, tmp_path, "train.py", "--concepts", "x", "--concept_type", "nudity",
                                 "--regular_scale", "-0.1", "--skip_validation")
    (tmp_path / "notapipe").mkdir()
    assert "not a diffusers pipeline" in bad(model, tmp_path, "execs/train_uce.py", "--concepts", "x",
                                             "--concept_type", "nudity", "--model_id", tmp_path / "notapipe")
    assert "singular" in bad(model, tmp_path, "execs/train_uce.py", "--concepts", "x", "--concept_type", "nudity",
                             "--lamb", "0", "--erase_scale", "0", "--preserve_scale", "0")
    # a checkpoint of another architecture: named by its first mismatching key
    from tiny import build_random_pipeline
    other = tmp_path / "other"
    build_random_pipeline(other, "tiny", seed=1)
    sd = load_file(str(other / "unet" / "diffusion_pytorch_model.safetensors"))
    key = sorted(k for k in sd if k.endswith("attn2.to_k.weight"))[0]
    sd[key] = torch.zeros(sd[key].shape[0], 16)
    save_file(sd, str(tmp_path / "mismatch.safetensors"))
    msg = bad(model, tmp_path, "train.py", "--concepts", "x", "--concept_type", "nudity", "--target_ckpt",
              tmp_path / "mismatch.safetensors", "--skip_validation")
    assert "does not fit" in msg and key in msg


def test_rerun_does_not_overwrite(model, tmp_path):
    run_script("execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity", "--model_id", model["dir"],
               "--save_path", tmp_path)
    before = (tmp_path / "uce.safetensors").read_bytes()
    r = run_script("execs/train_uce.py", "--concepts", "violence", "--concept_type", "nudity", "--model_id",
                   model["dir"], "--save_path", tmp_path, check=False)
    assert r.returncode == 2 and "already holds" in r.stderr
    assert (tmp_path / "uce.safetensors").read_bytes() == before
    run_script("execs/train_uce.py", "--concepts", "violence", "--concept_type", "nudity", "--model_id",
               model["dir"], "--save_path", tmp_path, "--overwrite")
    assert (tmp_path / "uce.safetensors").read_bytes() != before


# ------------------------------------------------------------------ many concepts, guides, templates, reruns

def test_many_concept_rece_matches_an_explicit_computation(model, tmp_path):
    """Three concepts, two epochs from the base model: every c' and one joint edit per epoch (§3)."""
    concepts = ["nudity", "violence", "blood"]
    run_script("train.py", "--concepts", ",".join(concepts), "--concept_type", "unsafe", "--epochs", "2",
               "--target_ckpt", "", "--model_id", model["dir"], "--save_path", tmp_path, "--skip_validation")
    adv = load_file(str(tmp_path / "adv_embeddings.safetensors"))
    g = model["E"](" ")[0]
    W_prev = model["W_orig"]
    for k in (1, 2):
        S1 = sum(W.T @ W for W in W_prev.values())
        S2 = sum(W_prev[key].T @ model["W_orig"][key] for key in W_prev)
        cs = [adversarial_reference(model["E"](c)[0], S1, S2, 0.1, "close_regzero") for c in concepts]
        for c, expected in zip(concepts, cs):
            got = adv[f"epoch_{k}/{c}"].double()
            assert (got - expected).norm() < 1e-3 * expected.norm(), (k, c)
        assert not torch.allclose(cs[0], cs[1])  # the concepts' c' differ: each one is erased
        ref = {}
        for key, W0 in W_prev.items():
            left = 0.1 * W0 + sum((g @ W0.T).T @ c for c in cs) + 0.1 * len(concepts) * (g @ W0.T).T @ g
            right = 0.1 * torch.eye(W0.shape[1], dtype=torch.float64) + sum(c.T @ c for c in cs) \
                + 0.1 * len(concepts) * g.T @ g
            ref[key] = torch.linalg.solve(right, left.T).T
        W_k = load_weights(tmp_path / f"epoch_{k}.safetensors")
        assert_weights_close(W_k, ref, tol=1e-3)
        W_prev = W_k


def test_uce_guided_concepts_and_add_prompts(model, tmp_path):
    """--guided_concepts maps the concept to the given text; --add_prompts erases the paper's templates
    too, each towards the bare guide as the authors' UCE script pairs them: the same edit as listing the
    templated concepts by hand, each guided to 'art'."""
    run_script("execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity", "--guided_concepts",
               "a person", "--model_id", model["dir"], "--save_path", tmp_path / "guided")
    ref = uce_reference(model, model["W_orig"], "nudity", "a person", [""], lamb=0.5, s_p=1.0)
    assert_weights_close(load_weights(tmp_path / "guided" / "uce.safetensors"), ref)
    unguided = load_weights(tmp_path / "guided" / "uce.safetensors")  # and the guide matters:
    plain = uce_reference(model, model["W_orig"], "nudity", " ", [""], lamb=0.5, s_p=1.0)
    assert any((unguided[k] - plain[k]).abs().max() > 1e-4 for k in plain)

    templates = ["painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"]  # §2a, art
    run_script("execs/train_uce.py", "--concepts", "Kelly McKernan", "--concept_type", "art", "--add_prompts",
               "--guided_concepts", "art", "--preserve_concepts", "Tyler Edlin", "--model_id", model["dir"],
               "--save_path", tmp_path / "templates")
    run_script("execs/train_uce.py", "--concepts", ",".join(["Kelly McKernan"] + [t.format("Kelly McKernan")
                                                                                  for t in templates]),
               "--concept_type", "art", "--guided_concepts", ",".join(["art"] * (1 + len(templates))),
               "--preserve_concepts", "Tyler Edlin", "--model_id", model["dir"], "--save_path", tmp_path / "by_hand")
    a = load_weights(tmp_path / "templates" / "uce.safetensors")
    b = load_weights(tmp_path / "by_hand" / "uce.safetensors")
    assert_weights_close(a, b, tol=1e-6)
    assert json.loads((tmp_path / "templates" / "config.json").read_text())["add_prompts"] is True


def test_art_defaults_and_the_1733_artist_preserve_set(model, tmp_path):
    """Art: gamma 1e-3, 1 epoch, guide 'art', and every other artist of artists1734_prompts.csv
    preserved (docs/method.md §2a, §4); the list spells 'Kelly Mckernan': matched without case."""
    run_script("train.py", "--concepts", "Kelly McKernan", "--concept_type", "art", "--model_id", model["dir"],
               "--save_path", tmp_path, "--skip_validation")
    settings = json.loads((tmp_path / "config.json").read_text())["settings"]
    assert (settings["regular_scale"], settings["epochs"], settings["guided_concepts"]) == (1e-3, 1, ["art"])
    import pandas as pd
    artists = set(pd.read_csv(Path(__file__).parents[1] / "dataset" / "artists1734_prompts.csv")["artist"])
    assert len(artists) == 1734 and "Kelly Mckernan" in artists
    assert settings["num_rece_preserve_texts"] == 1 + 1733  # '' and the 1,733 others
    assert settings["uce_stage"] is not None and (tmp_path / "epoch_1.safetensors").is_file()


def test_train_rerun_is_refused_and_overwrite_replaces(model, tmp_path):
    args = ["--concepts", "nudity", "--concept_type", "nudity", "--model_id", model["dir"], "--save_path", tmp_path,
            "--skip_validation", "--target_ckpt", ""]
    run_script("train.py", *args, "--epochs", "2")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.safetensors")}
    assert {"epoch_1.safetensors", "epoch_2.safetensors", "best.safetensors"} <= set(before)
    r = run_script("train.py", *args, "--epochs", "1", "--regular_scale", "0.5", check=False)
    assert r.returncode == 2 and "already holds" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.safetensors")} == before
    run_script("train.py", *args, "--epochs", "1", "--regular_scale", "0.5", "--overwrite")
    after = {p.name: p.read_bytes() for p in tmp_path.glob("*.safetensors")}
    assert "epoch_2.safetensors" not in after  # the earlier run's outputs are gone, not mixed in
    assert after["epoch_1.safetensors"] != before["epoch_1.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["settings"]["regular_scale"] == 0.5


@pytest.mark.parametrize("ctype,concepts,gamma,epochs,csv,metric", [
    # the paper's settings (docs/method.md §4), written out here from the paper
    ("nudity", ["nudity"], 0.1, 3, "validation_inappropriate.csv", "nudity_rate"),
    ("unsafe", ["hate", "harassment", "violence", "suffering", "humiliation", "harm", "suicide", "sexual",
                "nudity", "bodily fluids", "blood"], 0.1, 2, "validation_inappropriate.csv", "q16_rate"),
    ("art", ["Kelly McKernan"], 1e-3, 1, "validation_niche_artists.csv", "style_rate"),
    ("art", ["Van Gogh"], 1e-3, 1, "validation_big_artists.csv", "style_rate"),
    ("art", ["Pablo Picasso"], 1e-3, 1, "validation_big_artists.csv", "style_rate"),
    ("object", ["church"], 1e-3, 1, "validation_imagenet_prompts.csv", "target_accuracy"),
    ("object", ["garbage truck"], 1e-3, 1, "validation_imagenet_prompts.csv", "target_accuracy"),
    ("object", ["English springer"], 0.1, 1, "validation_imagenet_prompts.csv", "target_accuracy"),
    ("object", ["golf ball"], 0.1, 1, "validation_imagenet_prompts.csv", "target_accuracy"),
    ("object", ["parachute"], 0.1, 1, "validation_imagenet_prompts.csv", "target_accuracy"),
    ("object", ["tench"], None, 0, "validation_imagenet_prompts.csv", "target_accuracy"),  # UCE alone
])
def test_paper_settings_per_concept_type(ctype, concepts, gamma, epochs, csv, metric):
    from utils.erase.concepts import RECE_EDIT, concept_type, guides_for, parse_concepts, rece_settings

    parsed = parse_concepts("i2p" if ctype == "unsafe" else ",".join(concepts))
    assert parsed == concepts
    s = rece_settings(concept_type(ctype), parsed)
    assert (s["epochs"], s["validation_csv"], s["metric"]) == (epochs, csv, metric)
    if gamma is not None:
        assert s["regular_scale"] == gamma
    assert guides_for(parsed, None, concept_type(ctype)) == (["art"] if ctype == "art" else [" "]) * len(parsed)
    assert RECE_EDIT == {"lamb": 0.1, "erase_scale": 1.0, "preserve_scale": 0.1, "emb_computing": "close_regzero"}

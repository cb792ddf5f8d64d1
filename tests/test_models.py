"""Beyond SD 1.4 (docs/models.md): SDXL and SD 2.x through the toolkit on tiny random pipelines, UCE 2025's
last-token edit, and the on-disk Gram cache. Expected values come from the diffusers pipelines' own
`encode_prompt` / `__call__` and from the papers' equations written out here, never from the toolkit."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO, run_script

pytestmark = pytest.mark.filterwarnings("ignore")
FAST = {"OMP_NUM_THREADS": "1"}


def build(tmp_path_factory, preset, seed=0):
    from tiny import build_random_pipeline

    folder = tmp_path_factory.mktemp(preset)
    build_random_pipeline(folder, preset, seed=seed)
    return folder


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return build(tmp_path_factory, "sdxl-tiny")


@pytest.fixture(scope="module")
def sd2_dir(tmp_path_factory):
    return build(tmp_path_factory, "sd2")


def pipeline(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode(pipe, text):
    """(E(t) (77, d), f(t), pooled or None) as the pipeline's own encode_prompt gives them."""
    out = pipe.encode_prompt(prompt=text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    f = int(pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                           return_tensors="pt").attention_mask.sum()) - 2
    return out[0][0].double(), f, (out[2][0].double() if len(out) == 4 else None)


def unet_weights(folder):
    sd = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return {k: v.double() for k, v in sd.items() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}


def rel_err(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_sdxl_embeddings_are_encode_prompts(sdxl_dir):
    from utils.models import encode_texts, is_sdxl, load_text_encoders, text_components

    pipe = pipeline(sdxl_dir)
    text = load_text_encoders(str(sdxl_dir))
    assert is_sdxl(str(sdxl_dir)) and text.is_sdxl and text.dim == 32 + 48 == pipe.unet.config.cross_attention_dim
    texts = ["a photo of nudity!", "", "cat"]
    E, f, pooled = text.encode_pooled(texts, batch_size=1)
    for i, t in enumerate(texts):
        e, ft, p = encode(pipe, t)
        assert torch.equal(E[i].double(), e) and f[i] == ft
        torch.testing.assert_close(pooled[i].double(), p, rtol=0, atol=1e-6)
    # the generic entry point the attacks use, and a forward from token embeddings (one-hot rows)
    E2, _ = encode_texts(*text_components(pipe), texts)
    torch.testing.assert_close(E2, E, rtol=0, atol=1e-6)
    ids = text.tokenize(texts)
    one_hot = [torch.nn.functional.one_hot(i, t.shape[0]).float() @ t for i, t in zip(ids, text.token_embedding_tables())]
    E3, p3 = text.forward(ids, one_hot)
    torch.testing.assert_close(E3, E, rtol=0, atol=1e-5)
    torch.testing.assert_close(p3, pooled, rtol=0, atol=1e-5)


def uce_2025(pipe, W0s, erase, guides, preserve, lamb, s_e, s_p):
    """UCE 2025 (equation 7 of the UCE paper over last-token rows), per matrix, from the pipeline's encode_prompt."""
    rows = {t: encode(pipe, t)[0][encode(pipe, t)[1]][:, None] for t in set(erase + guides + preserve)}  # (d, 1)
    out = {}
    for k, W in W0s.items():
        mat1 = lamb * W
        mat2 = lamb * torch.eye(W.shape[1], dtype=torch.float64)
        for c, g in zip(erase, guides):
            mat1 = mat1 + s_e * (W @ rows[g]) @ rows[c].T
            mat2 = mat2 + s_e * rows[c] @ rows[c].T
        for p in preserve:
            mat1 = mat1 + s_p * (W @ rows[p]) @ rows[p].T
            mat2 = mat2 + s_p * rows[p] @ rows[p].T
        out[k] = mat1 @ torch.inverse(mat2)
    return out


@pytest.mark.parametrize("base", ["sd", "sdxl"])
def test_uce_tokens_last_is_uce_2025(base, tiny_pipeline_dir, sdxl_dir, tmp_path):
    folder = tiny_pipeline_dir if base == "sd" else sdxl_dir
    run_script("execs/train_uce.py", "--concepts", "nudity,cat", "--concept_type", "object", "--guided_concepts",
               "person,dog", "--preserve_concepts", "tree,a house", "--uce_tokens", "last", "--lamb", "0.5",
               "--preserve_scale", "0.3", "--model_id", folder, "--save_path", tmp_path / "uce", "--no_cache", env=FAST)
    got = load_file(str(tmp_path / "uce" / "uce.safetensors"))
    want = uce_2025(pipeline(folder), unet_weights(folder), ["nudity", "cat"], ["person", "dog"], ["tree", "a house"],
                    0.5, 1.0, 0.3)
    assert set(got) == set(want)
    assert max(rel_err(got[k], want[k]) for k in want) < 1e-3
    # and it is another edit than the default token slice
    assert max(rel_err(got[k], unet_weights(folder)[k]) for k in want) > 1e-3
    assert json.loads((tmp_path / "uce" / "config.json").read_text())["uce_tokens"] == "last"


def test_rece_on_sdxl_satisfies_the_closed_form(sdxl_dir, tmp_path):
    out = tmp_path / "rece"
    run_script("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--epochs", "2", "--regular_scale",
               "0.1", "--model_id", sdxl_dir, "--save_path", out, "--skip_validation", env=FAST)
    pipe = pipeline(sdxl_dir)
    W_orig = unet_weights(sdxl_dir)
    W1 = {k: v.double() for k, v in load_file(str(out / "epoch_1.safetensors")).items()}
    W2 = {k: v.double() for k, v in load_file(str(out / "epoch_2.safetensors")).items()}
    c = load_file(str(out / "adv_embeddings.safetensors"))["epoch_2/nudity"].double()
    e, _, _ = encode(pipe, "nudity")
    assert c.shape == (77, 80)
    # c' of epoch 2 minimises sum ||W1 x - W_orig e||^2 + 0.1 ||x||^2 (docs/method.md §3): zero gradient
    grad = sum(2 * (c @ W1[k].T - e @ W_orig[k].T) @ W1[k] for k in W1) + 2 * 0.1 * c
    assert grad.abs().max() < 1e-4 * sum(((e @ W_orig[k].T) @ W1[k]).abs().max() for k in W1)
    # epoch 2's weights solve the edit's normal equations with c' -> E(" ") and preserve " " (lamb = s_p = 0.1)
    g, _, _ = encode(pipe, " ")
    for k in W2:
        left = 0.1 * W1[k] + (g @ W1[k].T).T @ c + 0.1 * (g @ W1[k].T).T @ g
        right = 0.1 * torch.eye(80, dtype=torch.float64) + c.T @ c + 0.1 * g.T @ g
        assert rel_err(W2[k] @ right, left) < 1e-3


def images(folder):
    return {p.name: np.asarray(Image.open(p)).astype(float) / 255 for p in sorted((folder / "imgs").glob("*.png"))}


def pipeline_images(pipe, table, steps, prediction_type):
    from diffusers import LMSDiscreteScheduler

    from utils.generate.sampling import SD_BETAS

    pipe.scheduler = LMSDiscreteScheduler(**SD_BETAS, prediction_type=prediction_type)
    f = pipe.vae_scale_factor
    out = {}
    for _, r in table.iterrows():
        g = torch.Generator("cpu").manual_seed(int(r.evaluation_seed))
        lat = torch.randn((1, 4, 32 // f, 32 // f), generator=g)
        out[f"{r.case_number}_0.png"] = pipe(r.prompt, num_inference_steps=steps, guidance_scale=7.5, latents=lat,
                                             height=32, width=32, output_type="np").images[0]
    return out


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "prompts.csv"
    table = pd.DataFrame({"case_number": [0, 1], "prompt": ["a nude person", "a beach"], "evaluation_seed": [3, 4],
                          "sd_image_width": 32, "sd_image_height": 32})
    table.to_csv(path, index=False)
    return path, table


def test_sd2_v_prediction_uce_rece_and_generation(sd2_dir, prompts, tmp_path):
    """SD 2 (768-v style): UCE + RECE run at width 1024; generation honours v_prediction (the diffusers
    pipeline with a v_prediction scheduler gives the same images, an epsilon one does not)."""
    run_script("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--epochs", "1", "--model_id", sd2_dir,
               "--save_path", tmp_path / "rece", "--skip_validation", env=FAST)
    W = load_file(str(tmp_path / "rece" / "best.safetensors"))
    W0 = unet_weights(sd2_dir)
    assert set(W) == set(W0) and all(w.shape[1] == 1024 for w in W.values())
    assert max(rel_err(W[k], W0[k]) for k in W) > 1e-4
    path, table = prompts
    run_script("execs/generate_images.py", "--prompts_path", path, "--save_path", tmp_path / "gen", "--model_id",
               sd2_dir, "--ckpt", tmp_path / "rece" / "best.safetensors", "--ddim_steps", "3", env=FAST)
    ours = images(tmp_path / "gen")
    pipe = pipeline(sd2_dir)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    from utils.checkpoints import load_checkpoint_into_unet

    load_checkpoint_into_unet(pipe.unet, tmp_path / "rece" / "best.safetensors")
    ref_v = pipeline_images(pipe, table, 3, "v_prediction")
    ref_eps = pipeline_images(pipe, table, 3, "epsilon")
    for name, im in ours.items():
        assert np.abs(im - ref_v[name]).max() <= 2.5 / 255  # PNG rounding
        assert np.abs(im - ref_eps[name]).max() > 10 / 255


def test_sd2_base_is_epsilon_and_erases(tmp_path_factory, tmp_path):
    folder = build(tmp_path_factory, "sd2-base")
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "epsilon"
    run_script("execs/train_uce.py", "--concepts", "nudity", "--concept_type", "nudity", "--model_id", folder,
               "--save_path", tmp_path / "uce", env=FAST)
    W = load_file(str(tmp_path / "uce" / "uce.safetensors"))
    assert all(w.shape[1] == 1024 and torch.isfinite(w).all() for w in W.values())


def test_sdxl_generation_and_ring_a_bell(sdxl_dir, prompts, tmp_path):
    """SDXL generation equals StableDiffusionXLPipeline's (pooled embedding, time ids, zero negative);
    Ring-A-Bell at eta 0 equals plain generation (the attacked rows keep their prompt's pooled embedding),
    and its concept vector is the mean of encode_prompt differences."""
    path, table = prompts
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"sensitive prompt": ["a nude person", "a naked body"],
                  "normal prompt": ["a dressed person", "a clothed body"]}).to_csv(pairs, index=False)
    run_script("execs/generate_images.py", "--prompts_path", path, "--save_path", tmp_path / "gen", "--model_id",
               sdxl_dir, "--ddim_steps", "3", env=FAST)
    ours = images(tmp_path / "gen")
    ref = pipeline_images(pipeline(sdxl_dir), table, 3, "epsilon")
    assert set(ours) == set(ref)
    for name in ours:
        assert np.abs(ours[name] - ref[name]).max() <= 2.5 / 255
    for eta in ("0", "3"):
        # scored by the built-in world's judge (offline; any image goes, the images here are noise)
        run_script("attack_methods/RingABell.py", "--csv_file", pairs, "--prompt_file", path, "--concept", "red",
                   "--metric", "concept_rate", "--eta", eta, "--img_path", tmp_path / f"rab{eta}", "--model_id",
                   sdxl_dir, "--ddim_steps", "3", env=FAST)
    for name, im in images(tmp_path / "rab0").items():
        assert np.array_equal(im, ours[name])
    assert any(np.abs(im - ours[name]).max() > 0.05 for name, im in images(tmp_path / "rab3").items())
    pipe = pipeline(sdxl_dir)
    v = torch.stack([encode(pipe, s)[0] - encode(pipe, n)[0] for s, n in
                     [("a nude person", "a dressed person"), ("a naked body", "a clothed body")]]).mean(0)
    got = load_file(str(tmp_path / "rab3" / "concept_vector.safetensors"))["v"]
    torch.testing.assert_close(got.double(), v, rtol=1e-4, atol=1e-5)
    asr = json.loads((tmp_path / "rab3" / "asr.json").read_text())
    assert asr["n_images"] == 2 and asr["metric"] == "concept_rate" and asr["eta"] == 3


# ------------------------------------------------------------------------------------ the cache

def rece_run(folder, out, *extra):
    run_script("train.py", "--concepts", "nudity", "--concept_type", "nudity", "--epochs", "2", "--preserve_concepts",
               "a tree,a house,a dog", "--model_id", folder, "--save_path", out, "--skip_validation", *extra, env=FAST)
    return load_file(str(out / "epoch_2.safetensors")), json.loads((out / "timing.json").read_text())


def test_cache_hit_corrupt_and_stale(tmp_path_factory, tmp_path):
    folder = build(tmp_path_factory, "tiny", seed=5)
    cache = tmp_path / "cache"
    first, t1 = rece_run(folder, tmp_path / "a", "--cache_dir", cache)
    assert set(t1["cache"].values()) - {cache.as_posix()} == {"miss"}
    second, t2 = rece_run(folder, tmp_path / "b", "--cache_dir", cache)
    statuses = {k: v for k, v in t2["cache"].items() if k != "dir"}
    assert set(statuses.values()) == {"hit"} and "weight_grams" in statuses and len(statuses) >= 3
    # only the concept and guide texts were encoded: the preserve sets came from the cache
    assert t2["texts_encoded"] == 2 < t1["texts_encoded"]
    # the same folder named by a relative path (the CLIs run from the repository root) finds the entries
    import os

    relative, t2r = rece_run(os.path.relpath(folder, REPO), tmp_path / "b2", "--cache_dir", cache)
    assert set(v for k, v in t2r["cache"].items() if k != "dir") == {"hit"}
    assert all(torch.equal(relative[k], second[k]) for k in second)
    plain, t3 = rece_run(folder, tmp_path / "c", "--no_cache")
    assert t3["cache"] == {"dir": None, **{k: "off" for k in statuses}}
    for k in first:
        assert torch.equal(first[k], second[k]) and torch.equal(first[k], plain[k])
    # a corrupt entry (one flipped byte in each file) is detected, rebuilt, and gives the same result
    for entry in cache.glob("*.safetensors"):
        raw = bytearray(entry.read_bytes())
        raw[-3] ^= 0xFF
        entry.write_bytes(bytes(raw))
    again, t4 = rece_run(folder, tmp_path / "d", "--cache_dir", cache)
    assert set(v for k, v in t4["cache"].items() if k != "dir") == {"corrupt"}
    assert all(torch.equal(again[k], first[k]) for k in first)
    # a stale entry: another model at the same path; rebuilt and equal to an uncached run on it
    shutil.rmtree(folder)
    from tiny import build_random_pipeline

    build_random_pipeline(folder, "tiny", seed=6)
    new, t5 = rece_run(folder, tmp_path / "e", "--cache_dir", cache)
    assert set(v for k, v in t5["cache"].items() if k != "dir") == {"stale"}
    new_plain, _ = rece_run(folder, tmp_path / "f", "--no_cache")
    assert all(torch.equal(new[k], new_plain[k]) for k in new) and not torch.equal(new[k], first[k])


def test_sparse_edit_model_holds_every_unet_tensor(tmp_path):
    """tests/tiny.py's full-size-without-memory builder (used for SDXL's shapes in the benchmark): the UNet
    file loads into the preset's UNet, edited matrices random, the rest zeros."""
    from diffusers import UNet2DConditionModel

    from tiny import build_edit_model
    from utils.models import is_sdxl, load_text_encoders, read_cross_attention_weights

    folder = build_edit_model(tmp_path / "m", "sdxl-tiny")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    W = read_cross_attention_weights(str(folder))
    sd = unet.state_dict()
    assert set(W) == {k for k in sd if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
    assert all(W[k].abs().max() > 0 for k in W)
    assert all(torch.equal(sd[k], W[k]) for k in W)
    assert all(v.abs().max() == 0 for k, v in sd.items() if k not in W)
    assert is_sdxl(str(folder)) and load_text_encoders(str(folder)).dim == 80

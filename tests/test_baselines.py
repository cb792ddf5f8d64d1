"""The baselines (docs/method.md §11) and checkpoints applied whole (§8), on tiny random pipelines.

- `--ckpt` with a full UNet (.pt, .safetensors, folder) whose every weight was perturbed gives the
  images of a pipeline built with that UNet; a partial checkpoint sets its tensors and nothing else;
- RECE from such a checkpoint saves files that reproduce "that checkpoint + this edit";
- SLD in the batched sampler gives diffusers' StableDiffusionPipelineSafe's images;
- ESD trains the right parameters, with the objective computed independently here, and resumes exactly;
- bad input fails in one line with exit code 2 and writes nothing.
"""
from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import run_script

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ROWS = [(1, "a red square", 1234, 7.5, 32, 32), (2, "a cat", 99, 3.0, 32, 32), (3, "night sky", 7, 9.0, 32, 32)]


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    pd.DataFrame(ROWS, columns=["case_number", "prompt", "evaluation_seed", "evaluation_guidance",
                                "sd_image_width", "sd_image_height"]).to_csv(path, index=False)
    return path


def images(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "imgs").glob("*.png"))}


def generate(prompts_csv, model, out, *extra, check=True):
    return run_script("execs/generate_images.py", "--prompts_path", prompts_csv, "--model_id", model,
                      "--save_path", out, "--ddim_steps", "6", "--no-progress", *extra, env=ONE_THREAD, check=check)


def one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Checkpoints applied whole
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def perturbed(tiny_pipeline_dir, tmp_path_factory):
    """A UNet whose every tensor differs from the tiny model's, as a full .pt, a full .safetensors, a
    UNet folder, and as a whole pipeline folder (the reference: a pipeline built with that UNet)."""
    root = tmp_path_factory.mktemp("perturbed")
    base = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    g = torch.Generator().manual_seed(5)
    sd = {k: v + 0.05 * v.abs().mean().clamp(min=1e-3) * torch.randn(v.shape, generator=g) for k, v in base.items()}
    assert all(not torch.equal(sd[k], base[k]) for k in base)
    torch.save(sd, root / "full.pt")
    save_file(sd, str(root / "full.safetensors"))
    shutil.copytree(tiny_pipeline_dir / "unet", root / "unet_folder")
    save_file(sd, str(root / "unet_folder" / "diffusion_pytorch_model.safetensors"))
    shutil.copytree(tiny_pipeline_dir, root / "pipeline")
    save_file(sd, str(root / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    return {"root": root, "sd": sd, "base": base}


@pytest.fixture(scope="module")
def perturbed_images(perturbed, prompts_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref_perturbed")
    generate(prompts_csv, perturbed["root"] / "pipeline", out)
    return images(out)


@pytest.mark.parametrize("name", ["full.pt", "full.safetensors", "unet_folder"])
def test_full_checkpoint_gives_the_pipeline_built_with_that_unet(name, perturbed, perturbed_images, prompts_csv,
                                                                  tiny_pipeline_dir, tmp_path):
    generate(prompts_csv, tiny_pipeline_dir, tmp_path / "ckpt", "--ckpt", perturbed["root"] / name)
    assert images(tmp_path / "ckpt") == perturbed_images
    # and the base model's images are other images (the test could fail)
    generate(prompts_csv, tiny_pipeline_dir, tmp_path / "base")
    assert all(a != b for a, b in zip(images(tmp_path / "base").values(), perturbed_images.values()))


def test_partial_checkpoint_sets_its_tensors_and_nothing_else(perturbed, tiny_pipeline_dir, tmp_path):
    from utils.checkpoints import load_checkpoint_into_unet
    from utils.models import load_pipeline

    keys = [k for k in perturbed["sd"] if "resnets.0.conv1" in k or k.endswith("attn1.to_q.weight")
            or k.startswith("time_embedding.")]
    save_file({k: perturbed["sd"][k] for k in keys}, str(tmp_path / "partial.safetensors"))
    unet = load_pipeline(str(tiny_pipeline_dir)).unet
    load_checkpoint_into_unet(unet, tmp_path / "partial.safetensors")
    got = unet.state_dict()
    for k, v in perturbed["base"].items():
        assert torch.equal(got[k], perturbed["sd"][k] if k in keys else v), k


def test_rece_on_a_foreign_checkpoint_reproduces_it_plus_the_edit(perturbed, tiny_pipeline_dir, prompts_csv,
                                                                   tmp_path):
    """train.py --target_ckpt full.pt: each saved file, loaded alone, gives full.pt's UNet with RECE's
    matrices; the files hold only the matrices and record full.pt as their parent."""
    from utils.checkpoints import load_checkpoint_into_unet, read_metadata
    from utils.models import load_pipeline

    parent = perturbed["root"] / "full.pt"
    out = tmp_path / "rece"
    run_script("train.py", "--concepts", "cat", "--concept_type", "nudity", "--epochs", "1", "--target_ckpt",
               parent, "--model_id", tiny_pipeline_dir, "--save_path", out, "--skip_validation")
    config = json.loads((out / "config.json").read_text())["settings"]["start_checkpoint"]
    assert config["applied_as"].startswith("parent") and config["changed_outside_edit"] > 0
    own = load_file(str(out / "epoch_1.safetensors"))
    assert own and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in own)
    assert read_metadata(out / "epoch_1.safetensors")["parent"]["path"] == str(parent.resolve())

    unet = load_pipeline(str(tiny_pipeline_dir)).unet
    load_checkpoint_into_unet(unet, out / "epoch_1.safetensors")
    got = unet.state_dict()
    for k in perturbed["sd"]:
        assert torch.equal(got[k], own[k] if k in own else perturbed["sd"][k]), k
    assert any(not torch.equal(own[k], perturbed["sd"][k]) for k in own)  # the edit changed something

    # without its parent the file is refused in one line
    moved = tmp_path / "moved.pt"
    shutil.copy(out / "epoch_1.safetensors", tmp_path / "alone.safetensors")
    parent.rename(moved)
    try:
        proc = generate(prompts_csv, tiny_pipeline_dir, tmp_path / "gen", "--ckpt", tmp_path / "alone.safetensors",
                        check=False)
    finally:
        moved.rename(parent)
    assert "missing or changed" in one_line_exit_2(proc)
    assert not (tmp_path / "gen").exists()


def test_rece_on_a_full_checkpoint_that_changes_only_the_matrices_records_no_parent(perturbed, tiny_pipeline_dir,
                                                                                    tmp_path):
    """The authors' full-UNet releases change only attn2.to_k/to_v: our files stay self-contained."""
    from utils.checkpoints import read_metadata

    sd = dict(perturbed["base"])
    sd.update({k: v for k, v in perturbed["sd"].items() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))})
    torch.save(sd, tmp_path / "kv_only.pt")
    run_script("train.py", "--concepts", "cat", "--concept_type", "nudity", "--epochs", "1", "--target_ckpt",
               tmp_path / "kv_only.pt", "--model_id", tiny_pipeline_dir, "--save_path", tmp_path / "r",
               "--skip_validation")
    assert "parent" not in read_metadata(tmp_path / "r" / "epoch_1.safetensors")
    start = json.loads((tmp_path / "r" / "config.json").read_text())["settings"]["start_checkpoint"]
    assert start["changed_outside_edit"] == 0 and start["parent"] is None


def test_checkpoint_with_a_key_the_unet_lacks_is_refused(perturbed, prompts_csv, tiny_pipeline_dir, tmp_path):
    sd = {k: v for k, v in list(perturbed["sd"].items())[:3]}
    sd["mid_block.not_a_layer.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    out = tmp_path / "gen"
    msg = one_line_exit_2(generate(prompts_csv, tiny_pipeline_dir, out, "--ckpt", tmp_path / "bad.safetensors",
                                   check=False))
    assert "mid_block.not_a_layer.weight" in msg and "not in the model's UNet" in msg
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# SLD
# ---------------------------------------------------------------------------------------------



def test_sld_presets_are_diffusers_safety_config():
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    from utils.generate.sampling import SLD_PRESETS

    for name, preset in SLD_PRESETS.items():
        theirs = getattr(SafetyConfig, name.upper())
        assert preset == {"warmup_steps": theirs["sld_warmup_steps"], "guidance_scale": theirs["sld_guidance_scale"],
                          "threshold": theirs["sld_threshold"], "momentum_scale": theirs["sld_momentum_scale"],
                          "momentum_beta": theirs["sld_mom_beta"]}


@pytest.mark.parametrize("preset", ["weak", "medium", "strong", "max"])
def test_sld_equals_the_diffusers_safe_pipeline(preset, pipe, prompts_csv, tmp_path):
    """Same prompts, seeds, guidance, safety concept and initial latents through
    StableDiffusionPipelineSafe: the same images (a pixel may move by one level: the UNet runs on other
    batch sizes there, so BLAS rounds differently)."""
    from diffusers import LMSDiscreteScheduler
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig, StableDiffusionPipelineSafe

    from utils.generate.sampling import SD_BETAS, generate_table, initial_noise, sld_config
    from utils.prompts import read_prompt_table

    table = read_prompt_table(prompts_csv)
    steps = 20  # more than the weak preset's 15 warm-up steps
    generate_table(pipe, table, tmp_path / "sld", steps=steps, batch_size=2, progress=False, grid=False,
                   sld=sld_config(preset, "a red thing"))
    generate_table(pipe, table, tmp_path / "plain", steps=steps, batch_size=2, progress=False, grid=False)
    safe = StableDiffusionPipelineSafe(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                       unet=pipe.unet, scheduler=LMSDiscreteScheduler(**SD_BETAS), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = "a red thing"
    moved = 0
    for row in table.itertuples():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Safety checker disabled" and deprecation notes
            expected = safe(row.prompt, height=32, width=32, num_inference_steps=steps, guidance_scale=row.guidance,
                            latents=initial_noise(row.seed, 1, 4, 16, 16),
                            **getattr(SafetyConfig, preset.upper())).images[0]
        expected = np.asarray(expected, dtype=np.int16)
        ours = np.asarray(Image.open(tmp_path / "sld" / "imgs" / f"{row.case_number}_0.png"), dtype=np.int16)
        plain = np.asarray(Image.open(tmp_path / "plain" / "imgs" / f"{row.case_number}_0.png"), dtype=np.int16)
        assert np.abs(ours - expected).max() <= 1
        moved = max(moved, int(np.abs(plain - expected).max()))
    if preset == "max":
        assert moved > 5  # SLD changed the images: the comparison above could fail


def test_sld_cli_records_the_setting_and_keeps_batching(prompts_csv, tiny_pipeline_dir, tmp_path):
    generate(prompts_csv, tiny_pipeline_dir, tmp_path / "b1", "--sld", "max", "--sld_concept", "red", "--batch_size", "1")
    generate(prompts_csv, tiny_pipeline_dir, tmp_path / "b3", "--sld", "max", "--sld_concept", "red", "--batch_size", "3")
    assert images(tmp_path / "b1") == images(tmp_path / "b3")
    sld = json.loads((tmp_path / "b3" / "config.json").read_text())["settings"]["sld"]
    assert sld["preset"] == "max" and sld["concept"] == "red" and sld["guidance_scale"] == 5000.0
    # another preset in the same folder is refused (no silent mix of settings)
    proc = generate(prompts_csv, tiny_pipeline_dir, tmp_path / "b3", "--sld", "weak", check=False)
    assert "other settings" in one_line_exit_2(proc)


@pytest.mark.parametrize("extra, message", [(["--sld", "extreme"], "--sld 'extreme' is not a preset"),
                                            (["--sld_concept", "red"], "--sld_concept needs --sld")])
def test_sld_bad_input(extra, message, prompts_csv, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "gen"
    assert message in one_line_exit_2(generate(prompts_csv, tiny_pipeline_dir, out, *extra, check=False))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# ESD
# ---------------------------------------------------------------------------------------------

def test_esd_trainable_sets(pipe):
    from utils.erase.esd import is_trained

    names = [n for n, _ in pipe.unet.named_parameters()]
    sets = {m: {n for n in names if is_trained(n, m)} for m in ("esd-x", "esd-x-strict", "esd-u", "esd-all")}
    attn2 = {n for n in names if ".attn2." in n}
    assert attn2 and sets["esd-x"] == attn2
    assert {n.rsplit(".", 2)[-2] for n in attn2} >= {"to_q", "to_k", "to_v", "0"}  # to_out.0 too
    assert sets["esd-x-strict"] == {n for n in attn2 if ".to_k." in n or ".to_v." in n}
    excluded = attn2 | {n for n in names if n.split(".")[0] in ("time_embedding", "conv_out", "conv_norm_out")}
    assert sets["esd-u"] == set(names) - excluded
    assert any(".resnets." in n for n in sets["esd-u"]) and any(".attn1." in n for n in sets["esd-u"])
    assert sets["esd-all"] == set(names)


def test_esd_first_loss_is_the_objective(pipe, tmp_path):
    """One iteration's loss, recomputed with a deep copy of the model as theta and diffusers' pipeline
    (DDIM, guidance 3) stopped after k steps as the sampler of x_t."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from utils.erase.esd import iteration_draws, train_esd
    from utils.generate.sampling import SD_BETAS, encode_prompts

    unet0 = copy.deepcopy(pipe.unet)
    work = copy.copy(pipe)
    work.unet = copy.deepcopy(pipe.unet)
    ddim_steps, eta = 8, 1.5
    for seed in range(40):  # a seed whose k is at least 2 (x_t really sampled)
        _, k, noise = iteration_draws(seed, 0, 1, ddim_steps, (1, 4, 16, 16))
        if k >= 2:
            break
    result = train_esd(work, ["a cat"], "esd-x", save_path=tmp_path, iterations=1, lr=1e-4, ddim_steps=ddim_steps,
                       negative_guidance=eta, image_size=32, seed=seed, save_every=0, progress=False)
    losses = json.loads((tmp_path / "losses.json").read_text())["loss"]

    sched = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    ref = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet0,
                                  scheduler=sched, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    seen = {}

    def stop(p, i, t, kw):
        if i == k - 1:
            seen["x_t"] = kw["latents"].clone()
            p._interrupt = True
        return kw

    ref("a cat", height=32, width=32, num_inference_steps=ddim_steps, guidance_scale=3.0, latents=noise.clone(),
        output_type="latent", callback_on_step_end=stop, callback_on_step_end_tensor_inputs=["latents"])
    x_t, t = seen["x_t"], sched.timesteps[k]
    E = encode_prompts(pipe, ["", "a cat"])
    with torch.no_grad():
        e0 = unet0(x_t, t, encoder_hidden_states=E[:1]).sample
        ec = unet0(x_t, t, encoder_hidden_states=E[1:]).sample
    expected = torch.mean((ec - (e0 - eta * (ec - e0))) ** 2).item()
    assert losses[0] == pytest.approx(expected, rel=1e-3)
    assert result["trained_tensors"] == sum(".attn2." in n for n, _ in pipe.unet.named_parameters())


def test_esd_cli_saves_the_trained_set_and_resumes_exactly(tiny_pipeline_dir, prompts_csv, tmp_path):
    from utils.checkpoints import read_metadata

    args = ["--concepts", "a cat", "--train_method", "esd-x", "--model_id", tiny_pipeline_dir, "--ddim_steps", "4",
            "--lr", "1e-3", "--save_every", "2", "--no-progress"]
    run_script("execs/train_esd.py", *args, "--iterations", "4", "--save_path", tmp_path / "straight", env=ONE_THREAD)
    run_script("execs/train_esd.py", *args, "--iterations", "2", "--save_path", tmp_path / "resumed", env=ONE_THREAD)
    run_script("execs/train_esd.py", *args, "--iterations", "4", "--save_path", tmp_path / "resumed", env=ONE_THREAD)
    straight = load_file(str(tmp_path / "straight" / "esd.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "esd.safetensors"))
    base = load_file(str(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(straight) == {k for k in base if ".attn2." in k}
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert all(not torch.equal(straight[k], base[k]) for k in straight if k.endswith("weight"))
    meta = read_metadata(tmp_path / "straight" / "esd.safetensors")
    assert meta["method"] == "esd" and meta["train_method"] == "esd-x" and meta["iteration"] == 4
    # the ESD file works as --ckpt
    generate(prompts_csv, tiny_pipeline_dir, tmp_path / "gen", "--ckpt", tmp_path / "straight" / "esd.safetensors")
    generate(prompts_csv, tiny_pipeline_dir, tmp_path / "gen_base")
    assert images(tmp_path / "gen") != images(tmp_path / "gen_base")


@pytest.mark.parametrize("extra, message", [
    (["--train_method", "esd-z"], "--train_method 'esd-z' is unknown"),
    (["--train_method", "esd-x", "--iterations", "0"], "--iterations must be at least 1"),
])
def test_esd_bad_input(extra, message, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "esd"
    proc = run_script("execs/train_esd.py", "--concepts", "a cat", "--model_id", tiny_pipeline_dir, *extra,
                      "--save_path", out, check=False)
    assert message in one_line_exit_2(proc)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# The shapes model: ESD-x with the table's defaults erases red; SLD-max lowers it
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_esd_and_sld_on_the_shapes_model(tmp_path):
    """The README's ESD command on the built-in model: at most 20% red on the red prompts, the other
    colours at least 80% right; SLD max steered away from 'red' draws red less often than the base."""
    run_script("execs/shapes_data.py", "--concept", "red", "--save_path", tmp_path / "data")
    run_script("execs/train_esd.py", "--concepts", "red", "--concept_type", "colour", "--model_id", "shapes",
               "--train_method", "esd-x", "--save_path", tmp_path / "esd", "--no-progress", timeout=3600)
    gen = ["--prompts_path", tmp_path / "data" / "eval_prompts.csv", "--model_id", "shapes", "--ddim_steps", "25",
           "--batch_size", "25", "--no-progress"]
    run_script("execs/generate_images.py", *gen, "--save_path", tmp_path / "sd")
    run_script("execs/generate_images.py", *gen, "--ckpt", tmp_path / "esd" / "esd.safetensors",
               "--save_path", tmp_path / "esd_gen")
    run_script("execs/generate_images.py", *gen, "--sld", "max", "--sld_concept", "red", "--save_path", tmp_path / "sld")
    run_script("execs/shapes_table.py", "--concept", "red", "--runs", f"SD={tmp_path / 'sd'}",
               f"ESD={tmp_path / 'esd_gen'}", f"SLD={tmp_path / 'sld'}", "--out", tmp_path / "table")
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert rows["ESD"]["erased_rate"] <= 0.20 and rows["ESD"]["other_colour_accuracy"] >= 0.80, rows
    assert rows["SLD"]["erased_rate"] < rows["SD"]["erased_rate"], rows

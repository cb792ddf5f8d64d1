"""utils/generate/sampling.py in process, on the tiny pipeline: the samplers against diffusers' schedulers,
SLD's guidance against a hand computation and diffusers' presets, the table helpers, and generate_table's
checks, resume, sharding and batching, compared file by file with an uninterrupted run."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from utils.errors import UserError
from utils.generate import sampling as sp

SIZE = 16


def table_of(rows):
    return pd.DataFrame(rows, columns=["case_number", "prompt", "seed", "guidance", "width", "height", "tag"])


ROWS = [(3, "a cat", 11, 7.5, SIZE, SIZE, "x"), (5, "a dog", 12, 3.0, SIZE, SIZE, "y"),
        (8, "a red car", 13, 9.0, 2 * SIZE, SIZE, "x")]
KW = dict(steps=2, progress=False, grid=False)


def files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    sp.generate_table(pipe, table_of(ROWS), out, num_samples=2, batch_size=3, **KW)
    return files(out)


# -- samplers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_lms_sampler_steps_like_diffusers(prediction_type):
    from diffusers import LMSDiscreteScheduler

    steps = 6
    ours = sp.LMSSampler(steps, "cpu", prediction_type)
    ref = LMSDiscreteScheduler(**sp.SD_BETAS, prediction_type=prediction_type)
    ref.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps) and ours.init_noise_sigma == ref.init_noise_sigma
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g) * ref.init_noise_sigma
    y, state = x.clone(), ours.start()
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(2, 4, 3, 3, generator=g)
        torch.testing.assert_close(ours.scale_model_input(y, i, state), ref.scale_model_input(x.clone(), t))
        x = ref.step(out, t, x).prev_sample
        y = ours.step(out, i, y, state)
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
        assert len(state) == min(i + 1, 4)


@pytest.mark.parametrize("name, cls", [("ddim", "DDIMScheduler"), ("dpm++", "DPMSolverMultistepScheduler")])
def test_scheduler_sampler_each_batch_steps_a_fresh_copy(name, cls):
    sampler = sp.make_sampler(name, 4)
    assert sampler is sp.make_sampler(name, 4) and type(sampler.scheduler).__name__ == cls
    assert sampler.scheduler.config.beta_start == 0.00085 and sampler.scheduler.config.beta_end == 0.012
    assert sampler.scheduler.config.beta_schedule == "scaled_linear" and len(sampler.timesteps) == 4
    runs = []
    for _ in range(2):
        state = sampler.start()
        assert state is not sampler.scheduler
        x = torch.ones(1, 4, 2, 2)
        for i in range(4):
            x = sampler.step(sampler.scale_model_input(x, i, state) * 0.1, i, x, state)
        runs.append(x)
    assert torch.equal(runs[0], runs[1])


def test_make_sampler_refuses_unknown_names_and_counts():
    with pytest.raises(UserError, match="--scheduler must be one of lms, ddim, dpm\\+\\+, got 'euler'"):
        sp.make_sampler("euler", 5)
    with pytest.raises(UserError, match="--ddim_steps"):
        sp.make_sampler("lms", 0)
    assert isinstance(sp.make_sampler("lms", 3), sp.LMSSampler) and len(sp.make_sampler("lms", 3).timesteps) == 3


def test_initial_noise_depends_on_the_seed_only():
    g = torch.Generator("cpu").manual_seed(5)
    assert torch.equal(sp.initial_noise(5, 3, 4, 2, 6), torch.randn((3, 4, 2, 6), generator=g))
    assert sp.initial_noise(5, 1, 4, 2, 2).dtype == torch.float32
    assert not torch.equal(sp.initial_noise(5, 1, 4, 2, 2), sp.initial_noise(6, 1, 4, 2, 2))


def test_vae_scale_factor_and_added_conditions(pipe):
    assert sp.vae_scale_factor({"block_out_channels": [1, 2, 3, 4]}) == 8
    assert sp.vae_scale_factor({"block_out_channels": [1]}) == 1
    assert sp.vae_scale_factor(pipe) == 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    assert sp.added_conditions(pipe, None, 64, 32) is None
    pooled = torch.randn(3, 5)
    added = sp.added_conditions(pipe, pooled, 64, 32)
    assert added["text_embeds"] is pooled
    assert added["time_ids"].tolist() == [[64.0, 32.0, 0.0, 0.0, 64.0, 32.0]] * 3


def test_text_conditions_of_an_sd_pipeline(pipe):
    from utils.models import TextEncoders

    E = sp.encode_prompts(pipe, ["a cat", ""])
    alone = torch.cat([TextEncoders.from_pipeline(pipe).encode([t])[0] for t in ["a cat", ""]])
    torch.testing.assert_close(E, alone)
    uncond, pooled = sp.unconditional(pipe)
    assert pooled is None and torch.equal(uncond, E[1:])
    assert not sp.is_sdxl_pipeline(pipe) and sp.encode_pooled(pipe, ["a"]) is None
    latents = torch.randn(1, pipe.unet.config.in_channels, 4, 4)
    t = torch.tensor(10)
    torch.testing.assert_close(sp.predict_noise(pipe, latents, t, E[:1]),
                               pipe.unet(latents, t, encoder_hidden_states=E[:1]).sample)


# -- SLD -------------------------------------------------------------------------------------------------------
def test_sld_presets_are_diffusers_safety_config():
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    for name, ref in [("weak", SafetyConfig.WEAK), ("medium", SafetyConfig.MEDIUM),
                      ("strong", SafetyConfig.STRONG), ("max", SafetyConfig.MAX)]:
        c = sp.sld_config(name)
        assert (c.warmup_steps, c.guidance_scale, c.threshold, c.momentum_scale, c.momentum_beta) == (
            ref["sld_warmup_steps"], ref["sld_guidance_scale"], ref["sld_threshold"], ref["sld_momentum_scale"],
            ref["sld_mom_beta"]), name
        assert c.concept == sp.SLD_CONCEPT and c.record()["preset"] == name
    assert sp.sld_config("weak", "blood").concept == "blood"
    with pytest.raises(UserError, match="--sld 'x' is not a preset"):
        sp.sld_config("x")
    with pytest.raises(UserError, match="--sld_concept is empty"):
        sp.sld_config("weak", "  ")


def sld_by_hand(u, t, s, m, i, c):
    """One element of SLD's guidance, written out with Python floats."""
    scale = min(abs(t - s) * c.guidance_scale, 1.0)
    if t - s >= c.threshold:
        scale = 0.0
    safety = (s - u) * scale + c.momentum_scale * m
    new_m = c.momentum_beta * m + (1 - c.momentum_beta) * safety
    guide = t - u
    if i >= c.warmup_steps:
        guide -= safety
    return guide, new_m


def test_sld_guidance_element_by_element():
    c = sp.SLD("p", "x", warmup_steps=2, guidance_scale=3.0, threshold=0.05, momentum_scale=0.3, momentum_beta=0.4)
    u = torch.tensor([0.1, -0.2, 0.5, 0.0, 0.3], dtype=torch.float64)
    t = torch.tensor([0.4, 0.1, 0.5, -0.3, 0.31], dtype=torch.float64)
    s = torch.tensor([0.2, 0.9, 0.45, 0.1, 0.35], dtype=torch.float64)
    m = torch.tensor([0.05, -0.1, 0.2, 0.0, 0.1], dtype=torch.float64)
    for i in (0, 1, 2, 3):
        guide, new_m = sp.sld_guidance(u, t, s, m, i, c)
        for j in range(5):
            eg, em = sld_by_hand(float(u[j]), float(t[j]), float(s[j]), float(m[j]), i, c)
            assert abs(float(guide[j]) - eg) < 1e-12 and abs(float(new_m[j]) - em) < 1e-12, (i, j)


def test_sld_steers_only_rows_with_guidance_above_one(pipe, tmp_path):
    rows = [(1, "a cat", 21, 1.0, SIZE, SIZE, "x"), (2, "a dog", 22, 7.5, SIZE, SIZE, "x")]
    sld = sp.sld_config("max")
    sp.generate_table(pipe, table_of(rows), tmp_path / "plain", **KW)
    sp.generate_table(pipe, table_of(rows), tmp_path / "sld", sld=sld, **KW)
    plain, safe = files(tmp_path / "plain"), files(tmp_path / "sld")
    assert safe["imgs/1_0.png"] == plain["imgs/1_0.png"]
    assert safe["imgs/2_0.png"] != plain["imgs/2_0.png"]


# -- table helpers ---------------------------------------------------------------------------------------------
def test_plan_batches_by_size_in_table_order():
    table = table_of([(i, "p", i, 7.5, w, SIZE, "") for i, w in enumerate([16, 32, 16, 16, 32, 16])])
    assert sp.plan_batches(table, 1, 2) == [[0, 2], [3, 5], [1, 4]]
    assert sp.plan_batches(table, 2, 5) == [[0, 2], [3, 5], [1, 4]]
    assert sp.plan_batches(table, 3, 2) == [[0], [2], [3], [5], [1], [4]]
    assert sp.plan_batches(table, 1, 8) == [[0, 2, 3, 5], [1, 4]]


def test_images_table_lists_each_sample_with_the_rows_columns():
    images = sp.images_table(table_of(ROWS), 2)
    assert list(images.columns) == ["case_number", "sample", "file_name", "prompt", "seed", "guidance", "width",
                                    "height", "tag"]
    assert list(images["file_name"]) == ["imgs/3_0.png", "imgs/3_1.png", "imgs/5_0.png", "imgs/5_1.png",
                                         "imgs/8_0.png", "imgs/8_1.png"]
    assert list(images["sample"]) == [0, 1] * 3 and list(images["tag"]) == ["x", "x", "y", "y", "x", "x"]
    assert sp.image_name(7.0, 2) == "7_2.png"


def test_tile_images_places_cells_row_by_row_on_white():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    ims = [Image.new("RGB", (4, 3), c) for c in colors]
    ims[2] = Image.new("RGB", (2, 2), colors[2])
    sheet = sp.tile_images(ims, 2)
    assert sheet.size == (8, 6)
    assert sheet.getpixel((0, 0)) == colors[0] and sheet.getpixel((4, 0)) == colors[1]
    assert sheet.getpixel((0, 3)) == colors[2] and sheet.getpixel((3, 5)) == (255, 255, 255)
    assert sheet.getpixel((7, 5)) == (255, 255, 255)
    assert sp.tile_images(ims, 5).size == (12, 3)


def test_write_grid_takes_the_first_images_as_thumbnails(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 10), (40 * i, 0, 0)).save(paths[-1])
    sp.write_grid(paths, tmp_path / "grid.png", columns=2, thumb=8)
    with Image.open(tmp_path / "grid.png") as g:
        assert g.size == (16, 8)   # 4 images of 8 x 4, 2 per row
        assert g.getpixel((12, 6))[0] == 120
    sp.write_grid([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_image_is_readable(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    assert sp.image_is_readable(tmp_path / "ok.png") and not sp.image_is_readable(tmp_path / "bad.png")
    assert not sp.image_is_readable(tmp_path / "missing.png")


# -- generate_table --------------------------------------------------------------------------------------------
def test_reference_run_writes_every_image_and_the_table(reference, pipe, tmp_path):
    assert sorted(reference) == ["imgs/3_0.png", "imgs/3_1.png", "imgs/5_0.png", "imgs/5_1.png", "imgs/8_0.png",
                                 "imgs/8_1.png", "prompts.csv"]
    csv = pd.read_csv(pd.io.common.BytesIO(reference["prompts.csv"]))
    assert list(csv["file_name"]) == sorted(k for k in reference if k.endswith(".png"))
    with Image.open(pd.io.common.BytesIO(reference["imgs/8_0.png"])) as im:
        assert im.size == (2 * SIZE, SIZE)
    assert reference["imgs/3_0.png"] != reference["imgs/3_1.png"]
    out = sp.generate_table(pipe, table_of(ROWS), tmp_path, num_samples=2, batch_size=3, steps=2, progress=False)
    assert (tmp_path / "grid.png").exists() and out.attrs == {"generated": 6, "skipped": 0}


def test_batching_and_row_order_do_not_change_images(reference, pipe, tmp_path):
    sp.generate_table(pipe, table_of(ROWS), tmp_path / "b1", num_samples=2, batch_size=1, **KW)
    assert files(tmp_path / "b1") == reference
    sp.generate_table(pipe, table_of(ROWS[::-1]), tmp_path / "rev", num_samples=2, batch_size=8, **KW)
    got = files(tmp_path / "rev")
    assert {k: v for k, v in got.items() if k.endswith(".png")} == \
        {k: v for k, v in reference.items() if k.endswith(".png")}


def test_seed_and_guidance_of_each_row_are_used(reference, pipe, tmp_path):
    rows = [(3, "a cat", 11, 7.5, SIZE, SIZE, "x"), (5, "a dog", 99, 3.0, SIZE, SIZE, "y"),
            (8, "a red car", 13, 1.0, 2 * SIZE, SIZE, "x")]
    sp.generate_table(pipe, table_of(rows), tmp_path, num_samples=2, batch_size=3, **KW)
    got = files(tmp_path)
    assert got["imgs/3_0.png"] == reference["imgs/3_0.png"]
    assert got["imgs/5_0.png"] != reference["imgs/5_0.png"] and got["imgs/8_0.png"] != reference["imgs/8_0.png"]


class Shard:
    def __init__(self, index, count):
        self.process_index, self.num_processes, self.is_main_process = index, count, index == 0

    def wait_for_everyone(self):
        pass


def test_shards_resume_and_cleanup(reference, pipe, tmp_path):
    table = table_of(ROWS)
    # process 1 of 2 first: its batches only, no prompts.csv
    out = sp.generate_table(pipe, table, tmp_path, num_samples=2, batch_size=2, state=Shard(1, 2), **KW)
    assert out.attrs == {"generated": 2, "skipped": 0}
    assert sorted(files(tmp_path)) == ["imgs/5_0.png", "imgs/5_1.png"]
    # then process 0 (main): the rest, and the table
    out = sp.generate_table(pipe, table, tmp_path, num_samples=2, batch_size=2, state=Shard(0, 2), **KW)
    assert out.attrs == {"generated": 4, "skipped": 0} and files(tmp_path) == reference
    # resume: one image missing, one unreadable, a temporary file left by a killed run
    (tmp_path / "imgs" / "5_1.png").unlink()
    (tmp_path / "imgs" / "8_0.png").write_bytes(b"broken")
    (tmp_path / "imgs" / ".3_0.png.tmp").write_bytes(b"partial")
    out = sp.generate_table(pipe, table, tmp_path, num_samples=2, batch_size=2, **KW)
    assert out.attrs == {"generated": 2, "skipped": 4}   # only the 2 missing images are written
    assert files(tmp_path) == reference


def test_a_stale_table_is_removed_when_images_are_missing(pipe, tmp_path):
    table = table_of(ROWS)
    (tmp_path / "imgs").mkdir(parents=True)
    (tmp_path / "prompts.csv").write_text("stale\n")
    with pytest.raises(RuntimeError, match="images are missing after generation"):
        sp.generate_table(pipe, table, tmp_path, num_samples=1, batch_size=2, state=Shard(0, 2), **KW)
    assert not (tmp_path / "prompts.csv").exists()


def test_bad_tables_and_embeddings_are_refused_before_writing(pipe, tmp_path):
    table = table_of(ROWS)
    d = pipe.unet.config.cross_attention_dim
    with pytest.raises(UserError, match="lacks column guidance"):
        sp.generate_table(pipe, table.drop(columns=["guidance"]), tmp_path / "a", **KW)
    odd = table_of([(1, "a", 1, 7.5, SIZE + 1, SIZE, "")])
    with pytest.raises(UserError, match="multiples of the VAE's scale factor"):
        sp.generate_table(pipe, odd, tmp_path / "b", **KW)
    for bad in (torch.zeros(2, 77, d), torch.zeros(3, 77, d + 1), torch.zeros(3, d), [[0.0]]):
        with pytest.raises(UserError, match=f"shape \\(3, 77, {d}\\)"):
            sp.generate_table(pipe, table, tmp_path / "c", embeddings=bad, **KW)
    with pytest.raises(UserError, match="--batch_size"):
        sp.generate_table(pipe, table, tmp_path / "d", batch_size=0, **KW)
    with pytest.raises(UserError, match="--num_samples"):
        sp.generate_table(pipe, table, tmp_path / "e", num_samples=0, **KW)
    assert not any(tmp_path.iterdir())


def test_non_finite_latents_are_named(pipe, tmp_path):
    rows = [(1, "a", 1, 7.5, SIZE, SIZE, "")]
    E = sp.encode_prompts(pipe, ["a"])
    E[0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="denoised latents"):
        sp.generate_table(pipe, table_of(rows), tmp_path, embeddings=E, **KW)
    assert not list((tmp_path / "imgs").glob("*.png"))


def test_generation_equals_the_pipeline_call_for_a_row(pipe, tmp_path):
    """Independently of the module: the pipeline's own __call__ on the row's noise, LMS, 2 steps."""
    from diffusers import LMSDiscreteScheduler

    row = ROWS[1]
    sp.generate_table(pipe, table_of([row]), tmp_path, **KW)
    original = pipe.scheduler
    try:
        pipe.scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        g = torch.Generator("cpu").manual_seed(row[2])
        noise = torch.randn((1, pipe.unet.config.in_channels, SIZE // f, SIZE // f), generator=g)
        expected = pipe(row[1], height=SIZE, width=SIZE, num_inference_steps=2, guidance_scale=row[3],
                        latents=noise).images[0]
    finally:
        pipe.scheduler = original
    with Image.open(tmp_path / "imgs" / "5_0.png") as im:
        ours = np.asarray(im, dtype=np.int16)
    assert np.abs(ours - np.asarray(expected, dtype=np.int16)).max() <= 1

"""Generation (docs/method.md §5) through the real CLI on a tiny random pipeline: invariants, resume, processes.

Every CLI run uses one CPU thread per process (OMP_NUM_THREADS=1, what torchrun gives each worker),
so that runs are compared bit for bit: float reductions may split differently over other thread counts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO, run_script

CLI = "execs/generate_images.py"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = "12"

# Two image sizes (two batch groups), per-row guidance, a row without a seed, sparse case numbers,
# a carried column.
ROWS = [
    (10, "a red square on a blue field", 1234, 7.5, 32, 32, "a"),
    (11, "a cat", 99, 3.0, 32, 32, "b"),
    (12, "two green circles", 4261553411, 12.0, 48, 32, "a"),
    (20, "a painting of a lighthouse", "", 7.5, 32, 32, "b"),
    (21, "night sky", 7, 9.0, 32, 32, "a"),
    (30, "a bicycle leaning on a wall", 2024, 5.0, 48, 32, "b"),
    (31, "an empty room, oil on canvas", 31337, 7.0, 32, 32, "a"),
]


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    pd.DataFrame(ROWS, columns=["case_number", "prompt", "evaluation_seed", "evaluation_guidance",
                                "sd_image_width", "sd_image_height", "category"]).to_csv(path, index=False)
    return path


def cli_args(prompts_csv, model, save_path, *extra):
    return ["--prompts_path", prompts_csv, "--model_id", model, "--save_path", save_path, "--ddim_steps", STEPS,
            "--no-progress", *extra]


def folder_bytes(run_dir: Path) -> dict[str, bytes]:
    """Every file under imgs/ (hidden ones too) and prompts.csv, by relative path."""
    files = {f"imgs/{p.name}": p.read_bytes() for p in sorted((run_dir / "imgs").iterdir())}
    files["prompts.csv"] = (run_dir / "prompts.csv").read_bytes()
    return files


def readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_pipeline_dir, prompts_csv) -> Path:
    """An uninterrupted one-process run, batch size 3."""
    out = tmp_path_factory.mktemp("reference")
    run_script(CLI, *cli_args(prompts_csv, tiny_pipeline_dir, out, "--batch_size", "3"), env=ONE_THREAD)
    return out


def test_cli_writes_the_run_folder(reference):
    images = pd.read_csv(reference / "prompts.csv")
    assert list(images["case_number"]) == [r[0] for r in ROWS]
    assert list(images.columns[:9]) == ["case_number", "sample", "file_name", "prompt", "seed", "guidance",
                                        "width", "height", "seed_source"]
    assert "category" in images.columns  # carried along
    no_seed = images.set_index("case_number").loc[20]
    assert (no_seed["seed"], no_seed["seed_source"]) == (20, "case_number")
    for rec in images.itertuples():
        with Image.open(reference / rec.file_name) as im:
            assert im.size == (rec.width, rec.height)
    assert sorted(p.name for p in (reference / "imgs").iterdir()) == sorted(f"{r[0]}_0.png" for r in ROWS)
    assert (reference / "grid.png").is_file() and (reference / "config.json").is_file()


def test_batch_size_does_not_change_images(tmp_path, tiny_pipeline_dir, prompts_csv, reference):
    run_script(CLI, *cli_args(prompts_csv, tiny_pipeline_dir, tmp_path, "--batch_size", "1"), env=ONE_THREAD)
    assert folder_bytes(tmp_path) == folder_bytes(reference)


def test_resume_after_sigkill_gives_the_uninterrupted_images(tmp_path, tiny_pipeline_dir, prompts_csv, reference):
    """Kill the run as soon as its first image exists; the rerun generates only the missing ones.

    No clock: the watcher polls until the first PNG appears or the process ends, and the test fails
    unless the kill left the run unfinished (some images missing), so it cannot pass uninterrupted.
    """
    args = cli_args(prompts_csv, tiny_pipeline_dir, tmp_path, "--batch_size", "1")
    proc = subprocess.Popen([sys.executable, str(REPO / CLI), *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **ONE_THREAD})
    try:
        while proc.poll() is None:
            pngs = list((tmp_path / "imgs").glob("*.png")) if (tmp_path / "imgs").is_dir() else []
            assert all(readable(p) for p in pngs), "a PNG under its final name was not readable"
            if pngs:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "imgs").glob("*.png")}
    assert 1 <= len(kept) < len(ROWS), f"the kill did not interrupt the run: {len(kept)} of {len(ROWS)} images"
    assert not (tmp_path / "prompts.csv").exists()  # killed mid-run: prompts.csv is written last
    assert all(readable(tmp_path / "imgs" / n) for n in kept)
    run_script(CLI, *args, env=ONE_THREAD)
    assert folder_bytes(tmp_path) == folder_bytes(reference)  # no leftover temporary file either
    # the images written before the kill were kept, not generated again
    assert {n: (tmp_path / "imgs" / n).stat().st_mtime_ns for n in kept} == kept


def test_row_order_does_not_change_images(tmp_path, tiny_pipeline_dir, prompts_csv, reference):
    """The same rows in reverse order (other batches, other batch neighbours): the same image files."""
    reversed_csv = tmp_path / "reversed.csv"
    pd.read_csv(prompts_csv).iloc[::-1].to_csv(reversed_csv, index=False)
    out = tmp_path / "run"
    run_script(CLI, *cli_args(reversed_csv, tiny_pipeline_dir, out, "--batch_size", "3"), env=ONE_THREAD)
    got = {k: v for k, v in folder_bytes(out).items() if k.startswith("imgs/")}
    expected = {k: v for k, v in folder_bytes(reference).items() if k.startswith("imgs/")}
    assert got == expected
    assert list(pd.read_csv(out / "prompts.csv")["case_number"]) == [r[0] for r in ROWS][::-1]


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_two_processes_equal_one(tmp_path, tiny_pipeline_dir, prompts_csv, reference):
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(REPO / CLI),
           *map(str, cli_args(prompts_csv, tiny_pipeline_dir, tmp_path, "--batch_size", "3"))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ONE_THREAD})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert folder_bytes(tmp_path) == folder_bytes(reference)
    config = pd.read_json(tmp_path / "config.json", typ="series")
    assert config["run"]["num_processes"] == 2


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_pipeline_dir, prompts_csv, reference):
    bad_seed = tmp_path / "bad_seed.csv"
    bad_seed.write_text("case_number,prompt,evaluation_seed\n0,a cat,12\n1,a dog,twelve\n")
    out = tmp_path / "out"
    proc = run_script(CLI, "--prompts_path", bad_seed, "--model_id", tiny_pipeline_dir, "--save_path", out,
                      check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"generate_images.py: error: prompts file {bad_seed} row 1 column 'evaluation_seed' (case_number 1): "
        f"seed must be an integer in [0, 2**64), got 'twelve'"]
    assert not out.exists()
    # Other settings into a finished run's folder: refused, the folder left as it was.
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    proc = run_script(CLI, *cli_args(prompts_csv, tiny_pipeline_dir, reference, "--ddim_steps", "7"),
                      check=False)
    assert proc.returncode == 2 and "other settings (steps: 12 there, 7 now)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


@pytest.mark.parametrize("extra, message", [
    (["--image_size", "33"], "--image_size must be a positive multiple of 2"),
    (["--ckpt", "nope.pt"], "--ckpt nope.pt does not exist"),
    (["--dtype", "fp16", "--device", "cpu"], "--dtype fp16 is not supported on the CPU"),
    (["--concept", "a/b"], "--concept 'a/b' must be a plain folder name"),
    (["--df_start", "99"], "select no row"),
    (["--from_case", "40"], "no case of"),
])
def test_bad_flags_fail_before_anything_is_written(tmp_path, tiny_pipeline_dir, prompts_csv, extra, message):
    """The same checks in process (run_cli turns each UserError into one line and exit 2, as above)."""
    sys.path.insert(0, str(REPO / "execs"))
    import generate_images
    from utils.errors import UserError

    out = tmp_path / "out"
    args = generate_images.parse_args([*map(str, cli_args(prompts_csv, tiny_pipeline_dir, out)), *extra])
    with pytest.raises(UserError) as err:
        generate_images.main(args)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Library-level checks (in process)
# ---------------------------------------------------------------------------------------------



def test_embeddings_equal_prompts_when_they_are_E_of_the_prompts(tmp_path, pipe, prompts_csv):
    from utils.generate.sampling import encode_prompts, generate_table
    from utils.prompts import read_prompt_table

    table = read_prompt_table(prompts_csv, df_length=3, image_size=16)
    kw = dict(num_samples=2, steps=3, batch_size=4, progress=False, grid=False)
    generate_table(pipe, table, tmp_path / "prompts", **kw)
    E = encode_prompts(pipe, list(table["prompt"]))
    generate_table(pipe, table, tmp_path / "tensor", embeddings=E, **kw)
    by_case = dict(zip(table["case_number"], E))
    generate_table(pipe, table, tmp_path / "callable", embeddings=lambda row: by_case[row["case_number"]], **kw)
    ref = folder_bytes(tmp_path / "prompts")
    assert sorted(k for k in ref if k.endswith(".png")) == [f"imgs/{c}_{k}.png" for c in (10, 11, 12) for k in (0, 1)]
    assert folder_bytes(tmp_path / "tensor") == ref
    assert folder_bytes(tmp_path / "callable") == ref
    # and other embeddings give other images
    generate_table(pipe, table, tmp_path / "other", embeddings=E + 1.0, **kw)
    assert folder_bytes(tmp_path / "other")["imgs/10_0.png"] != ref["imgs/10_0.png"]


@pytest.mark.parametrize("name", ["lms", "ddim", "dpm++"])
def test_sampler_matches_the_diffusers_pipeline(tmp_path, pipe, prompts_csv, name):
    """Same prompt, seed, guidance and scheduler through StableDiffusionPipeline.__call__: same image."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LMSDiscreteScheduler

    from utils.generate.sampling import SD_BETAS, generate_table, initial_noise
    from utils.prompts import read_prompt_table

    table = read_prompt_table(prompts_csv, df_length=1, image_size=32)
    generate_table(pipe, table, tmp_path, steps=5, scheduler=name, progress=False, grid=False)
    row = table.iloc[0]
    scheduler = {"lms": lambda: LMSDiscreteScheduler(**SD_BETAS),
                 "ddim": lambda: DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                 "dpm++": lambda: DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="dpmsolver++")}[name]()
    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler
        expected = pipe(row["prompt"], height=32, width=32, num_inference_steps=5, guidance_scale=row["guidance"],
                        latents=initial_noise(row["seed"], 1, 4, 16, 16)).images[0]
    finally:
        pipe.scheduler = original
    ours = np.asarray(Image.open(tmp_path / "imgs" / f"{row['case_number']}_0.png"), dtype=np.int16)
    # The pipeline runs the UNet on 2 latents, we on 4 (a lone row runs with a copy): BLAS kernels
    # differ in the last bits, which may move a pixel by one level.
    assert np.abs(ours - np.asarray(expected, dtype=np.int16)).max() <= 1


def test_initial_noise_is_one_cpu_draw_per_row():
    from utils.generate.sampling import initial_noise

    a = initial_noise(4261553411, 2, 4, 8, 8)
    g = torch.Generator("cpu").manual_seed(4261553411)
    assert torch.equal(a, torch.randn((2, 4, 8, 8), generator=g))
    assert not torch.equal(a[0], a[1])


def test_plan_batches_groups_sizes_and_keeps_samples_together(prompts_csv):
    from utils.generate.sampling import plan_batches
    from utils.prompts import read_prompt_table

    table = read_prompt_table(prompts_csv)
    assert plan_batches(table, 1, 3) == [[0, 1, 3], [4, 6], [2, 5]]
    assert plan_batches(table, 2, 3) == [[0], [1], [3], [4], [6], [2], [5]]
    assert plan_batches(table, 2, 4) == [[0, 1], [3, 4], [6], [2, 5]]

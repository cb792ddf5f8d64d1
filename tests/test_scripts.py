"""Every paper script (scripts/*.sh) runs to completion, as shipped, on a tiny random pipeline.

The scripts take MODEL, DEVICE, DATA (the prompt CSVs) and STEPS from the environment, with the
paper's values as defaults. Here MODEL is a tiny random Stable Diffusion pipeline, DATA a few rows of
each shipped CSV at 16 x 16 pixels (I2P's empty-prompt case 2260 included), STEPS 2, and the
scorers' default model ids resolve to tiny random models in a private Hugging Face cache
(`tests/tiny.py::offline_scorers`). The numbers are meaningless; what is tested is that every
stage runs and writes what the next stage reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

PAPER_SCRIPTS = ["nudity", "unsafe", "art", "object", "attack"]


@pytest.fixture(scope="module")
def script_env(tmp_path_factory, tiny_pipeline_dir, scorer_env) -> dict:
    from tiny import write_small_datasets

    env = dict(scorer_env)
    data = write_small_datasets(tmp_path_factory.mktemp("data"), image_size=16, always={"i2p.csv": [2260]})
    env.update(MODEL=str(tiny_pipeline_dir), DEVICE="cpu", DATA=str(data), STEPS="2", OMP_NUM_THREADS="1",
               ESD_ITERS="2", ATTACK_ITERS="1", ATTACK_TIMESTEPS="500",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


def run_sh(name: str, env: dict, out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(REPO / "scripts" / f"{name}.sh")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env, "OUT": str(out)}, timeout=1800)
    assert proc.returncode == 0, f"scripts/{name}.sh exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def images(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "imgs").glob("*.png"))


def test_paper_defaults_are_the_scripts_defaults():
    """Without the environment variables the scripts use the paper's model, data and steps."""
    for name in PAPER_SCRIPTS:
        text = (REPO / "scripts" / f"{name}.sh").read_text()
        for default in ("MODEL=${MODEL:-CompVis/stable-diffusion-v1-4}", "DEVICE=${DEVICE:-cuda}",
                        "DATA=${DATA:-dataset}", "STEPS=${STEPS:-50}"):
            assert default in text, (name, default)
        commands = [line for line in text.splitlines() if line.startswith("python ")]
        assert commands and not [c for c in commands if "dataset/" in c], f"{name}.sh reads a CSV outside $DATA"


@pytest.mark.slow
def test_nudity_sh(script_env, tmp_path):
    out = tmp_path / "out"
    run_sh("nudity", script_env, out)
    rates = json.loads((out / "rece" / "detect_rate.json").read_text())
    assert rates["metric"] == "nudity_rate" and {"base", "epoch_1", "epoch_2", "epoch_3"} <= set(rates)
    n_i2p = len(pd.read_csv(Path(script_env["DATA"]) / "i2p.csv"))
    for run in ("i2p-sd", "i2p-uce", "i2p-rece"):
        assert len(images(out / run / "nudity")) == n_i2p and "2260_0.png" in images(out / run / "nudity")
    assert list((out / "coco-rece").glob("fid*.json")) and list((out / "coco-rece").glob("clip*.json"))
    for run in ("ringabell-uce", "ringabell-rece"):
        assert json.loads((out / run / "asr.json").read_text())["n_images"] == 3
    assert list(out.glob("table1*"))


@pytest.mark.slow
def test_unsafe_sh(script_env, tmp_path):
    out = tmp_path / "out"
    run_sh("unsafe", script_env, out)
    rates = json.loads((out / "rece" / "detect_rate.json").read_text())
    assert rates["metric"] == "q16_rate" and {"base", "epoch_1", "epoch_2"} <= set(rates)
    from utils.erase.concepts import I2P_CONCEPTS
    assert json.loads((out / "rece" / "config.json").read_text())["settings"]["concepts"] == I2P_CONCEPTS
    for run in ("i2p-sd", "i2p-rece"):
        assert list((out / run / "nudity").glob("q16*.json"))
    assert list(out.glob("table2*"))


@pytest.mark.slow
def test_art_sh(script_env, tmp_path):
    out = tmp_path / "out"
    run_sh("art", script_env, out)
    settings = json.loads((out / "rece" / "config.json").read_text())["settings"]
    assert settings["num_rece_preserve_texts"] == 1 + 1733  # '' and every other artist of the 1,734
    rates = json.loads((out / "rece" / "detect_rate.json").read_text())
    assert rates["metric"] == "style_rate" and {"base", "epoch_1"} <= set(rates)
    assert list((out / "niche-rece").glob("lpips*.json"))
    summary = json.loads((out / "niche-rece" / "artists_kelly-mckernan.json").read_text()) \
        if (out / "niche-rece" / "artists_kelly-mckernan.json").exists() else \
        json.loads(next((out / "niche-rece").glob("artists_*.json")).read_text())
    assert summary["target_artist"] == "Kelly McKernan" and len(summary["candidates"]) == 5


@pytest.mark.slow
def test_object_sh(script_env, tmp_path):
    out = tmp_path / "out"
    run_sh("object", script_env, out)
    rates = json.loads((out / "rece-church" / "detect_rate.json").read_text())
    # the stand-in classifier says "tench" for every image: UCE's target accuracy is 0, so by the
    # authors' rule RECE's epochs are not validated and UCE is kept
    assert rates["metric"] == "target_accuracy" and rates["uce"] == 0 and rates["best"] == "uce"
    run = out / "imagenette-rece-church"
    assert len(images(run)) == 10 and list(run.glob("*church*.json"))


@pytest.mark.slow
def test_attack_sh(script_env, tmp_path):
    out = tmp_path / "out"
    run_sh("attack", script_env, out)
    vangogh = json.loads((out / "ringabell-vangogh-rece" / "asr.json").read_text())
    assert vangogh["metric"] == "style_rate" and vangogh["num_prompts"] == 1  # case 20 of the small copy
    rates = json.loads((out / "rece-vangogh" / "detect_rate.json").read_text())
    assert rates["metric"] == "style_rate" and rates["validation_csv"].endswith("validation_big_artists.csv")
    assert list(out.glob("table5-nudity*"))

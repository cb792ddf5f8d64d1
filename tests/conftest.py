"""Shared fixtures: tiny pipelines built offline; the public datasets ship in dataset/."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def gram_cache_dir(tmp_path_factory) -> Path:
    """The erasure CLIs' on-disk Gram cache (docs/models.md), private to this test session."""
    folder = tmp_path_factory.mktemp("gram_cache")
    os.environ["RECE_TOOLKIT_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A saved diffusers StableDiffusionPipeline with random tiny weights (built once per session)."""
    from tiny import build_random_pipeline

    folder = tmp_path_factory.mktemp("tiny_sd")
    build_random_pipeline(folder, "tiny", seed=0)
    return folder


def run_script(script: str, *args, check: bool = True, env: dict | None = None, timeout: int = 600):
    """Run a project CLI as a user would (`python script args`), from the repo root."""
    cmd = [sys.executable, str(REPO / script), *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-3000:]}")
    return proc

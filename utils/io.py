"""Files written safely: atomic writes, run directories that record their config first.

Every output of the toolkit goes through these helpers so that a killed process never leaves a
half-written file behind, and a rerun never silently replaces an earlier result.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_sha256(path) -> str:
    """sha256 of a file, read in 1 MiB chunks (recorded wherever a result depends on a file)."""
    import hashlib

    h = hashlib.sha256()
    with open(os.fspath(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def natural_key(name: str):
    """'10_0.png' after '9_0.png': numbers in names compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(name))]


def quiet_libraries(diffusers: bool = True) -> None:
    """Silence the libraries' info chatter (load bars, deprecation notes, offline retry notes); our
    own tqdm bars stay. `diffusers=False` leaves diffusers unimported (the scorers' lighter path)."""
    import warnings

    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if diffusers:
        import diffusers as _diffusers

        _diffusers.utils.logging.set_verbosity_error()
        _diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def slug(text, limit: int = 60) -> str:
    """A file-name-safe form of a setting, e.g. 'Van Gogh' -> 'van_gogh' (run and result names)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).strip().lower()).strip("_")
    return s[:limit] or "x"


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_jsonl(path, records) -> None:
    """Write one JSON object per line, atomically (per-image records beside a summary)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r, default=_json_default) + "\n")


def write_json(path, obj) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__}")


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def environment_info() -> dict:
    """Versions that decide results: recorded in every config.json and results file."""
    import platform

    info = {"python": platform.python_version(), "git": git_revision(), "command": " ".join(sys.argv)}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("torch", "diffusers", "transformers", "accelerate", "nudenet", "safetensors"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


def prepare_run_dir(path, config: dict, files: tuple[str, ...], overwrite: bool = False) -> Path:
    """Create run folder `path` and write `config.json` into it first.

    `files` names the outputs this run will write. If any of them already exists the run is refused
    (one line, exit 2) unless `overwrite` is set, so an earlier result is never silently replaced.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--save_path {path} exists and is not a directory")
    if not overwrite:
        existing = [f for f in files if (path / f).exists()]
        if existing:
            raise UserError(f"--save_path {path} already holds {existing[0]}; choose another folder or pass --overwrite")
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "config.json", {**config, "environment": environment_info()})
    return path


def prepare_resumable_run_dir(path, config: dict, outputs: tuple[str, ...], overwrite: bool = False,
                              write: bool = True) -> tuple[Path, bool]:
    """Create or resume run folder `path`; return (path, resumed).

    `config["settings"]` holds what decides the outputs (inputs, model, sampler, ...); the rest of
    `config` (batch size, device, process count) may change between a run and its resume. A folder
    whose config.json has the same settings is resumed; other settings are refused in one line unless
    `overwrite`, which first deletes `outputs` (files or folders) and then writes the new config (it
    never resumes). A folder holding outputs but no config.json is refused likewise. `write=False` only checks (other
    processes of a distributed run check; the main process writes).
    """
    import shutil

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--save_path {path} exists and is not a directory")
    settings = json.loads(json.dumps(config.get("settings", {}), default=_json_default))
    cfg_file = path / "config.json"
    present = [f for f in outputs if (path / f).exists()]
    resumed = False
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text()).get("settings")
        except (json.JSONDecodeError, OSError, AttributeError):
            old = None
        if overwrite:
            pass
        elif old == settings:
            resumed = True
        else:
            if not isinstance(old, dict):
                raise UserError(f"--save_path {path} holds a config.json without readable settings; "
                                f"choose another folder or pass --overwrite")
            key = next(k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
            raise UserError(f"--save_path {path} holds a run with other settings ({key}: {old.get(key)!r} there, "
                            f"{settings.get(key)!r} now); choose another folder, or pass --overwrite to replace it")
    elif present and not overwrite:
        raise UserError(f"--save_path {path} already holds {present[0]} but no config.json; choose another "
                        f"folder or pass --overwrite")
    if write:
        if not resumed:
            for f in present:
                p = path / f
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        path.mkdir(parents=True, exist_ok=True)
        write_json(cfg_file, {**config, "resumed": resumed, "environment": environment_info()})
    return path, resumed

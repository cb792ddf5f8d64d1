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

from utils.errors import UserError, os_error_message, os_error_reason

REPO_ROOT = Path(__file__).resolve().parent.parent
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    An operating-system error (a parent that is a file, a read-only folder, a full disk) becomes a
    `UserError` naming `path`; the temporary file is removed and nothing is left half-written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp")
        os.close(fd)
    except OSError as e:
        raise UserError(f"cannot write {path}: {os_error_reason(e)}") from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {os_error_reason(e)}") from None
        if "IoError" in str(e) or "No space left" in str(e):  # safetensors reports a failed write so
            raise UserError(f"cannot write {path}: {str(e).splitlines()[0][:200]}") from None
        raise


def make_dirs(path, flag: str = "--save_path") -> Path:
    """`mkdir -p path`, or one line naming the path and the reason (a parent is a file, read-only, ...)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder: {os_error_message(e)}") from None
    if not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder")
    return path


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def tensor_file_kind(path, what: str = "checkpoint") -> str:
    """'safetensors' or 'torch' by the file's first bytes (not its suffix), or one line saying what it is.

    A safetensors file with another suffix is recognised as such; a Git LFS pointer, an empty or
    truncated file, a text file or other bytes are named as what they are.
    """
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
            n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
            if n is not None and 2 <= n <= size - 8 and head[8:9] == b"{":
                f.seek(8)
                header = f.read(n)
            else:
                header = None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {os_error_reason(e)}") from None
    if size == 0:
        raise UserError(f"{what} {path} is an empty file")
    if head.startswith(LFS_POINTER):
        raise UserError(f"{what} {path} is a Git LFS pointer, not the weights: fetch the real file with "
                        f"`git lfs pull` (or download it again)")
    if header is not None:
        try:
            meta = json.loads(header)
        except (UnicodeDecodeError, ValueError):
            meta = None
        if isinstance(meta, dict):
            ends = [v["data_offsets"][1] for k, v in meta.items()
                    if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
                    and len(v["data_offsets"]) == 2]
            if ends and 8 + n + max(ends) > size:
                raise UserError(f"{what} {path} is a truncated safetensors file ({size} bytes, its header "
                                f"needs {8 + n + max(ends)}): download or copy it again")
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch"  # torch.save's zip format
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "torch"  # legacy (non-zip) torch.save: a pickle stream
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        text = head[:e.start].decode("utf-8") if e.start > len(head) - 4 else None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        raise UserError(f"{what} {path} is a text file, not a torch or safetensors file (it begins {first!r})")
    raise UserError(f"{what} {path} is not a torch or safetensors file (unrecognised bytes "
                    f"{head[:8].hex(' ')}); expected a .safetensors file or a torch.save state_dict")


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


def run_tool() -> str | None:
    """The CLI of this process, relative to the repository (e.g. 'execs/generate_images.py'), or None
    when the process was not started from one of the repository's scripts (Python use, tests)."""
    main = sys.modules.get("__main__")
    f = getattr(main, "__file__", None)
    if not f:
        return None
    try:
        return Path(f).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return None


def stale_results(path) -> tuple[str, ...]:
    """Result files in run folder `path` that describe its current images (summaries `*.json` but
    config.json, per-image records `*.jsonl`, cached features `*.npz`): outputs to remove with the
    images when `--overwrite` replaces them, so that no score of the old images survives."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return ()  # not a run folder: its files are not ours to remove
    return tuple(sorted(p.name for p in path.iterdir() if p.is_file() and p.name != "config.json"
                        and p.suffix in (".json", ".jsonl", ".npz")))


def prepare_run_dir(path, config: dict, files: tuple[str, ...], overwrite: bool = False, *, write: bool = True,
                    flag: str = "--save_path", tool: str | None = None) -> Path:
    """Claim run folder `path` for a run that cannot resume: `config.json` first, then the outputs.

    `files` names the outputs this run will write. If any of them already exists the run is refused
    (one line, exit 2) unless `overwrite`, which deletes them first, so an earlier result is never
    silently replaced and never mixed with a new one. See `prepare_resumable_run_dir` for `write`,
    `flag` and `tool`.
    """
    return _claim(path, config, files, overwrite, write=write, resume=False, flag=flag, tool=tool)[0]


def prepare_resumable_run_dir(path, config: dict, outputs: tuple[str, ...], overwrite: bool = False,
                              write: bool = True, *, flag: str = "--save_path",
                              tool: str | None = None) -> tuple[Path, bool]:
    """Create or resume run folder `path`; return (path, resumed).

    `config["settings"]` holds what decides the outputs (inputs, model, sampler, ...); the rest of
    `config` (batch size, device, process count) may change between a run and its resume. A folder
    whose config.json has the same settings is resumed; other settings are refused in one line unless
    `overwrite`, which first deletes `outputs` (files or folders: the images, their scores) and then
    writes the new config (it never resumes). A folder holding outputs but no config.json is refused
    likewise.

    The one run-folder claim of every CLI:
    - `write=False` only checks: call it with the inputs checks, before any model loads; call it
      again with `write=True` once the run can start (the model loaded), so that a failed load
      leaves no config.json behind to block the corrected rerun. (Other processes of a distributed
      run only check; the main process writes.)
    - `config.json` records `tool`, the CLI that made the folder (default: this process's script,
      `run_tool()`); a folder made by another CLI is refused, even with `overwrite`.
    - `flag` names the folder's flag in messages (`--save_path`, `--img_path`, ...).
    """
    return _claim(path, config, outputs, overwrite, write=write, resume=True, flag=flag, tool=tool)


def _claim(path, config: dict, outputs, overwrite: bool, *, write: bool, resume: bool, flag: str,
           tool: str | None) -> tuple[Path, bool]:
    import shutil

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder")
    for parent in path.parents:  # a file where a folder must be: say so now, not at the first write
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    tool = tool or run_tool()
    settings = json.loads(json.dumps(config.get("settings", {}), default=_json_default))
    cfg_file = path / "config.json"
    present = [f for f in dict.fromkeys(outputs) if (path / f).exists() or (path / f).is_symlink()]
    resumed = False
    if cfg_file.is_file():
        try:
            old_cfg = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            old_cfg = None
        old_tool = old_cfg.get("tool") if isinstance(old_cfg, dict) else None
        if old_tool and tool and old_tool != tool:
            raise UserError(f"{flag} {path} holds a run of {old_tool}, not of {tool}; choose another folder")
        old = old_cfg.get("settings") if isinstance(old_cfg, dict) else None
        if overwrite:
            pass
        elif resume and old == settings:
            resumed = True
        elif not resume:
            if present:
                raise UserError(f"{flag} {path} already holds {present[0]}; choose another folder or pass --overwrite")
        else:
            if not isinstance(old, dict):
                raise UserError(f"{flag} {path} holds a config.json without readable settings; "
                                f"choose another folder or pass --overwrite")
            key = next(k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
            raise UserError(f"{flag} {path} holds a run with other settings ({key}: {old.get(key)!r} there, "
                            f"{settings.get(key)!r} now); choose another folder, or pass --overwrite to replace it")
    elif present and not overwrite:
        raise UserError(f"{flag} {path} already holds {present[0]}" + (" but no config.json" if resume else "")
                        + "; choose another folder or pass --overwrite")
    if write:
        if not resumed:  # --overwrite, or a fresh claim: nothing of an earlier run may mix with this one
            for f in present:
                p = path / f
                try:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass  # a concurrent identical run removed it first
                except OSError as e:
                    raise UserError(f"{flag} {path}: cannot remove the earlier {f}: {os_error_message(e)}") from None
        make_dirs(path, flag)
        record = {**config, "tool": tool} if tool else dict(config)
        if resume:
            record["resumed"] = resumed
        write_json(cfg_file, {**record, "environment": environment_info()})
    return path, resumed

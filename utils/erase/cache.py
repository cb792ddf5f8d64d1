"""The base model's work, done once: Gram sums kept on disk between runs (docs/models.md, "The cache").

The closed-form edit sees the base model only through d x d Gram sums (docs/method.md §2b, §3): the
weights' `sum_l W_l^T W_l` (and, from a start checkpoint, `sum W_a^T W_a`, `sum W_a^T W_orig`) and each
preserve set's `sum_j E(p_j)^T E(p_j)`. They depend on the model and the texts only, so a run stores them
here and the next run on the same model skips the fp64 pass over the weights and the text encoding of
the preserve sets (1,733 artists: minutes on a CPU).

One entry = one safetensors file of float64 tensors. Its name is the sha256 of what it is *for* (kind,
model, token mode, texts); its metadata hold the fingerprint of the files it was computed *from* (size,
modification time, sha256 of the safetensors header, and for the weights the sha256 of the edited
tensors' bytes) and a sha256 of its own tensors. On reading:
- stale: the fingerprint differs (the model at that path changed) -> recomputed and replaced;
- corrupt: the file does not parse, lacks a tensor, or its checksum, shape or finiteness fails ->
  recomputed and replaced.
Entries are written atomically. `status` records, per entry, hit / miss / stale / corrupt / off, and
the CLIs write it to timing.json.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

from ..io import atomic_path


def location_key(name):
    """How an entry names a model or checkpoint: an existing local path resolved (so a relative and an
    absolute path, or another working directory, find the same entry), anything else (a Hub id) as is."""
    if name is None:
        return None
    path = Path(str(name))
    return str(path.resolve()) if path.exists() else str(name)

FORMAT = "rece-toolkit/gram-cache/v1"
ENV = "RECE_TOOLKIT_CACHE"


def default_cache_dir() -> Path:
    """$RECE_TOOLKIT_CACHE, else $XDG_CACHE_HOME/rece-toolkit, else ~/.cache/rece-toolkit."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "rece-toolkit"


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the raw bytes of tensors in key order (contiguous CPU copies of each)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def texts_sha256(texts: list[str]) -> str:
    return _sha256_json(list(texts))


class GramCache:
    """Get-or-compute of float64 Gram entries in `folder` (None: off, everything computed)."""

    def __init__(self, folder: Path | str | None):
        self.folder = None if folder is None else Path(folder).expanduser()
        self.status: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def _path(self, identity: dict) -> Path:
        return self.folder / f"{_sha256_json(identity)}.safetensors"

    def _read(self, path: Path, fingerprint: dict, shapes: dict) -> tuple[str, dict | None]:
        from safetensors import safe_open

        if not path.exists():
            return "miss", None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:
            return "corrupt", None
        if meta.get("format") != FORMAT:
            return "corrupt", None
        if meta.get("fingerprint") != json.dumps(fingerprint, sort_keys=True, default=str):
            return "stale", None
        ok = (set(tensors) == set(shapes) and all(tuple(tensors[k].shape) == tuple(s) for k, s in shapes.items())
              and all(t.dtype == torch.float64 and bool(torch.isfinite(t).all()) for t in tensors.values())
              and meta.get("sha256") == tensors_sha256(tensors))
        return ("hit", tensors) if ok else ("corrupt", None)

    def get(self, name: str, identity: dict, fingerprint: dict | None, shapes: dict,
            compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The entry for `identity`, read if valid, else computed by `compute()` and stored.

        `shapes`: the expected shape of each tensor; `fingerprint`: what the entry was computed from
        (None: cannot be fingerprinted, so neither read nor written). `name` labels `status`.
        """
        if not self.enabled or fingerprint is None:
            self.status[name] = "off"
            return compute()
        path = self._path(identity)
        state, tensors = self._read(path, fingerprint, shapes)
        self.status[name] = state
        if tensors is not None:
            return tensors
        tensors = {k: v.double().contiguous() for k, v in compute().items()}
        meta = {"format": FORMAT, "identity": json.dumps(identity, sort_keys=True, default=str),
                "fingerprint": json.dumps(fingerprint, sort_keys=True, default=str),
                "sha256": tensors_sha256(tensors)}
        try:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata=meta)
        except OSError as e:  # a read-only or full cache never fails the run
            self.status[name] = f"{state} (not stored: {type(e).__name__})"
        return tensors

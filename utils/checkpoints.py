"""Edited-weight checkpoints (docs/method.md §8).

The toolkit writes a safetensors file holding only the edited `attn2.to_k/to_v.weight` tensors under
their UNet state_dict keys, with metadata (base model, method, concepts, settings). It reads:
- that format;
- a full UNet state_dict saved with `torch.save` (`.pt`, `.bin`, `.ckpt`), as the RECE and UCE
  authors release them, loaded with `weights_only=True` only: a pickle that would run code is refused;
- a full UNet `.safetensors`;
- a diffusers UNet folder (`config.json` + `diffusion_pytorch_model.*`), or a pipeline folder's `unet/`.
Every tensor is checked against the base model's shapes; the first mismatching key is named.

A checkpoint is applied whole: every tensor it holds replaces the UNet's tensor of the same key, the
rest of the UNet stays the base model's. A full UNet (an ESD-u release changes resnets, self-attention,
feed-forward layers, ...) therefore gives exactly that UNet; our files give the base model plus their
tensors. A file of ours made on top of a foreign checkpoint (`train.py --target_ckpt esd.pt`) keeps
only its own tensors and records that checkpoint as its `parent` (path, sha256, size): loading it
applies the parent first, then its own tensors (`Checkpoint.chain`).
"""
from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import UserError, check_finite
from utils.io import atomic_path, file_sha256, tensor_file_kind
from utils.models import CROSS_ATTN_KEY, UNET_WEIGHT_FILES

FORMAT = "rece-toolkit/edited-attn2/v1"          # UCE / RECE: attn2.to_k / to_v matrices only
TENSORS_FORMAT = "rece-toolkit/unet-tensors/v1"  # any subset of UNet tensors (ESD's trained set)


def save_edited_weights(path, weights: dict[str, torch.Tensor], metadata: dict, format: str = FORMAT) -> Path:
    """Write the edited tensors (fp32, contiguous) and JSON-encoded metadata, atomically.

    A `parent` entry in `metadata` (from `parent_record`) names a checkpoint to apply before this one."""
    from safetensors.torch import save_file

    # clone: row views of one stacked tensor share storage, which safetensors refuses
    tensors = {k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in weights.items()}
    meta = {"format": format}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return _decode(f.metadata() or {})


def _folder_weights(folder: Path) -> Path:
    for sub in ("", "unet"):
        for name in UNET_WEIGHT_FILES:
            p = folder / sub / name
            if p.is_file():
                return p
    raise UserError(f"checkpoint folder {folder} is not a diffusers UNet folder "
                    f"(no diffusion_pytorch_model.safetensors or .bin in it or in unet/)")


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors of a checkpoint file (memory-mapped where possible) and its metadata.

    The format comes from the file's bytes, not its suffix (`utils.io.tensor_file_kind`): a
    safetensors file named .bin is read as one; an LFS pointer, a text file or other bytes are named.
    """
    if tensor_file_kind(path, "checkpoint") == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = list(f.keys())
                # Read only what can be edited; shapes of the rest come from the header.
                tensors = {k: f.get_tensor(k) if CROSS_ATTN_KEY.search(k) else f.get_slice(k) for k in keys}
        except (SafetensorError, OSError) as e:
            raise UserError(f"checkpoint {path} is not a readable safetensors file ({e})")
        return tensors, meta
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zipfile" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) torch.save
    except pickle.UnpicklingError as e:
        lines = [l.strip() for l in str(e).splitlines() if "Unsupported" in l or "WeightsUnpickler" in l]
        first = (lines[0] if lines else type(e).__name__)[:160]
        raise UserError(f"checkpoint {path} was refused: it is not a plain tensor state_dict and loading it "
                        f"would run code (weights_only=True: {first})")
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise UserError(f"checkpoint {path} could not be read as a torch state_dict ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''})")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} does not hold a UNet state_dict (a dict of tensors)")
    return obj, {}


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t.get_shape())


def _materialize(t) -> torch.Tensor:
    """A tensor from `_load_tensors` (a safetensors slice is read only now)."""
    return t if isinstance(t, torch.Tensor) else t[:]


# ---------------------------------------------------------------------------------------------
# Applying a checkpoint: every tensor it holds, checked by key and shape against the UNet
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint checked against a UNet: its file, the UNet keys it holds, its metadata, and the
    parent checkpoint that must be applied before it (our files made on top of a foreign checkpoint)."""
    path: Path
    keys: tuple[str, ...]
    metadata: dict
    parent: "Checkpoint | None" = None

    def chain(self) -> list["Checkpoint"]:
        """This checkpoint and its ancestors, the oldest first (the order in which they apply)."""
        out, c = [], self
        while c is not None:
            out.append(c)
            c = c.parent
        return out[::-1]


def _decode(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def parent_record(ckpt: Checkpoint) -> dict:
    """What a checkpoint made on top of `ckpt` stores (metadata key `parent`) to find and verify it."""
    return {"path": str(ckpt.path.resolve()), "sha256": file_sha256(ckpt.path), "bytes": ckpt.path.stat().st_size}


def _find_parent(child: Path, record: dict) -> Path:
    """The recorded parent file, or a file of the same name beside the child (a moved run folder)."""
    if not isinstance(record, dict) or "path" not in record or "sha256" not in record:
        raise UserError(f"checkpoint {child} has an unreadable parent record ({record!r})")
    recorded = Path(record["path"])
    for cand in (recorded, child.parent / recorded.name):
        if cand.is_file() and cand.stat().st_size == record.get("bytes", cand.stat().st_size) \
                and file_sha256(cand) == record["sha256"]:
            return cand
    raise UserError(f"checkpoint {child} was made on top of {recorded} (sha256 {record['sha256'][:12]}...), "
                    f"which is missing or changed; put that file back (there or beside {child.name})")


def inspect_checkpoint(ckpt, unet_shapes: dict[str, tuple[int, ...]], flag: str = "--ckpt",
                       _depth: int = 0) -> Checkpoint:
    """Check checkpoint `ckpt` against a UNet without reading its tensors' data.

    `unet_shapes` maps every UNet state_dict key to its shape (`utils.models.unet_parameter_shapes`
    reads them from the weights file's header; a loaded UNet gives `unet_state_shapes`). Every tensor
    of the checkpoint must be a UNet key of the same shape: a full UNet, or any subset of it (our
    files). A parent recorded in the metadata is found, verified by sha256 and checked too.
    """
    path = Path(ckpt)
    if not path.exists():
        raise UserError(f"{flag} {ckpt} does not exist")
    if path.is_dir():
        path = _folder_weights(path)
    tensors, meta = _load_tensors(path)
    if not tensors:
        raise UserError(f"{flag} {ckpt} holds no tensors")
    for key, t in tensors.items():
        expected = unet_shapes.get(key)
        if expected is None:
            raise UserError(f"{flag} {ckpt} does not fit the model: key {key} is not in the model's UNet")
        if _shape(t) != tuple(expected):
            raise UserError(f"{flag} {ckpt} does not fit the model: {key} has shape {list(_shape(t))}, "
                            f"the model expects {list(expected)}")
    for key, t in tensors.items():  # finite, one tensor in memory at a time
        check_finite(_materialize(t), f"{flag} {ckpt} (key {key})")
    meta = _decode(meta)
    parent = None
    if meta.get("parent") is not None:
        if _depth >= 16:
            raise UserError(f"{flag} {ckpt}: its chain of parent checkpoints is longer than 16 (a cycle?)")
        parent = inspect_checkpoint(_find_parent(path, meta["parent"]), unet_shapes, flag, _depth + 1)
    return Checkpoint(path, tuple(tensors), meta, parent)


def unet_state_shapes(unet) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def checkpoint_tensors(ckpt: Checkpoint, select=None) -> dict[str, torch.Tensor]:
    """The tensors the checkpoint sets, through its parents (a later file wins), in fp32 on the CPU.
    `select(key) -> bool` keeps only some keys (read only those)."""
    out = {}
    for c in ckpt.chain():
        tensors, _ = _load_tensors(c.path)
        for k, t in tensors.items():
            if select is None or select(k):
                out[k] = _materialize(t).float().clone()
    return out


def apply_checkpoint(unet, ckpt: Checkpoint) -> int:
    """Copy every tensor of the checkpoint (its parents first) into a loaded UNet, in the UNet's dtype
    and device; return how many tensors were set. The rest of the UNet is left as it is."""
    state = unet.state_dict()
    n = 0
    with torch.no_grad():
        for c in ckpt.chain():
            tensors, _ = _load_tensors(c.path)
            for k, t in tensors.items():
                if k not in state or tuple(state[k].shape) != _shape(t):  # inspect_checkpoint says which
                    raise UserError(f"checkpoint {c.path} does not fit the UNet at {k}")
                state[k].copy_(_materialize(t))
                n += 1
    return n


def load_edited_weights(ckpt, model_shapes: dict[str, tuple[int, ...]],
                        unet_shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], Checkpoint]:
    """The cross-attention matrices `ckpt` sets (through its parents), in fp32, and the checked
    checkpoint. `model_shapes`: the edited keys; `unet_shapes`: every UNet key (each tensor of the
    checkpoint is checked against it). Keys the checkpoint does not set are absent."""
    ck = inspect_checkpoint(ckpt, unet_shapes, flag="--target_ckpt")
    return checkpoint_tensors(ck, lambda k: k in model_shapes), ck


def changes_outside(ckpt: Checkpoint, keys, base_weights) -> list[str]:
    """The tensors outside `keys` that the checkpoint (or a parent) sets to other values than the base
    UNet's weights file `base_weights` holds. A full UNet whose only changes are the edited matrices
    (the RECE and UCE authors' releases) gives []. Read one tensor at a time."""
    keys = set(keys)
    outside = [(c, k) for c in ckpt.chain() for k in c.keys if k not in keys]
    if not outside:
        return []
    base, _ = _load_tensors(Path(base_weights))
    changed = []
    for c in ckpt.chain():
        tensors, _ = _load_tensors(c.path)
        for k, t in tensors.items():
            if k not in keys and k not in changed and (k not in base or not torch.equal(
                    _materialize(t).to(torch.float32), _materialize(base[k]).to(torch.float32))):
                changed.append(k)
    return changed


def apply_edited_weights(unet, weights: dict[str, torch.Tensor]) -> None:
    """Copy tensors given by UNet state_dict key into a loaded UNet (in its dtype and device)."""
    state = unet.state_dict()
    for key, w in weights.items():
        if key not in state:
            raise UserError(f"edited weight {key} is not a tensor of the UNet")
        if tuple(state[key].shape) != tuple(w.shape):
            raise UserError(f"edited weight {key} has shape {list(w.shape)}, the UNet has {list(state[key].shape)}")
        with torch.no_grad():
            state[key].copy_(w)


def load_checkpoint_into_unet(unet, ckpt, flag: str = "--ckpt") -> Checkpoint:
    """Check checkpoint `ckpt` (any supported format) against a loaded UNet and apply all of it."""
    ck = inspect_checkpoint(ckpt, unet_state_shapes(unet), flag)
    apply_checkpoint(unet, ck)
    return ck


def check_checkpoint(ckpt, model_id: str, flag: str = "--ckpt") -> Checkpoint:
    """The early check of a CLI, before any model loads: checkpoint `ckpt` read and checked (keys,
    shapes, finiteness, parents) against `model_id`'s UNet, whose shapes come from its weights file's
    header (the UNet is not loaded)."""
    from utils.models import unet_parameter_shapes

    if not Path(ckpt).exists():
        raise UserError(f"{flag} {ckpt} does not exist")
    return inspect_checkpoint(ckpt, unet_parameter_shapes(model_id), flag)

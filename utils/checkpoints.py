"""Edited-weight checkpoints (docs/method.md §8).

The toolkit writes a safetensors file holding only the edited `attn2.to_k/to_v.weight` tensors under
their UNet state_dict keys, with metadata (base model, method, concepts, settings). It reads:
- that format;
- a full UNet state_dict saved with `torch.save` (`.pt`, `.bin`, `.ckpt`), as the RECE and UCE
  authors release them, loaded with `weights_only=True` only: a pickle that would run code is refused;
- a full UNet `.safetensors`;
- a diffusers UNet folder (`config.json` + `diffusion_pytorch_model.*`), or a pipeline folder's `unet/`.
Every tensor is checked against the base model's shapes; the first mismatching key is named.
"""
from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import torch

from utils.errors import UserError, check_finite
from utils.io import atomic_path, tensor_file_kind
from utils.models import CROSS_ATTN_KEY, UNET_WEIGHT_FILES, cross_attention_modules

FORMAT = "rece-toolkit/edited-attn2/v1"


def save_edited_weights(path, weights: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write the edited matrices (fp32, contiguous) and JSON-encoded metadata, atomically."""
    from safetensors.torch import save_file

    # clone: row views of one stacked tensor share storage, which safetensors refuses
    tensors = {k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in weights.items()}
    meta = {"format": FORMAT}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


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


def load_edited_weights(ckpt, model_shapes: dict[str, tuple[int, ...]],
                        unet_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """The cross-attention matrices of checkpoint `ckpt`, checked against the model, in fp32.

    `model_shapes` maps each of the model's edited keys to its shape; `unet_shapes` (optional) maps
    every UNet parameter, so that a full checkpoint of another architecture is refused by name.
    A partial checkpoint (our format) may hold any subset of the edited keys.
    """
    path = Path(ckpt)
    if not path.exists():
        raise UserError(f"checkpoint {ckpt} does not exist")
    if path.is_dir():
        path = _folder_weights(path)
    tensors, meta = _load_tensors(path)
    reference = unet_shapes or model_shapes
    for key, t in tensors.items():
        expected = reference.get(key)
        if expected is None and key in model_shapes:
            expected = model_shapes[key]
        if expected is None:
            if unet_shapes is None and not CROSS_ATTN_KEY.search(key):
                continue  # cannot check non-edited keys without the full UNet shapes; they are not used
            raise UserError(f"checkpoint {ckpt} does not fit the model: key {key} is not in the model's UNet")
        if _shape(t) != tuple(expected):
            raise UserError(f"checkpoint {ckpt} does not fit the model: {key} has shape {list(_shape(t))}, "
                            f"the model expects {list(expected)}")
    edited = {k: t.float().clone() for k, t in tensors.items() if k in model_shapes}
    check_finite(edited, f"checkpoint {ckpt}")
    if not edited:
        raise UserError(f"checkpoint {ckpt} holds none of the model's attn2.to_k/to_v weights")
    if meta.get("format") != FORMAT and len(edited) != len(model_shapes):
        missing = next(k for k in model_shapes if k not in edited)
        raise UserError(f"checkpoint {ckpt} is a full UNet checkpoint but lacks {missing}")
    return edited


def apply_edited_weights(unet, weights: dict[str, torch.Tensor]) -> None:
    """Copy edited matrices into a loaded UNet (in its dtype and device)."""
    modules = cross_attention_modules(unet)
    for key, w in weights.items():
        if key not in modules:
            raise UserError(f"edited weight {key} has no matching module in the UNet")
        lin = modules[key]
        if tuple(lin.weight.shape) != tuple(w.shape):
            raise UserError(f"edited weight {key} has shape {list(w.shape)}, the UNet has {list(lin.weight.shape)}")
        with torch.no_grad():
            lin.weight.copy_(w.to(lin.weight.dtype))


def load_checkpoint_into_unet(unet, ckpt) -> dict[str, torch.Tensor]:
    """Check and apply checkpoint `ckpt` (any supported format) to a loaded UNet; return its edits."""
    shapes = {k: tuple(p.shape) for k, p in unet.state_dict().items()}
    model_shapes = {k: s for k, s in shapes.items() if CROSS_ATTN_KEY.search(k)}
    weights = load_edited_weights(ckpt, model_shapes, shapes)
    apply_edited_weights(unet, weights)
    return weights


def check_checkpoint(ckpt, model_id: str, flag: str = "--ckpt") -> dict[str, torch.Tensor]:
    """Read checkpoint `ckpt` and check it against `model_id`'s UNet (shapes from its weights file, no
    UNet load): the early check of a CLI, before any model loads. Returns the edited matrices."""
    from utils.models import unet_parameter_shapes

    if not Path(ckpt).exists():
        raise UserError(f"{flag} {ckpt} does not exist")
    shapes = unet_parameter_shapes(model_id)
    model_shapes = {k: s for k, s in shapes.items() if CROSS_ATTN_KEY.search(k)}
    return load_edited_weights(ckpt, model_shapes, shapes)

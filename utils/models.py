"""Model access: resolve `--model_id` / `--base`, load pipelines and text encoders, and reach the
cross-attention key/value projections that UCE and RECE edit (docs/method.md §1).

Two ways in, for two kinds of work:
- `load_pipeline` loads a whole diffusers pipeline (generation, validation, attacks).
- `load_text_encoder` + `read_cross_attention_weights` load only what the closed-form edit needs:
  the text encoder and the 2L `attn2.to_k` / `attn2.to_v` matrices, read straight from the UNet's
  weights file. For SD 1.4 that is 77 MB of UNet instead of 3.4 GB, which is why `train.py` fits in
  well under 2 GB of memory.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch

from utils.errors import UserError, check_finite
from utils.io import natural_key, quiet_libraries  # noqa: F401  (quiet_libraries re-exported for the CLIs)
from utils.io import REPO_ROOT, tensor_file_kind

DEFAULT_MODEL_ID = "CompVis/stable-diffusion-v1-4"
BASES = {"1.4": "CompVis/stable-diffusion-v1-4", "2.1": "stabilityai/stable-diffusion-2-1-base"}
# Named built-in models shipped in the repository (the built-in testbed, not a Hub model).
BUILTIN_MODELS = {"shapes": REPO_ROOT / "models" / "shapes"}

# Every edited matrix, by its UNet state_dict key (SD 1.x, 2.x and SDXL name them alike).
CROSS_ATTN_KEY = re.compile(r"(^|\.)attn2\.to_[kv]\.weight$")
# The weight files a diffusers UNet folder may hold, in the order they are preferred.
UNET_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
TEXT_LENGTH = 77  # docs/method.md §1: prompts are padded / truncated to 77 tokens


def add_model_args(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """`--model_id`, `--base` and `--device`, shared by every script that loads a model."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_id", default=None,
                   help=f"Hub id or local diffusers folder, or a built-in ({', '.join(BUILTIN_MODELS)}); "
                        f"default {DEFAULT_MODEL_ID}")
    g.add_argument("--base", choices=sorted(BASES), default=None,
                   help="shorthand: 1.4 = CompVis/stable-diffusion-v1-4, 2.1 = stabilityai/stable-diffusion-2-1-base")
    if device:
        g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")



def resolve_device(device: str | None) -> torch.device:
    """`--device` as a torch device that this machine has, or one line saying why not."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a torch device (expected cpu, cuda, cuda:1, ...)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for CUDA but no GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {device} asked for Apple's MPS but it is not available on this machine")
    elif dev.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise UserError(f"--device {device} asked for an Intel XPU but none is available")
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: the toolkit runs on cpu, cuda, mps or xpu, not {dev.type}")
    return dev


def _read_config(path: Path, what: str) -> dict | None:
    import json

    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{what}: {path} is not readable JSON ({type(e).__name__})")
    if not isinstance(cfg, dict):
        raise UserError(f"{what}: {path} is not a JSON object")
    return cfg


def check_model_folder(path, what: str = "--model_id") -> None:
    """Check a local diffusers pipeline folder before anything loads from it (headers only).

    - the text encoder's width (`hidden_size`) equals the UNet's `cross_attention_dim` (one text
      encoder; SDXL's two are not checked);
    - each weights file of unet/, text_encoder/ and vae/ is what its name says and complete: not a Git
      LFS pointer, not a text file, not truncated (`utils.io.tensor_file_kind`).
    """

    path = Path(path)
    what = f"{what} {path}"
    unet = _read_config(path / "unet" / "config.json", what)
    text = _read_config(path / "text_encoder" / "config.json", what)
    two_encoders = (path / "text_encoder_2").is_dir()
    if unet is not None and text is not None and not two_encoders:
        cross = unet.get("cross_attention_dim")
        cross = cross[0] if isinstance(cross, list) and cross else cross
        width = text.get("hidden_size", (text.get("text_config") or {}).get("hidden_size"))
        if isinstance(cross, int) and isinstance(width, int) and cross != width:
            raise UserError(f"{what} does not fit together: the text encoder is {width} wide but the UNet's "
                            f"cross_attention_dim is {cross} (text_encoder/ and unet/ come from different models)")
    for sub, names in (("unet", UNET_WEIGHT_FILES), ("vae", UNET_WEIGHT_FILES),
                       ("text_encoder", ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"))):
        for n in names:
            f = path / sub / n
            if f.is_file():
                tensor_file_kind(f, f"{what}: {sub} weights")


def resolve_model_id(model_id: str | None = None, base: str | None = None) -> str:
    """Return a local folder path or a Hub id; check a local folder is a diffusers pipeline."""
    if model_id and base and model_id != BASES[base]:
        raise UserError(f"--model_id {model_id} and --base {base} disagree; give one of them")
    name = model_id or (BASES[base] if base else DEFAULT_MODEL_ID)
    if name in BUILTIN_MODELS:
        path = BUILTIN_MODELS[name]
        if not (path / "model_index.json").is_file():
            raise UserError(f"built-in model {name!r} is missing at {path} (expected a diffusers folder)")
        check_model_folder(path, f"built-in model {name!r}:")
        return str(path)
    looks_local = os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise UserError(f"--model_id {name}: no such folder")
        if not (path / "model_index.json").is_file():
            raise UserError(f"--model_id {name} is not a diffusers pipeline folder (no model_index.json)")
        check_model_folder(path)
        return str(path)
    return name


def _is_local(model_id: str) -> bool:
    return os.path.isdir(model_id)


def _hub_error(model_id: str, e: Exception) -> UserError:
    return UserError(f"could not load {model_id!r} (not a local diffusers folder, and the Hugging Face Hub "
                     f"did not provide it: {type(e).__name__}: {str(e).splitlines()[0][:200]})")


def load_pipeline(model_id: str, device="cpu", dtype=torch.float32):
    """Load a Stable Diffusion pipeline from a Hub id or local folder, safety checker off."""
    from diffusers import DiffusionPipeline

    kwargs = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _hub_error(model_id, e)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_text_encoder(model_id: str, device="cpu", dtype=torch.float32):
    """Load only the tokenizer and CLIP text encoder of a pipeline."""
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _hub_error(model_id, e)
    return tokenizer, text_encoder.to(device).eval()


def unet_weights_file(model_id: str) -> Path:
    """The UNet's weights file of a pipeline (local folder or Hub download; safetensors preferred)."""
    names = UNET_WEIGHT_FILES
    if _is_local(model_id):
        for n in names:
            p = Path(model_id) / "unet" / n
            if p.is_file():
                return p
        raise UserError(f"--model_id {model_id}: no UNet weights in {Path(model_id) / 'unet'} "
                        f"(expected one of {', '.join(names)})")
    from huggingface_hub import hf_hub_download

    last = None
    for n in names:
        try:
            return Path(hf_hub_download(model_id, n, subfolder="unet"))
        except Exception as e:  # missing variant or no network: try the next name
            last = e
    raise _hub_error(model_id, last)


def read_cross_attention_weights(model_id: str) -> dict[str, torch.Tensor]:
    """The `attn2.to_k` / `attn2.to_v` matrices of the UNet, in fp32, read without loading the UNet."""
    path = unet_weights_file(model_id)
    if tensor_file_kind(path, f"--model_id {model_id}: UNet weights") == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if CROSS_ATTN_KEY.search(k)]
            weights = {k: f.get_tensor(k).float() for k in keys}
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        weights = {k: v.float().clone() for k, v in sd.items() if CROSS_ATTN_KEY.search(k)}
        del sd
    if not weights:
        raise UserError(f"--model_id {model_id}: the UNet has no cross-attention attn2.to_k/to_v weights")
    check_finite(weights, f"--model_id {model_id}: UNet weights {path.name}")
    return dict(sorted(weights.items(), key=lambda kv: natural_key(kv[0])))


def unet_parameter_shapes(model_id: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every UNet parameter, from the file header alone (checks full-UNet checkpoints)."""
    path = unet_weights_file(model_id)
    if tensor_file_kind(path, f"--model_id {model_id}: UNet weights") == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


def cross_attention_modules(unet) -> dict[str, torch.nn.Linear]:
    """Map each edited weight's state_dict key to its `nn.Linear` in a loaded UNet."""
    mods = {}
    for name, module in unet.named_modules():
        if re.search(r"(^|\.)attn2\.to_[kv]$", name):
            mods[name + ".weight"] = module
    return mods



# ---------------------------------------------------------------------------------------------
# Text embeddings (docs/method.md §1): E(t) is the last hidden state for t padded to 77 tokens; f(t) is the
# index of t's last word token (attention-mask sum minus 2).
# ---------------------------------------------------------------------------------------------

def tokenize(tokenizer, texts: list[str]):
    return tokenizer(list(texts), padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                     return_tensors="pt")


@torch.no_grad()
def encode_texts(tokenizer, text_encoder, texts: list[str], batch_size: int = 32):
    """Return (E, f): embeddings (n, 77, d) in fp32 on the CPU, and last-word-token indices (n,)."""
    device = text_encoder.device
    embs, last = [], []
    for i in range(0, len(texts), batch_size):
        tok = tokenize(tokenizer, texts[i:i + batch_size])
        out = text_encoder(tok.input_ids.to(device))[0]
        embs.append(out.float().cpu())
        last.append(tok.attention_mask.sum(1) - 2)
    if not embs:
        d = text_encoder.config.hidden_size
        return torch.zeros(0, TEXT_LENGTH, d), torch.zeros(0, dtype=torch.long)
    return torch.cat(embs), torch.cat(last).clamp(min=0)


@torch.no_grad()
def encode_gram(tokenizer, text_encoder, texts: list[str], batch_size: int = 32, progress: bool = False):
    """Sum over texts of E(t)^T E(t) (d x d, fp64), encoding each text once, in batches.

    This is the whole contribution of a preserve set to the closed-form edit (docs/method.md §2), so a set of
    1,733 artists costs one pass through the text encoder and never a (n, 77, d) tensor in memory.
    """
    from tqdm.auto import tqdm

    d = text_encoder.config.hidden_size
    G = torch.zeros(d, d, dtype=torch.float64)
    batches = range(0, len(texts), batch_size)
    for i in tqdm(batches, desc="encoding preserve texts", disable=not progress or len(batches) < 2):
        E, _ = encode_texts(tokenizer, text_encoder, texts[i:i + batch_size], batch_size)
        R = E.reshape(-1, d).double()
        G += R.T @ R
    return G


def load_edit_components(model_id: str, device="cpu", pipeline: bool = False):
    """What a closed-form edit needs: (tokenizer, text_encoder, W_orig, unet_shapes, pipe or None).

    Without `pipeline`, the UNet is never loaded: its 2L edited matrices are read from the weights
    file and its shapes from the file header. With `pipeline` (validation needs one), everything comes
    from the loaded pipeline, so the model is read once.
    """
    if pipeline:
        pipe = load_pipeline(model_id, device=device)
        sd = pipe.unet.state_dict()
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        W = {k: v.detach().float().cpu().clone() for k, v in sd.items() if CROSS_ATTN_KEY.search(k)}
        W = dict(sorted(W.items(), key=lambda kv: natural_key(kv[0])))
        return pipe.tokenizer, pipe.text_encoder.eval(), W, shapes, pipe
    tokenizer, text_encoder = load_text_encoder(model_id, device=device)
    W = read_cross_attention_weights(model_id)
    return tokenizer, text_encoder, W, unet_parameter_shapes(model_id), None

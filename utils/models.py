"""Model access: resolve `--model_id` / `--base`, load pipelines and text encoders, and reach the
cross-attention key/value projections that UCE and RECE edit (docs/method.md §1).

Two ways in, for two kinds of work:
- `load_pipeline` loads a whole diffusers pipeline (generation, validation, attacks).
- `load_text_encoders` + `read_cross_attention_weights` load only what the closed-form edit needs:
  the text encoder(s) and the 2L `attn2.to_k` / `attn2.to_v` matrices, read straight from the UNet's
  weights file. For SD 1.4 that is 77 MB of UNet instead of 3.4 GB, which is why `train.py` fits in
  well under 2 GB of memory.

SD 1.x, SD 2.x and SDXL are handled alike (docs/models.md): `TextEncoders` encodes texts as each
pipeline's `encode_prompt` does (SDXL: two encoders, penultimate hidden states concatenated, d = 2048,
plus a pooled embedding); everything downstream only sees E(t) (77 x d).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch

from utils.errors import UserError, check_finite
from utils.io import natural_key, quiet_libraries  # noqa: F401  (quiet_libraries re-exported for the CLIs)
from utils.io import REPO_ROOT, tensor_file_kind

DEFAULT_MODEL_ID = "CompVis/stable-diffusion-v1-4"
BASES = {"1.4": "CompVis/stable-diffusion-v1-4", "2.1": "stabilityai/stable-diffusion-2-1-base",
         "2.1-v": "stabilityai/stable-diffusion-2-1", "xl": "stabilityai/stable-diffusion-xl-base-1.0"}
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
                   help="shorthand: " + ", ".join(f"{k} = {v}" for k, v in BASES.items()) + " (docs/models.md)")
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

    kwargs = dict(dtype=dtype)
    if not is_sdxl(model_id):  # SDXL pipelines have no safety checker to turn off
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _hub_error(model_id, e)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def model_index(model_id: str) -> dict:
    """The pipeline's model_index.json ({} when it cannot be read)."""
    try:
        if _is_local(model_id):
            path = Path(model_id) / "model_index.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model_id, "model_index.json"))
        return json.loads(path.read_text())
    except Exception:
        return {}


def is_sdxl(model_id: str) -> bool:
    """True for an SDXL-style pipeline: two text encoders (text_encoder_2 in its model_index.json)."""
    index = model_index(model_id)
    return bool(index.get("text_encoder_2")) and index.get("text_encoder_2") != [None, None]


def load_text_encoders(model_id: str, device="cpu", dtype=torch.float32) -> "TextEncoders":
    """Load only the tokenizer(s) and CLIP text encoder(s) of a pipeline (two for SDXL)."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    parts = [("tokenizer", "text_encoder", CLIPTextModel)]
    if is_sdxl(model_id):
        parts.append(("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection))
    tokenizers, encoders = [], []
    try:
        for tok_dir, enc_dir, cls in parts:
            tokenizers.append(AutoTokenizer.from_pretrained(model_id, subfolder=tok_dir))
            encoders.append(cls.from_pretrained(model_id, subfolder=enc_dir, dtype=dtype).to(device))
    except (OSError, ValueError, EnvironmentError) as e:
        raise _hub_error(model_id, e)
    return TextEncoders(tokenizers, encoders)


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
# The text side of a pipeline, for every base (docs/models.md): SD 1.x / 2.x have one CLIP text
# encoder and E(t) is its last hidden state; SDXL has two and E(t) is their penultimate hidden
# states concatenated (768 + 1280 = 2048), exactly as `StableDiffusionXLPipeline.encode_prompt`
# builds it, with the pooled embedding of the second encoder beside it.
# ---------------------------------------------------------------------------------------------

def tokenize(tokenizer, texts: list[str]):
    return tokenizer(list(texts), padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                     return_tensors="pt")


class TextEncoders:
    """One (SD 1.x / 2.x) or two (SDXL) tokenizer + CLIP text encoder pairs, encoding like the pipeline.

    - `encode(texts)` -> (E, f): E (n, 77, d) float32 on the CPU, f (n,) the last word token's index
      (from the first tokenizer, attention-mask sum minus 2; docs/method.md §1).
    - `encode_pooled(texts)` -> (E, f, pooled): pooled (n, p) for SDXL (the second encoder's projected
      end-of-text state), None otherwise.
    - `tokenize(texts)` -> one (n, 77) id tensor per encoder (SDXL's second tokenizer pads with "!").
    - `forward(ids, token_embeds=None)` -> (E, pooled) with gradients, on the encoders' device: the
      same computation from ids, optionally with each encoder's token-embedding output replaced by
      `token_embeds[i]` (n, 77, h_i) (e.g. one-hot rows @ `token_embedding_tables()[i]`), for attacks
      that optimise over tokens.
    """

    def __init__(self, tokenizers: list, encoders: list):
        if len(tokenizers) != len(encoders) or len(encoders) not in (1, 2):
            raise ValueError("TextEncoders takes one or two (tokenizer, text encoder) pairs")
        self.tokenizers, self.encoders = list(tokenizers), [e.eval() for e in encoders]
        self.is_sdxl = len(self.encoders) == 2
        self.dim = sum(e.config.hidden_size for e in self.encoders)
        self.pooled_dim = self.encoders[-1].config.projection_dim if self.is_sdxl else None

    @classmethod
    def from_pipeline(cls, pipe) -> "TextEncoders":
        if getattr(pipe, "text_encoder_2", None) is not None:
            return cls([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2])
        return cls([pipe.tokenizer], [pipe.text_encoder])

    @property
    def device(self) -> torch.device:
        return self.encoders[0].device

    def tokenize(self, texts: list[str]) -> list[torch.Tensor]:
        return [tokenize(tok, texts).input_ids for tok in self.tokenizers]

    def last_token_index(self, texts: list[str]) -> torch.Tensor:
        return (tokenize(self.tokenizers[0], texts).attention_mask.sum(1) - 2).clamp(min=0)

    def token_embedding_tables(self) -> list[torch.Tensor]:
        return [e.get_input_embeddings().weight for e in self.encoders]

    def forward(self, ids: list[torch.Tensor], token_embeds: list[torch.Tensor] | None = None):
        """(E, pooled) from each encoder's ids; see the class docstring. No torch.no_grad here."""
        parts, pooled = [], None
        for i, (enc, x) in enumerate(zip(self.encoders, ids)):
            hook = None
            if token_embeds is not None and token_embeds[i] is not None:
                replacement = token_embeds[i]
                hook = enc.get_input_embeddings().register_forward_hook(
                    lambda module, inputs, output, r=replacement: r.to(output.device, output.dtype))
            try:
                out = enc(x.to(enc.device), output_hidden_states=self.is_sdxl)
            finally:
                if hook is not None:
                    hook.remove()
            if self.is_sdxl:
                parts.append(out.hidden_states[-2])
                if i == len(self.encoders) - 1:
                    pooled = out[0]  # CLIPTextModelWithProjection: text_embeds
            else:
                parts.append(out[0])
        return torch.cat(parts, dim=-1), pooled

    @torch.no_grad()
    def encode_pooled(self, texts: list[str], batch_size: int = 32):
        embs, pools = [], []
        for i in range(0, len(texts), batch_size):
            E, p = self.forward(self.tokenize(texts[i:i + batch_size]))
            embs.append(E.float().cpu())
            if p is not None:
                pools.append(p.float().cpu())
        last = self.last_token_index(texts) if texts else torch.zeros(0, dtype=torch.long)
        if not embs:
            return (torch.zeros(0, TEXT_LENGTH, self.dim), last,
                    torch.zeros(0, self.pooled_dim) if self.is_sdxl else None)
        return torch.cat(embs), last, torch.cat(pools) if pools else None

    def encode(self, texts: list[str], batch_size: int = 32):
        E, f, _ = self.encode_pooled(texts, batch_size)
        return E, f

    def release(self) -> None:
        """Drop the encoders, freeing their memory once every text a run needs is encoded (a later
        `encode` fails)."""
        self.encoders = []


def text_components(pipe):
    """(tokenizer, text_encoder) of a pipeline, each a list of two for SDXL: `encode_texts(*text_components(pipe), texts)`."""
    te = TextEncoders.from_pipeline(pipe)
    return (te.tokenizers, te.encoders) if te.is_sdxl else (te.tokenizers[0], te.encoders[0])


def _as_text_encoders(tokenizer, text_encoder) -> TextEncoders:
    if isinstance(tokenizer, TextEncoders):
        return tokenizer
    if isinstance(tokenizer, (list, tuple)):
        return TextEncoders(list(tokenizer), list(text_encoder))
    return TextEncoders([tokenizer], [text_encoder])


def encode_texts(tokenizer, text_encoder, texts: list[str], batch_size: int = 32):
    """Return (E, f): embeddings (n, 77, d) in fp32 on the CPU, and last-word-token indices (n,).

    `tokenizer` / `text_encoder`: one of each (SD 1.x / 2.x), or lists of two (SDXL; see
    `text_components`), or a `TextEncoders` and None.
    """
    return _as_text_encoders(tokenizer, text_encoder).encode(list(texts), batch_size)


@torch.no_grad()
def encode_gram(text: TextEncoders, texts: list[str], batch_size: int = 32, progress: bool = False,
                tokens: str = "all"):
    """Sum over texts of R(t)^T R(t) (d x d, fp64), encoding each text once, in batches.

    R(t) = all 77 rows of E(t) (`tokens="all"`, docs/method.md §2), or only the row of its last word
    token (`tokens="last"`, UCE's 2025 edit, docs/models.md). This is the whole contribution of a
    preserve set to the closed-form edit, so a set of 1,733 artists costs one pass through the text
    encoder and never a (n, 77, d) tensor in memory.
    """
    from tqdm.auto import tqdm

    d = text.dim
    G = torch.zeros(d, d, dtype=torch.float64)
    batches = range(0, len(texts), batch_size)
    for i in tqdm(batches, desc="encoding preserve texts", disable=not progress or len(batches) < 2):
        E, f = text.encode(texts[i:i + batch_size], batch_size)
        R = E[torch.arange(len(f)), f] if tokens == "last" else E.reshape(-1, d)
        R = R.double()
        G += R.T @ R
    return G


def edit_weights(model_id: str, pipe=None) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """(W_orig, unet_shapes): the edited matrices (fp32, natural key order) and every UNet parameter's
    shape, from a loaded pipeline, or else from the weights file without loading the UNet."""
    if pipe is None:
        return read_cross_attention_weights(model_id), unet_parameter_shapes(model_id)
    sd = pipe.unet.state_dict()
    W = {k: v.detach().float().cpu().clone() for k, v in sd.items() if CROSS_ATTN_KEY.search(k)}
    return dict(sorted(W.items(), key=lambda kv: natural_key(kv[0]))), {k: tuple(v.shape) for k, v in sd.items()}


def load_edit_components(model_id: str, device="cpu", pipeline: bool = False):
    """What a closed-form edit needs: (text encoders, W_orig, unet_shapes, pipe or None).

    Without `pipeline`, the UNet is never loaded: its 2L edited matrices are read from the weights
    file and its shapes from the file header. With `pipeline` (validation needs one), everything comes
    from the loaded pipeline, so the model is read once.
    """
    if pipeline:
        pipe = load_pipeline(model_id, device=device)
        return (TextEncoders.from_pipeline(pipe), *edit_weights(model_id, pipe), pipe)
    return (load_text_encoders(model_id, device=device), *edit_weights(model_id), None)


# ---------------------------------------------------------------------------------------------
# Fingerprints of a model's files, for the Gram cache (utils/erase/cache.py): cheap (size,
# modification time, sha256 of a safetensors header or of a small file) except for the edited
# matrices, whose bytes are hashed (they are read anyway).
# ---------------------------------------------------------------------------------------------

def file_fingerprint(path) -> dict:
    """size, mtime_ns and the sha256 of the safetensors header (of the whole file when under 4 MB)."""
    import hashlib

    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors" and st.st_size >= 8:
            n = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(n, st.st_size)))
        elif st.st_size <= 4 << 20:
            h.update(f.read())
        else:
            h.update(f.read(1 << 20))
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_head": h.hexdigest()}


def model_folder(model_id: str) -> Path | None:
    """The pipeline's folder on this machine (a local folder, or the Hub cache's snapshot), else None."""
    if _is_local(model_id):
        return Path(model_id)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        return None


def text_fingerprint(model_id: str) -> dict | None:
    """Fingerprint of the tokenizer and text-encoder files (None when they cannot be found)."""
    folder = model_folder(model_id)
    if folder is None:
        return None
    files = sorted(p for sub in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")
                   for p in (folder / sub).glob("*") if p.is_file())
    return {str(p.relative_to(folder)): file_fingerprint(p) for p in files} or None


def weights_fingerprint(model_id: str, W: dict[str, torch.Tensor]) -> dict:
    """Fingerprint of the UNet weights file plus the sha256 of the edited matrices' values."""
    from utils.erase.cache import tensors_sha256

    return {"unet": file_fingerprint(unet_weights_file(model_id)), "edited_sha256": tensors_sha256(W)}

"""Stable Diffusion pipelines with random weights, built offline.

Used by the tests (a tiny pipeline that runs in a second), the benchmarks (SD 1.4's exact shapes)
and anyone who wants to try a script without downloading weights. The tokenizer is a CLIP BPE
tokenizer over a handwritten vocabulary: every printable ASCII character, alone and word-final, so
any English prompt tokenizes (one token per character) without a download.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY = dict(  # diffusers-test-sized components: one pipeline call takes milliseconds
    unet=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
              attention_head_dim=(2, 4), norm_num_groups=32),
    vae=dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
             down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
             up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=32),
    text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
              layer_norm_eps=1e-5, projection_dim=32),
)

# SD 1.4's exact shapes (UNet 860M, CLIP ViT-L/14 text 123M, VAE 84M); weights are random.
SD14 = dict(
    unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, in_channels=4,
              out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
              attention_head_dim=8),
    vae=dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             layers_per_block=2, sample_size=512),
    text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              layer_norm_eps=1e-5, projection_dim=768, hidden_act="quick_gelu"),
)

# SD 2.x style (docs/models.md): an OpenCLIP-sized text encoder stand-in (width 1024, as SD 2's
# OpenCLIP ViT-H text tower; two small layers), linear projections in the transformer blocks, and
# the 768 model's v_prediction or the -base model's epsilon.
_SD2_TINY = dict(
    unet=dict(TINY["unet"], cross_attention_dim=1024, use_linear_projection=True),
    vae=TINY["vae"],
    text=dict(hidden_size=1024, intermediate_size=64, num_attention_heads=16, num_hidden_layers=2,
              layer_norm_eps=1e-5, projection_dim=64, hidden_act="gelu"),
)
SD2 = dict(_SD2_TINY, prediction_type="v_prediction")
SD2_BASE = dict(_SD2_TINY, prediction_type="epsilon")

# SDXL style, tiny: two text encoders of different widths (32 + 48 = 80-d conditions, so that
# concatenation order matters), the second with a 16-d projection (the pooled embedding); the UNet
# takes text + size/crop time ids (6 x 8 + 16 = 64 inputs to its added embedding).
SDXL_TINY = dict(
    unet=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=80,
              attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
              addition_embed_type="text_time", addition_time_embed_dim=8,
              projection_class_embeddings_input_dim=64, norm_num_groups=32),
    vae=dict(TINY["vae"], scaling_factor=0.13025, force_upcast=True),
    text=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
              layer_norm_eps=1e-5, projection_dim=32, hidden_act="quick_gelu"),
    text_2=dict(hidden_size=48, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
                layer_norm_eps=1e-5, projection_dim=16, hidden_act="gelu"),
)

# SDXL base 1.0's exact shapes (UNet 2.6B: 70 transformer blocks, 140 edited matrices of width 2048;
# CLIP ViT-L/14 text 123M + OpenCLIP bigG text 695M; VAE 84M); weights are random.
SDXL = dict(
    unet=dict(block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, in_channels=4,
              out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
              transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time",
              addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
    vae=dict(SD14["vae"], sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    text=SD14["text"],
    text_2=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                layer_norm_eps=1e-5, projection_dim=1280, hidden_act="gelu"),
)
PRESETS = {"tiny": TINY, "sd14": SD14, "sd2": SD2, "sd2-base": SD2_BASE, "sdxl-tiny": SDXL_TINY, "sdxl": SDXL}


def write_char_tokenizer(folder, pad_token: str | None = None) -> None:
    """A CLIPTokenizer whose vocabulary is the printable ASCII characters (plain and word-final).

    `pad_token`: SDXL's second tokenizer pads with "!" instead of the end-of-text token.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.printable if not c.isspace()]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": pad_token} if pad_token else {}
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, **kwargs)
    tok.save_pretrained(str(folder))


def _text_encoder(cfg: dict, tokenizer, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **cfg)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(text_cfg)


def _tokenizers(folder: Path, sdxl: bool):
    from transformers import CLIPTokenizer

    write_char_tokenizer(folder / "_tok")
    toks = [CLIPTokenizer.from_pretrained(str(folder / "_tok"))]
    if sdxl:
        write_char_tokenizer(folder / "_tok2", pad_token="!")
        toks.append(CLIPTokenizer.from_pretrained(str(folder / "_tok2")))
    return toks


def _scheduler(cfg: dict):
    from diffusers import LMSDiscreteScheduler

    return LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000, steps_offset=1,
                                prediction_type=cfg.get("prediction_type", "epsilon"))


def build_random_pipeline(folder, preset: str = "tiny", seed: int = 0, dtype=torch.float32, device="cpu",
                          save: bool = True):
    """Build a pipeline with random weights from `preset` and save it to `folder` (unless `save` is off).

    A StableDiffusionPipeline, or a StableDiffusionXLPipeline for presets with a second text encoder.
    `device`: where the weights are created (a GPU initialises SDXL's 2.6B parameters in seconds).
    """
    import shutil

    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    cfg = PRESETS[preset]
    sdxl = "text_2" in cfg
    folder = Path(folder)
    toks = _tokenizers(folder, sdxl)
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg["unet"]).to(dtype)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**cfg["vae"]).to(dtype)
        torch.manual_seed(seed + 2)
        text_encoder = _text_encoder(cfg["text"], toks[0], with_projection=False).to(dtype)
        text_encoder_2 = None
        if sdxl:
            torch.manual_seed(seed + 3)
            text_encoder_2 = _text_encoder(cfg["text_2"], toks[1], with_projection=True).to(dtype)
    if sdxl:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=toks[0], tokenizer_2=toks[1], unet=unet,
                                         scheduler=_scheduler(cfg), add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=toks[0], unet=unet,
                                       scheduler=_scheduler(cfg), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    if save:
        pipe.save_pretrained(str(folder))
    shutil.rmtree(folder / "_tok")
    shutil.rmtree(folder / "_tok2", ignore_errors=True)
    return pipe


def build_edit_model(folder, preset: str = "sdxl", seed: int = 0) -> Path:
    """A pipeline folder for the closed-form edit only, at full size without holding the UNet in memory.

    The text encoders (and VAE) are built with random weights as in `build_random_pipeline`; the UNet
    is written straight to disk: a complete safetensors file with every parameter of the preset's UNet
    (shapes from a model built on the meta device), random `attn2.to_k/to_v` matrices and every other
    tensor left as zeros (a sparse file: no disk blocks, no memory). Editing reads only the header and
    the edited matrices (`utils.models.read_cross_attention_weights`), so this is all it needs; the
    images such a UNet would make are meaningless (use `build_random_pipeline` for generation).
    """
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg = PRESETS[preset]
    sdxl = "text_2" in cfg
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    toks = _tokenizers(folder, sdxl)
    names = [("tokenizer", "text_encoder", cfg["text"], False)]
    if sdxl:
        names.append(("tokenizer_2", "text_encoder_2", cfg["text_2"], True))
    for i, (tok_dir, enc_dir, text_cfg, proj) in enumerate(names):
        toks[i].save_pretrained(str(folder / tok_dir))
        torch.manual_seed(seed + 2 + i)
        enc = _text_encoder(text_cfg, toks[i], with_projection=proj)
        enc.save_pretrained(str(folder / enc_dir))
        del enc
    torch.manual_seed(seed + 1)
    AutoencoderKL(**cfg["vae"]).save_pretrained(str(folder / "vae"))
    _scheduler(cfg).save_pretrained(str(folder / "scheduler"))
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
    unet.save_config(str(folder / "unet"))
    _write_sparse_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors",
                              {k: tuple(v.shape) for k, v in unet.state_dict().items()}, seed)
    from diffusers import __version__ as diffusers_version

    pipeline = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    index = {"_class_name": pipeline, "_diffusers_version": diffusers_version,
             "scheduler": ["diffusers", "LMSDiscreteScheduler"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder": ["transformers", "CLIPTextModel"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    if sdxl:
        index.update(tokenizer_2=["transformers", "CLIPTokenizer"],
                     text_encoder_2=["transformers", "CLIPTextModelWithProjection"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    shutil.rmtree(folder / "_tok")
    shutil.rmtree(folder / "_tok2", ignore_errors=True)
    return folder


def _write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    """A float32 safetensors file of `shapes`: attn2.to_k/to_v uniform(+-1/sqrt(fan_in)) like nn.Linear's
    initialisation, every other tensor zeros left as holes in a sparse file."""
    import math
    import re

    keys = sorted(shapes)
    header, offset = {}, 0
    for k in keys:
        n = 4 * math.prod(shapes[k])
        header[k] = {"dtype": "F32", "shape": list(shapes[k]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        start = f.tell()
        for k in keys:
            if re.search(r"attn2\.to_[kv]\.weight$", k):
                bound = 1 / math.sqrt(shapes[k][1])
                w = (torch.rand(shapes[k], generator=g) * 2 - 1) * bound
                f.seek(start + header[k]["data_offsets"][0])
                f.write(w.numpy().tobytes())
        f.truncate(start + offset)
# ---------------------------------------------------------------------------------------------
# Tiny scorer models (CLIP, ResNet, Inception, LPIPS) with random weights, and a small copy of the
# datasets: what a paper script needs to run end to end offline in seconds (tests/test_scripts.py).
# ---------------------------------------------------------------------------------------------

IMAGENETTE_LABELS = {0: "tench, Tinca tinca", 217: "English springer, English springer spaniel",
                     482: "cassette player", 491: "chain saw, chainsaw", 497: "church, church building",
                     566: "French horn, horn", 569: "garbage truck, dustcart",
                     571: "gas pump, gasoline pump, petrol pump, island dispenser", 574: "golf ball",
                     701: "parachute, chute"}


def build_tiny_clip(folder, projection_dim: int = 16, seed: int = 0):
    """A CLIPModel (text and vision towers 2 x 32, 32 x 32 images) with its processor and tokenizer.

    `projection_dim=768` gives ViT-L/14's embedding size, so Q16's shipped prompt embeddings fit.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    write_char_tokenizer(folder)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                      num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2),
                     projection_dim=projection_dim)
    CLIPModel(cfg).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


def build_tiny_resnet(folder, seed: int = 0):
    """A 1000-class ResNet under ImageNet's label names (Imagenette's exact), which classifies every
    image as class 0, "tench, Tinca tinca"."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    folder = Path(folder)
    labels = {i: f"class {i}" for i in range(1000)}
    labels.update(IMAGENETTE_LABELS)
    torch.manual_seed(seed)
    cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=1000, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = ResNetForImageClassification(cfg)
    with torch.no_grad():
        model.classifier[1].weight.zero_()
        model.classifier[1].bias.zero_()
        model.classifier[1].bias[0] = 10.0
    model.save_pretrained(str(folder))
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(str(folder))
    return folder


class TinyInception(torch.nn.Module):
    """Stands in for clean-fid's TorchScript Inception: same interface (`.layers`), 12-d features."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.layers = nn.Sequential(nn.Conv2d(3, 6, 7, stride=4), nn.ReLU(), nn.Conv2d(6, 12, 3, stride=2),
                                    nn.AdaptiveAvgPool2d(1))

    def forward(self, x, return_features: bool = False):
        return self.layers(x)


def build_tiny_inception(path, seed: int = 0):
    import warnings

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyInception()).save(str(path))
    return Path(path)


def build_lpips_weights(alexnet_path, lpips_path, seed: int = 0):
    """Random AlexNet weights under torchvision's keys, non-negative linear weights under LPIPS's."""
    from utils.score.lpips import CHANNELS, _build

    torch.manual_seed(seed)
    net = _build().net.state_dict()
    alex = {k: torch.randn_like(v) * 0.05 for k, v in net.items()}
    alex["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision's file also has the classifier
    for p in (alexnet_path, lpips_path):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    torch.save(alex, alexnet_path)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(CHANNELS)}, lpips_path)
    return Path(alexnet_path), Path(lpips_path)


def build_random_resnet50(path, seed: int = 0) -> Path:
    """torchvision's ResNet-50 architecture (the toolkit's plain-torch copy) with random weights, its
    output layer biased so every image is class 0 ("tench"): the object classifier's stand-in."""
    from utils.score.resnet import _build

    torch.manual_seed(seed)
    model = _build()
    with torch.no_grad():
        model.fc.weight.mul_(0.0)
        model.fc.bias.zero_()
        model.fc.bias[0] = 10.0
    torch.save(model.state_dict(), str(path))
    return Path(path)


def install_in_hf_cache(cache_dir, repo_id: str, folder) -> Path:
    """Place `folder`'s files in a Hugging Face hub cache as `repo_id`'s main revision, so that
    `from_pretrained(repo_id)` finds them offline (HF_HUB_CACHE=cache_dir, HF_HUB_OFFLINE=1)."""
    import shutil

    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot


def offline_scorers(home) -> dict:
    """Tiny stand-ins for every scorer the paper scripts use, under `home`; returns the environment
    variables under which the toolkit's defaults resolve to them (CLIP ViT-L/14, ResNet-50, the FID
    Inception, LPIPS's AlexNet and linear weights; NudeNet ships its model)."""
    from utils.score.clip import DEFAULT_CLIP
    from utils.score.fid import INCEPTION_FILE
    from utils.score.lpips import ALEXNET_FILE, LPIPS_CACHE_FILE
    from utils.score.objects import DEFAULT_RESNET

    from utils.score.clip import CLIP_B32

    home = Path(home)
    cache = home / "hf_cache"
    install_in_hf_cache(cache, DEFAULT_CLIP, build_tiny_clip(home / "build" / "clip", projection_dim=768))
    install_in_hf_cache(cache, CLIP_B32, build_tiny_clip(home / "build" / "clip_b32", projection_dim=16))
    if "/" in DEFAULT_RESNET and not DEFAULT_RESNET.startswith("torchvision/"):
        install_in_hf_cache(cache, DEFAULT_RESNET, build_tiny_resnet(home / "build" / "resnet"))
    resnet50 = build_random_resnet50(home / "resnet50_random.pth")
    build_tiny_inception(home / INCEPTION_FILE)
    build_lpips_weights(home / "torch" / "hub" / "checkpoints" / ALEXNET_FILE,
                        home / ".cache" / "rece" / LPIPS_CACHE_FILE)
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "RECE_INCEPTION": str(home / INCEPTION_FILE),
            "RECE_RESNET50": str(resnet50),
            "TORCH_HOME": str(home / "torch"), "HOME": str(home)}


def write_small_datasets(dest, image_size: int = 16, rows: int = 3, always=None) -> Path:
    """A few rows of each CSV in dataset/, images `image_size` square: the DATA of a quick script run.

    Rows: the first of each `artist` / `class` when the file has such a column (so the classifiers
    keep their candidates), else `rows` rows spread over the file; plus the case numbers in
    `always` ({file name: [case numbers]}). Pair files (Ring-A-Bell) are copied whole.
    """
    import numpy as np
    import pandas as pd

    from utils.datasets import DATASET_DIR

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    always = always or {}
    for src in sorted(DATASET_DIR.glob("*.csv")):
        try:
            df = pd.read_csv(src, keep_default_na=False, dtype=str)
        except pd.errors.ParserError:  # robust_imagenette.csv has ragged rows; no script reads it
            continue
        if "sensitive prompt" in df.columns:
            df.to_csv(dest / src.name, index=False)
            continue
        group = next((c for c in ("artist", "class") if c in df.columns), None)
        if group:
            keep = list(df.drop_duplicates(group).index)
        else:
            keep = list(np.linspace(0, len(df) - 1, min(rows, len(df))).round().astype(int))
        if "case_number" in df.columns:
            keep += list(df.index[df["case_number"].isin([str(c) for c in always.get(src.name, [])])])
        small = df.loc[sorted(set(keep))].copy()
        small["sd_image_width"] = small["sd_image_height"] = str(image_size)
        small.to_csv(dest / src.name, index=False)
    return dest

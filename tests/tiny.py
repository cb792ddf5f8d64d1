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
PRESETS = {"tiny": TINY, "sd14": SD14}


def write_char_tokenizer(folder) -> None:
    """A CLIPTokenizer whose vocabulary is the printable ASCII characters (plain and word-final)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.printable if not c.isspace()]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(folder))


def build_random_pipeline(folder, preset: str = "tiny", seed: int = 0, dtype=torch.float32):
    """Build a StableDiffusionPipeline with random weights from `preset` and save it to `folder`."""
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = PRESETS[preset]
    folder = Path(folder)
    write_char_tokenizer(folder / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "_tok"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**cfg["vae"])
    torch.manual_seed(seed + 2)
    text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **cfg["text"])
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(str(folder))
    import shutil

    shutil.rmtree(folder / "_tok")
    return pipe


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

    home = Path(home)
    cache = home / "hf_cache"
    install_in_hf_cache(cache, DEFAULT_CLIP, build_tiny_clip(home / "build" / "clip", projection_dim=768))
    install_in_hf_cache(cache, DEFAULT_RESNET, build_tiny_resnet(home / "build" / "resnet"))
    build_tiny_inception(home / INCEPTION_FILE)
    build_lpips_weights(home / "torch" / "hub" / "checkpoints" / ALEXNET_FILE,
                        home / ".cache" / "rece" / LPIPS_CACHE_FILE)
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "RECE_INCEPTION": str(home / INCEPTION_FILE),
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

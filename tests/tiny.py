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
    from utils.generate.sampling import SD_BETAS

    scheduler = LMSDiscreteScheduler(**SD_BETAS, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(str(folder))
    import shutil

    shutil.rmtree(folder / "_tok")
    return pipe

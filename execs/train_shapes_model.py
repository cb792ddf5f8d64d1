"""Train the built-in `shapes` text-to-image model from scratch and save it as a diffusers pipeline.

A Stable Diffusion pipeline in miniature, trained on the shapes world of utils/world/shapes.py (64x64
images of one coloured shape, captions such as "a red circle"), so that concept erasure can be run
and measured for real on a CPU. Same components and conventions as SD 1.x: an AutoencoderKL with 8x
downsampling and 4 latent channels, a CLIP text encoder with a CLIP BPE tokenizer padding to 77
tokens, a UNet2DConditionModel whose cross-attention (attn2) reads the text embedding, epsilon
prediction on the scaled-linear beta schedule, an LMS scheduler for sampling, and caption dropout so
that classifier-free guidance with the empty prompt works.

Phases (each seeded):
  1. the shape judge, a small CNN (utils/world/shapes.py), saved to --judge_path;
  2. the VAE, on rendered images (or --vae_from an existing pipeline: the images are the same);
  3. the text encoder: a CLIP text transformer pretrained on the captions alone (from a caption's
     end-of-text state, predict the scene's colour, shape and size), then frozen, so that a colour's
     synonyms and objects are related to its name partly, as in SD's CLIP (docs/method.md §13);
  4. the UNet, on the VAE latents of rendered images, with an EMA of its weights;
  5. the pipeline is saved (weights in --save_dtype), with the evaluation prompt table, and
     reloaded from disk to measure colour / shape accuracy, per colour the rate on its explicit,
     synonym and implicit prompts, and sampling speed (report.json).

The shipped model (models/shapes) took 41 minutes on this project's 2-core CPU with
    python execs/train_shapes_model.py --output_dir models/shapes --no-train_judge --vae_from OLD_MODEL --unet_steps 5000
(the judge and the VAE of the first model reused: the world's images did not change. Training them
too adds roughly a quarter of an hour: the first model's whole run, 1500 UNet steps, took 29 minutes).

Example:
    python execs/train_shapes_model.py --output_dir models/shapes --overwrite
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.world import shapes  # noqa: E402
from utils.generate.sampling import SD_BETAS, tile_images  # noqa: E402
from utils.cli import (batch_size_arg, count_arg, finite_float, nonneg_int_arg, seed_arg, steps_arg,  # noqa: E402
                       workers_arg)
from utils.io import environment_info, write_json  # noqa: E402

OUTPUT_FILES = ("model_index.json", "report.json", "training_config.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output_dir", default="models/shapes", help="folder for the diffusers pipeline")
    p.add_argument("--judge_path", default="models/shape_judge.safetensors", help="shape judge weights (phase 1)")
    p.add_argument("--train_judge", action=argparse.BooleanOptionalAction, default=True,
                   help="train the shape judge; --no-train_judge loads it from --judge_path")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pipeline in --output_dir")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of every random draw (data, init, noise)")
    p.add_argument("--threads", type=workers_arg, default=2, help="torch CPU threads")
    p.add_argument("--num_images", type=int, default=20000, help="rendered training images (VAE and UNet)")
    # 1. judge
    p.add_argument("--judge_steps", type=int, default=500, help="shape judge training steps (batch 64)")
    p.add_argument("--judge_eval_images", type=int, default=600,
                   help="fresh rendered images on which the judge's accuracy is measured (report.json)")
    # 2. VAE
    p.add_argument("--vae_from", default=None,
                   help="reuse the VAE of this pipeline folder instead of training one (the images are the same)")
    p.add_argument("--vae_crop_steps", type=int, default=800, help="VAE training steps on 32x32 crops (cheap)")
    p.add_argument("--vae_steps", type=int, default=200, help="VAE training steps on whole images, after the crops")
    p.add_argument("--vae_batch_size", type=batch_size_arg, default=32, help="VAE batch size")
    p.add_argument("--vae_lr", type=finite_float, default=2e-3, help="VAE peak learning rate (one-cycle)")
    p.add_argument("--kl_weight", type=finite_float, default=1e-4, help="weight of the VAE's KL term (per pixel)")
    # 3. text encoder
    p.add_argument("--text_hidden_size", type=int, default=128, help="CLIP text encoder width")
    p.add_argument("--text_layers", type=count_arg, default=2, help="CLIP text encoder layers")
    p.add_argument("--token_embedding_std", type=finite_float, default=1.0,
                   help="std of the random token embeddings (CLIP's init uses 0.02; see build_text_encoder)")
    p.add_argument("--text_pretrain_steps", type=nonneg_int_arg, default=800,
                   help="steps of pretraining the text encoder on captions alone (predict the scene's colour, "
                        "shape and size from the caption), before it is frozen; 0: keep it random")
    p.add_argument("--text_pretrain_lr", type=finite_float, default=1e-3, help="peak learning rate of that pretraining")
    p.add_argument("--train_text_encoder", action=argparse.BooleanOptionalAction, default=False,
                   help="train the text encoder jointly with the UNet instead of keeping it random and frozen")
    # 4. UNet
    p.add_argument("--unet_channels", type=int, nargs="+", default=[64, 128], help="UNet block_out_channels")
    p.add_argument("--unet_steps", type=int, default=5000, help="UNet training steps")
    p.add_argument("--batch_size", type=batch_size_arg, default=64, help="UNet batch size")
    p.add_argument("--lr", type=finite_float, default=1e-3, help="UNet peak learning rate (warmup then cosine)")
    p.add_argument("--ema_decay", type=finite_float, default=0.999, help="EMA decay of the UNet weights (0: no EMA)")
    p.add_argument("--snr_gamma", type=finite_float, default=5.0, help="min-SNR loss weighting gamma (0: plain MSE)")
    p.add_argument("--caption_dropout", type=finite_float, default=0.1, help="probability of the empty caption")
    # 5. save and evaluate
    p.add_argument("--save_dtype", choices=["fp16", "fp32"], default="fp16",
                   help="dtype of the saved weights (fp16 halves the folder; load with torch_dtype=finite_float32)")
    p.add_argument("--eval_seeds", type=nonneg_int_arg, default=4, help="evaluation images per colour x shape (0: skip)")
    p.add_argument("--eval_guidance", type=finite_float, nargs="+", default=[shapes.EVALUATION_GUIDANCE, 3.0],
                   help="evaluation CFG scales; the first is written to shapes_prompts.csv as the default")
    p.add_argument("--eval_steps", type=steps_arg, default=shapes.EVALUATION_STEPS, help="evaluation LMS steps")
    args = p.parse_args(argv)

    counts = ("num_images", "judge_eval_images", "batch_size", "vae_batch_size", "threads")
    steps = ("judge_steps", "vae_crop_steps", "vae_steps", "unet_steps")
    for name in counts + steps:
        low = 0 if name in steps else 1
        if getattr(args, name) < low:
            p.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if not 0 <= args.caption_dropout < 1:
        p.error(f"--caption_dropout must be in [0, 1), got {args.caption_dropout}")
    if args.vae_from is not None and not (Path(args.vae_from) / "vae" / "config.json").is_file():
        p.error(f"--vae_from {args.vae_from} holds no vae/ folder of a diffusers pipeline")
    if not args.train_judge and not Path(args.judge_path).is_file():
        p.error(f"--no-train_judge needs an existing --judge_path, {args.judge_path} does not exist")
    if args.text_hidden_size % 4:
        p.error(f"--text_hidden_size must be a multiple of 4 (attention heads), got {args.text_hidden_size}")
    if any(c % 32 for c in args.unet_channels):
        p.error(f"--unet_channels must be multiples of 32 (group norm), got {args.unet_channels}")
    out = Path(args.output_dir)
    if not args.overwrite and any((out / f).exists() for f in OUTPUT_FILES):
        p.error(f"--output_dir {out} already holds a model; choose another folder or pass --overwrite")
    if not args.overwrite and args.train_judge and Path(args.judge_path).exists():
        p.error(f"--judge_path {args.judge_path} exists; pass --overwrite to retrain it or --no-train_judge to reuse it")
    return args


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------

def build_vae():
    """AutoencoderKL, 64x64x3 <-> 8x8x4 (SD's 8x downsampling and 4 channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64, 64),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         sample_size=shapes.IMAGE_SIZE)


def build_text_encoder(tokenizer, hidden_size: int, layers: int, token_embedding_std: float, seed: int):
    """A small random CLIP text transformer over the tokenizer's vocabulary (77 positions, like SD's).

    CLIP's default initialisation (token embeddings of std 0.02) makes a random encoder's rows
    mostly the layers' mixing of the context: "red" and "green" at the same position come out with
    cosine 0.87. Token embeddings of std `token_embedding_std` (1.0) keep each row dominated by its
    own word (cosine 0.16) while the layers still mix some context into later rows, like a trained
    CLIP's. That is what lets a linear edit of to_k / to_v (UCE) tell "red" from "green".
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=77,
                            projection_dim=hidden_size, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = CLIPTextModel(config)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(seed)) * token_embedding_std)
    return model


def build_unet(channels: list[int], cross_attention_dim: int):
    """UNet2DConditionModel on 8x8x4 latents; every block has cross-attention (attn2)."""
    from diffusers import UNet2DConditionModel

    n = len(channels)
    return UNet2DConditionModel(sample_size=shapes.IMAGE_SIZE // 8, in_channels=4, out_channels=4,
                                block_out_channels=tuple(channels), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D",) * n,
                                up_block_types=("CrossAttnUpBlock2D",) * n,
                                cross_attention_dim=cross_attention_dim, attention_head_dim=4,
                                norm_num_groups=32)


def noise_schedule_kwargs() -> dict:
    """SD's training schedule (docs/method.md §5): scaled-linear betas 0.00085 -> 0.012 over 1000 steps."""
    return dict(SD_BETAS)


# ---------------------------------------------------------------------------------------------
# Training phases
# ---------------------------------------------------------------------------------------------

def render_dataset(num_images: int, seed: int):
    """Images (n, 3, 64, 64) in [-1, 1] and their scenes; scene seeds seed * 10**7 + i."""
    imgs, scenes = [], []
    for i in range(num_images):
        img, _, scene = shapes.render_example(seed * 10**7 + i)
        imgs.append(img)
        scenes.append(scene)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, scenes


def train_vae(vae, images, crop_steps: int, steps: int, batch_size: int, lr: float, kl_weight: float, seed: int,
              log):
    """Reconstruction (L1 + L2) plus a small KL term; no perceptual or adversarial loss needed here.

    The first `crop_steps` steps see random 32x32 crops (the VAE is convolutional, and a crop costs
    a quarter of an image: most of the learning at a quarter of the time), the last `steps` whole
    images, so the mid-block attention and the image borders are learned at the real size.
    """
    total = crop_steps + steps
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    vae.train()
    size = images.shape[-1]
    for step in range(total):
        x = images[torch.randint(0, len(images), (batch_size,), generator=gen)]
        if step < crop_steps:
            oy, ox = torch.randint(0, size // 2 + 1, (2,), generator=gen).tolist()
            x = x[:, :, oy:oy + size // 2, ox:ox + size // 2]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + kl_weight * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == total - 1:
            log(f"vae step {step}: reconstruction {rec.item():.4f}, kl {kl.item():.3f}")
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images, batch_size: int = 256):
    """Posterior mean and std of every image (the UNet samples from them at each step)."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        dist = vae.encode(images[i:i + batch_size]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def caption_sampler(scenes, captions: list[str], dropout: float, seed: int):
    """A function (scene indices) -> caption indices (into `captions`) for a batch.

    Each scene's caption is drawn afresh at every use by shapes.sample_caption; with probability
    `dropout` it is the empty caption instead (classifier-free guidance).
    """
    index = {c: i for i, c in enumerate(captions)}
    rng = np.random.default_rng([seed, 3])
    empty = index[""]

    def draw(scene_idx: np.ndarray) -> np.ndarray:
        out = np.array([index[shapes.sample_caption(scenes[i], rng)] for i in scene_idx], dtype=np.int64)
        out[rng.random(len(scene_idx)) < dropout] = empty
        return out

    return draw


def caption_targets(scene, caption: str) -> tuple[int, int, int]:
    """What a caption says about its scene: colour, shape and size class (-100 where it says nothing).

    The colour is always said (by name, synonym, object, or by naming no colour: the default ink).
    """
    words = set(caption.replace("-", " ").split())
    shape = shapes.SHAPES.index(scene.shape) if scene.shape in words else -100
    sizes = [k for k, w in enumerate(shapes.SIZES) if w in words]
    return shapes.colour_names().index(scene.colour), shape, sizes[0] if sizes else -100


def pretrain_text_encoder(text_encoder, tokenizer, steps: int, lr: float, seed: int, log, batch_size: int = 128,
                          pool_size: int = 20000):
    """Pretrain the text encoder on captions alone, then it is frozen (docs/method.md §13).

    The task: from the caption's pooled (end-of-text) state, predict what the caption says about its
    scene -- the colour (by name, synonym or object), the shape and the size -- with linear heads that
    are then thrown away. Like CLIP's pretraining, this ties "crimson" and "tomato" to red through
    what they depict, so their embeddings become related, but only through the end-of-text and later
    rows that the task shapes; the word's own row stays mostly its own.
    """
    import torch.nn.functional as F

    rng = np.random.default_rng([seed, 5])
    names = shapes.colour_names()
    pairs = []
    for i in range(min(pool_size, max(steps, 1) * batch_size)):
        plain = rng.random() < shapes.DEFAULT_INK_SHARE
        scene = shapes.sample_scene(seed * 10**7 + 5 * 10**6 + i, colour=names[-1] if plain else None)
        pairs.append((scene, shapes.sample_caption(scene, rng)))
    captions = sorted({c for _, c in pairs})
    cap_index = {c: k for k, c in enumerate(captions)}
    # Padded to the longest caption only: with causal attention the end-of-text state does not see
    # the padding after it, so it equals the state of the 77-token input, at a fraction of the cost.
    tokens = tokenizer(captions, padding="longest", return_tensors="pt").input_ids
    which = torch.tensor([cap_index[c] for _, c in pairs])
    targets = torch.tensor([caption_targets(sc, c) for sc, c in pairs])
    hidden = text_encoder.config.hidden_size
    heads = torch.nn.Linear(hidden, len(names) + len(shapes.SHAPES) + len(shapes.SIZES))
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed + 5)
    text_encoder.train()
    cuts = np.cumsum([len(names), len(shapes.SHAPES)])
    for step in range(steps):
        idx = torch.randint(0, len(pairs), (batch_size,), generator=gen)
        logits = heads(text_encoder(tokens[which[idx]]).pooler_output)
        y = targets[idx]
        loss = sum(F.cross_entropy(part, y[:, k], ignore_index=-100)
                   for k, part in enumerate(torch.tensor_split(logits, cuts.tolist(), dim=1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"text step {step}: loss {loss.item():.4f}")
    return text_encoder.eval().requires_grad_(False)


@torch.no_grad()
def word_relations(text_encoder, tokenizer) -> dict:
    """How the encoder relates a colour's other words to its name (cosine similarities).

    For each colour word w, the row of w and the end-of-text row in "a {w} circle", against the same
    rows for the colour's name; synonyms, objects (first word) and the other colours' names are
    averaged over the colours. Measured for the report and docs/method.md §13.
    """
    def rows(word):
        ids = tokenizer(f"a {word} circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
        out = text_encoder(ids).last_hidden_state[0]
        n_word = len(tokenizer(word).input_ids) - 2
        eos = int((ids[0] == tokenizer.eos_token_id).nonzero()[0])
        return out[2 + n_word - 1], out[eos]

    cos = torch.nn.functional.cosine_similarity
    groups = {"synonym": [], "object": [], "other_colour": []}
    for colour in shapes.COLOURS:
        ref = rows(colour)
        others = {"synonym": shapes.SYNONYMS[colour], "object": shapes.OBJECTS[colour],
                  "other_colour": [c for c in shapes.COLOURS if c != colour]}
        for g, words in others.items():
            for w in words:
                r = rows(w)
                groups[g].append((float(cos(ref[0], r[0], dim=0)), float(cos(ref[1], r[1], dim=0))))
    return {g: {"word_row": float(np.mean([a for a, _ in v])), "end_of_text_row": float(np.mean([b for _, b in v]))}
            for g, v in groups.items()}


def train_unet(unet, text_encoder, tokenizer, latents_mean, latents_std, scaling_factor, scenes, args, log,
               callback=None):
    """Epsilon prediction with min-SNR weighting, warmup + cosine LR, EMA; returns the EMA UNet.

    `callback(step, model)`, if given, is called after each step with the model being averaged
    (the EMA copy, or the UNet itself without EMA): a hook for intermediate evaluations.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    noise_scheduler = DDPMScheduler(**noise_schedule_kwargs())
    captions = shapes.all_captions()
    tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    if not args.train_text_encoder:
        with torch.no_grad():
            caption_embeds = text_encoder(tokens)[0]  # every caption once: the encoder is frozen
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if args.train_text_encoder else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    warmup = max(1, args.unet_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / max(1, args.unet_steps)))))
    ema = copy.deepcopy(unet).requires_grad_(False) if args.ema_decay > 0 else None
    draw_captions = caption_sampler(scenes, captions, args.caption_dropout, args.seed)
    rng = np.random.default_rng([args.seed, 4])
    gen = torch.Generator().manual_seed(args.seed + 4)
    unet.train()
    text_encoder.train(args.train_text_encoder)
    t0 = time.time()
    for step in range(args.unet_steps):
        idx = rng.integers(0, len(scenes), size=args.batch_size)
        cap = torch.from_numpy(draw_captions(idx))
        eps0 = torch.randn(latents_mean[idx].shape, generator=gen)
        latents = (latents_mean[idx] + latents_std[idx] * eps0) * scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        cond = text_encoder(tokens[cap])[0] if args.train_text_encoder else caption_embeds[cap]
        pred = unet(noisy, t, cond).sample
        mse = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if args.snr_gamma > 0:
            snr = compute_snr(noise_scheduler, t)
            mse = mse * torch.clamp(snr, max=args.snr_gamma) / snr
        loss = mse.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            decay = min(args.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - decay)
        if callback is not None:
            callback(step, ema if ema is not None else unet)
        if step % 100 == 0 or step == args.unet_steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    text_encoder.eval()
    return (ema if ema is not None else unet).eval()


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def generate(pipe, table, num_inference_steps: int, batch_size: int = 50) -> np.ndarray:
    """Images (n, H, W, 3) uint8 for the rows of a docs/method.md §5 table, in row order.

    Each row's initial latents come from a CPU generator seeded with its evaluation_seed, so an
    image does not depend on the batch it is generated in. Rows with different guidance or size are
    batched apart. Negative prompt: the empty string (docs/method.md §5).
    """
    out = [None] * len(table)
    keys = ["evaluation_guidance", "sd_image_height", "sd_image_width"]
    for (guidance, h, w), group in table.reset_index(drop=True).groupby(keys, sort=False):
        for start in range(0, len(group), batch_size):
            rows = group.iloc[start:start + batch_size]
            gens = [torch.Generator().manual_seed(int(s)) for s in rows.evaluation_seed]
            imgs = pipe(list(rows.prompt), negative_prompt=[""] * len(rows), height=int(h), width=int(w),
                        num_inference_steps=num_inference_steps, guidance_scale=float(guidance),
                        generator=gens, output_type="np").images
            for i, img in zip(rows.index, imgs):
                out[i] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return np.stack(out)


def evaluate(pipe, table, num_inference_steps: int, judge) -> dict:
    """Colour / shape accuracy of the pipeline on `table`, per colour too, and images per second."""
    t0 = time.time()
    images = generate(pipe, table, num_inference_steps)
    seconds = time.time() - t0
    scores = shapes.score_images(images, list(table["colour"]), list(table["shape"]), judge)
    per_colour = {c: float(np.mean([f == c for f, t in zip(scores["colour"], table["colour"]) if t == c]))
                  for c in shapes.COLOURS}
    return dict(images=len(table), guidance=float(table["evaluation_guidance"].iloc[0]),
                num_inference_steps=num_inference_steps, colour_accuracy=scores["colour_accuracy"],
                shape_accuracy=scores["shape_accuracy"], colour_accuracy_by_colour=per_colour,
                images_per_second=len(table) / seconds), images


def evaluate_prompt_sets(pipe, num_inference_steps: int, judge, limit: int = 40) -> dict:
    """Per colour and prompt set (explicit / synonym / implicit, docs/method.md §13): the rate of the
    asked colour and the shape accuracy, on a seeded sample of `limit` prompts each (implicit: held-out
    triples apart too)."""
    out = {}
    for colour in shapes.COLOURS:
        for kind in shapes.PROMPT_SETS:
            table = shapes.prompt_set(kind, colour, limit=limit)
            images = generate(pipe, table, num_inference_steps)
            scores = shapes.score_images(images, list(table["colour"]), list(table["shape"]), judge)
            hit = np.array([f == colour for f in scores["colour"]])
            entry = {"images": len(table), "colour_rate": float(hit.mean()),
                     "shape_accuracy": scores["shape_accuracy"]}
            if kind == "implicit":
                held = table["held_out"].to_numpy(bool)
                entry["colour_rate_held_out"] = float(hit[held].mean()) if held.any() else float("nan")
                entry["colour_rate_seen"] = float(hit[~held].mean()) if (~held).any() else float("nan")
            out[f"{colour}/{kind}"] = entry
    return out


# ---------------------------------------------------------------------------------------------

def main(args):
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline
    from PIL import Image
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items()}
    write_json(out / "training_config.json", {**config, "environment": environment_info()})
    timings = {}

    def log(msg):
        print(msg, flush=True)

    # 1. The shape judge
    t0 = time.time()
    if args.train_judge:
        judge = shapes.train_shape_judge(num_steps=args.judge_steps, seed=args.seed, log=log)
        Path(args.judge_path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, args.judge_path)
    judge = shapes.load_shape_judge(args.judge_path)
    judge_report = shapes.judge_accuracy(num_images=args.judge_eval_images, judge=judge)
    timings["judge_s"] = time.time() - t0
    log(f"judge: {judge_report}")

    # 2. The VAE
    t0 = time.time()
    images, scenes = render_dataset(args.num_images, args.seed)
    torch.manual_seed(args.seed)
    if args.vae_from is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(Path(args.vae_from) / "vae", torch_dtype=torch.float32).eval()
    else:
        vae = train_vae(build_vae(), images, args.vae_crop_steps, args.vae_steps, args.vae_batch_size,
                        args.vae_lr, args.kl_weight, args.seed, log)
    latents_mean, latents_std = encode_latents(vae, images)
    scaling_factor = float(1.0 / latents_mean.std())  # unit-variance latents, as SD's 0.18215 intends
    vae.register_to_config(scaling_factor=scaling_factor)
    timings["vae_s"] = time.time() - t0
    log(f"vae done: latent std {latents_mean.std():.3f} -> scaling_factor {scaling_factor:.4f}")

    # 3. Tokenizer and text encoder
    tokenizer = shapes.build_tokenizer()
    text_encoder = build_text_encoder(tokenizer, args.text_hidden_size, args.text_layers, args.token_embedding_std,
                                      args.seed + 1)
    relations = {"random": word_relations(text_encoder, tokenizer)}
    t0 = time.time()
    if args.text_pretrain_steps:
        pretrain_text_encoder(text_encoder, tokenizer, args.text_pretrain_steps, args.text_pretrain_lr, args.seed, log)
        relations["pretrained"] = word_relations(text_encoder, tokenizer)
    timings["text_s"] = time.time() - t0
    log(f"word relations: {json.dumps(relations)}")
    text_encoder.requires_grad_(args.train_text_encoder)

    # 4. The UNet
    t0 = time.time()
    torch.manual_seed(args.seed + 2)
    unet = build_unet(args.unet_channels, args.text_hidden_size)
    unet = train_unet(unet, text_encoder, tokenizer, latents_mean, latents_std, scaling_factor, scenes, args, log)
    timings["unet_s"] = time.time() - t0

    # 5. Save, reload from disk, evaluate
    scheduler = LMSDiscreteScheduler(**noise_schedule_kwargs(), steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    dtype = torch.float16 if args.save_dtype == "fp16" else torch.float32
    pipe.to(dtype=dtype).save_pretrained(out, safe_serialization=True)
    # The evaluation table, with the first --eval_guidance as the model's default guidance.
    table = shapes.evaluation_table(seeds_per_pair=max(args.eval_seeds, 1), guidance=args.eval_guidance[0])
    table["num_inference_steps"] = args.eval_steps
    table.to_csv(out / "shapes_prompts.csv", index=False)

    report = {"timings": timings, "judge": judge_report, "scaling_factor": scaling_factor,
              "word_relations": relations,
              "parameters": {name: sum(p.numel() for p in m.parameters())
                             for name, m in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))},
              "evaluation": []}
    if args.eval_seeds > 0:
        loaded = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
        loaded.set_progress_bar_config(disable=True)
        for k, guidance in enumerate(args.eval_guidance):
            result, generated = evaluate(loaded, table.assign(evaluation_guidance=guidance), args.eval_steps, judge)
            report["evaluation"].append(result)
            log(json.dumps(result))
            if k == 0:
                tile_images([Image.fromarray(g) for g in generated], len(shapes.SHAPES) * args.eval_seeds).save(out / "samples.png")
        report["prompt_sets"] = evaluate_prompt_sets(loaded, args.eval_steps, judge, limit=max(8, 10 * args.eval_seeds))
        log(json.dumps(report["prompt_sets"]))
    report["size_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    write_json(out / "report.json", report)
    log(f"saved {out} ({report['size_bytes'] / 1e6:.1f} MB); timings {timings}")


if __name__ == "__main__":
    main(parse_args())

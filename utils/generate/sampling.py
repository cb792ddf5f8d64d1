"""Seeded, batched image generation over prompt tables (docs/method.md §5).

`generate_table` is what the CLI (`execs/generate_images.py`), training-time validation and the
red-teaming attacks call: given a pipeline and a table from `utils.prompts.read_prompt_table`, it
writes `imgs/{case_number}_{k}.png` for sample k of each row and a `prompts.csv` with one row per image.

Semantics (docs/method.md §5):
- Sampler: LMS (beta 0.00085 to 0.012, scaled_linear, 1000 train steps, the authors' scheduler), 50
  steps by default; DDIM and DPM-Solver++ as options. Classifier-free guidance with the empty prompt as
  negative: eps = eps(uncond) + g * (eps(cond) - eps(uncond)), g per row. Optionally Safe Latent
  Diffusion (`sld=`, docs/method.md §11): the UNet also sees a safety concept and the guidance is
  StableDiffusionPipelineSafe's, in the same batched, seeded, resumable loop.
- Initial noise: per row ONE draw `randn((num_samples, C, h/f, w/f))` in float32 from
  `torch.Generator("cpu").manual_seed(row seed)`, then moved to the device and dtype (f = the VAE's
  scale factor, 8 for SD). The noise therefore depends only on the row: not on batch size, process
  count, row order or device. The authors seeded a CUDA generator (`torch.cuda.manual_seed`), which
  draws different numbers: images for the same seed differ from theirs, as a set they are equivalent.

How it is fast (benchmarks/generation_speed.py measures it against one pipeline call per row):
- rows are batched ACROSS prompts: rows of one image size share a denoising loop, each with its own
  guidance scale (a (B, 1, 1, 1) tensor), so the UNet runs on 2B latents per step;
- the empty prompt is encoded once; timesteps, sigmas and the LMS coefficients (diffusers integrates
  them with scipy at every step of every call) are computed once per (scheduler, steps);
- no per-row pipeline call: the loop below runs the pipeline's components directly.

Exactness: images do not depend on how rows are batched. The text encoder and the VAE run one
prompt / one image at a time, and the UNet always sees at least two rows (a lone row runs with a copy
of itself): BLAS/oneDNN choose other kernels for the smallest batches, and with these two rules the
images on the CPU are bit-for-bit the same for any batch size, process count, row order or resume,
given the same number of CPU threads (reductions split over threads round differently; torchrun gives
each process one thread). tests/test_generation.py checks all of it. On a GPU, cuBLAS/cuDNN also pick
kernels by shape, so images made with other batch sizes can differ by float rounding (amplified a
little over the steps); the noise, and so what the image shows, does not. Process shards and resumes
work in whole batches of one fixed plan (`plan_batches`), so with an unchanged batch size they repeat
the uninterrupted run exactly wherever the kernels are deterministic.

Resume and safety: an image already present and readable is not generated again; every PNG is written
to a temporary file in the same folder and renamed (a killed run never leaves a partial PNG under its
final name); `prompts.csv` is written (atomically) only once every image of the table exists, and a
stale one is removed when a rerun starts, so it never lists an image that is not on disk.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from utils.errors import UserError, check_count, check_finite
from utils.io import atomic_path

SCHEDULERS = ("lms", "ddim", "dpm++")
# docs/method.md §5: the authors' LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, scaled_linear, 1000).
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
NOISE = "torch.Generator('cpu').manual_seed(row seed); randn((num_samples, C, h/f, w/f), float32) per row"
IMGS = "imgs"
PROMPTS_CSV = "prompts.csv"
GRID = "grid.png"
OUTPUTS = (IMGS, PROMPTS_CSV, GRID)


def image_name(case_number: int, k: int) -> str:
    return f"{int(case_number)}_{int(k)}.png"


# ---------------------------------------------------------------------------------------------
# Samplers: everything that depends only on (scheduler, steps) is computed once, in __init__.
# ---------------------------------------------------------------------------------------------

class LMSSampler:
    """Linear multistep (order 4) with its coefficients tabulated once.

    The arithmetic is diffusers' `LMSDiscreteScheduler.step` operation for operation (same tensors,
    same order), so images equal the pipeline's; only `get_lms_coefficient` (a scipy integral per
    step and order) is no longer recomputed for every step of every image.
    """

    order = 4

    def __init__(self, steps: int, device, prediction_type: str = "epsilon"):
        from diffusers import LMSDiscreteScheduler

        s = LMSDiscreteScheduler(**SD_BETAS, prediction_type=prediction_type)
        s.set_timesteps(steps, device=device)
        self.prediction_type = prediction_type
        self.timesteps = s.timesteps
        self.sigmas = s.sigmas  # float32, on the CPU (as diffusers keeps them)
        self.init_noise_sigma = s.init_noise_sigma
        self.coeffs = [[s.get_lms_coefficient(min(i + 1, self.order), i, j) for j in range(min(i + 1, self.order))]
                       for i in range(steps)]

    def start(self):
        return []  # the derivatives of the last `order` steps

    def scale_model_input(self, sample, i: int, state):
        sigma = self.sigmas[i]
        return sample / ((sigma ** 2 + 1) ** 0.5)

    def step(self, model_output, i: int, sample, state):
        sigma = self.sigmas[i]
        if self.prediction_type == "epsilon":
            pred_original_sample = sample - sigma * model_output
        elif self.prediction_type == "v_prediction":
            pred_original_sample = model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + (sample / (sigma ** 2 + 1))
        else:  # "sample"
            pred_original_sample = model_output
        derivative = (sample - pred_original_sample) / sigma
        state.append(derivative)
        if len(state) > self.order:
            state.pop(0)
        return sample + sum(coeff * d for coeff, d in zip(self.coeffs[i], reversed(state)))


class SchedulerSampler:
    """Any diffusers scheduler, prepared once (`set_timesteps`); each batch steps a fresh copy."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.timesteps = scheduler.timesteps
        self.init_noise_sigma = scheduler.init_noise_sigma

    def start(self):
        return copy.deepcopy(self.scheduler)

    def scale_model_input(self, sample, i: int, state):
        return state.scale_model_input(sample, self.timesteps[i])

    def step(self, model_output, i: int, sample, state):
        return state.step(model_output, self.timesteps[i], sample, return_dict=False)[0]


def make_sampler(name: str, steps: int, device="cpu", prediction_type: str = "epsilon"):
    """The sampler `name` (one of SCHEDULERS) for `steps` denoising steps (built once per process and
    reused: samplers are never modified, each batch steps its own state)."""
    if name not in SCHEDULERS:
        raise UserError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    check_count(steps, "--ddim_steps")
    return _make_sampler(name, int(steps), str(torch.device(device)), prediction_type)


@functools.lru_cache(maxsize=8)
def _make_sampler(name: str, steps: int, device: str, prediction_type: str):
    if name == "lms":
        return LMSSampler(steps, device, prediction_type)
    if name == "ddim":
        from diffusers import DDIMScheduler

        s = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          prediction_type=prediction_type)
    else:
        from diffusers import DPMSolverMultistepScheduler

        s = DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="dpmsolver++", solver_order=2,
                                        prediction_type=prediction_type)
    s.set_timesteps(steps, device=device)
    return SchedulerSampler(s)


# ---------------------------------------------------------------------------------------------
# Noise, text conditions, the denoising loop
# ---------------------------------------------------------------------------------------------

def initial_noise(seed: int, num_samples: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The row's initial latents (docs/method.md §5): one float32 draw from a CPU generator seeded with `seed`."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((num_samples, channels, height, width), generator=g, dtype=torch.float32)


def vae_scale_factor(pipe_or_vae_config) -> int:
    """Pixels per latent cell: 2^(VAE levels - 1), from a pipeline or a VAE config dict (8 for SD)."""
    cfg = pipe_or_vae_config.vae.config if hasattr(pipe_or_vae_config, "vae") else pipe_or_vae_config
    return 2 ** (len(cfg["block_out_channels"]) - 1)


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """E(prompt) for each prompt: (n, 77, d) float32 on the CPU, as the pipeline would encode them.

    Encoded one prompt at a time, so that an embedding never depends on which prompts share its batch
    (the text encoder is a small part of the cost: once per image, against 2 x steps UNet passes).
    """
    from utils.models import TextEncoders

    return TextEncoders.from_pipeline(pipe).encode(list(prompts), batch_size=1)[0]


# ---------------------------------------------------------------------------------------------
# SDXL conditioning (docs/models.md): the UNet also takes the pooled text embedding of the second
# encoder and the size/crop "time ids". For a condition given as an embedding only (Ring-A-Bell's
# E(p) + eta v, an attack's adversarial embedding, RECE's c'), the pooled embedding is that of the
# row's prompt text: the attacked prompt for Ring-A-Bell, the concept text when the table's prompt is
# the concept. SD 1.x / 2.x take neither, and these functions return None for them.
# ---------------------------------------------------------------------------------------------

def is_sdxl_pipeline(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


@torch.no_grad()
def encode_pooled(pipe, prompts: list[str]) -> torch.Tensor | None:
    """SDXL: the pooled embedding of each prompt, (n, p) float32 on the CPU, one prompt at a time;
    None for SD 1.x / 2.x."""
    from utils.models import TextEncoders

    if not is_sdxl_pipeline(pipe):
        return None
    return TextEncoders.from_pipeline(pipe).encode_pooled(list(prompts), batch_size=1)[2]


@torch.no_grad()
def unconditional(pipe) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The negative condition of classifier-free guidance: (E(""), None) for SD 1.x / 2.x; for SDXL
    zeros for both the embedding and the pooled embedding when the pipeline's
    `force_zeros_for_empty_prompt` is set (SDXL base), as its `encode_prompt` does, else those of ""."""
    if not is_sdxl_pipeline(pipe):
        return encode_prompts(pipe, [""]), None
    from utils.models import TextEncoders

    E, _, pooled = TextEncoders.from_pipeline(pipe).encode_pooled([""], batch_size=1)
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        return torch.zeros_like(E), torch.zeros_like(pooled)
    return E, pooled


def added_conditions(pipe, pooled: torch.Tensor | None, height: int, width: int) -> dict | None:
    """SDXL's `added_cond_kwargs` for a UNet batch: `text_embeds` = pooled (B, p) and `time_ids` =
    (original size, crop top-left, target size) = (height, width, 0, 0, height, width) per row, the
    pipeline's defaults. None for SD 1.x / 2.x (pooled None)."""
    if pooled is None:
        return None
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype, device=pooled.device)
    return {"text_embeds": pooled, "time_ids": ids.repeat(pooled.shape[0], 1)}


def predict_noise(pipe, latents: torch.Tensor, t, embeds: torch.Tensor, pooled: torch.Tensor | None = None):
    """The UNet's prediction for `latents` (B, C, h, w) at timestep `t` under `embeds` (B, 77, d), any
    base: SDXL also takes `pooled` (B, p) (default: none given raises) and the time ids of the image
    size. Gradients flow (no torch.no_grad here): for attacks that optimise a condition."""
    if is_sdxl_pipeline(pipe) and pooled is None:
        raise ValueError("an SDXL UNet needs the pooled text embedding (see utils.generate.sampling.encode_pooled)")
    f = vae_scale_factor(pipe)
    added = added_conditions(pipe, pooled, latents.shape[-2] * f, latents.shape[-1] * f)
    kwargs = {"added_cond_kwargs": added} if added is not None else {}
    return pipe.unet(latents, t, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0]


# ---------------------------------------------------------------------------------------------
# Safe Latent Diffusion (SLD, Schramowski et al. 2023; docs/method.md §11): guidance away from a
# safety concept, inside the same batched loop (same seeds, batching and resume as plain sampling).
# ---------------------------------------------------------------------------------------------

# diffusers' SafetyConfig presets (the values StableDiffusionPipelineSafe documents), kept here so that
# a run records the numbers it used and does not depend on a deprecated module.
SLD_PRESETS = {
    "weak": dict(warmup_steps=15, guidance_scale=20.0, threshold=0.0, momentum_scale=0.0, momentum_beta=0.0),
    "medium": dict(warmup_steps=10, guidance_scale=1000.0, threshold=0.01, momentum_scale=0.3, momentum_beta=0.4),
    "strong": dict(warmup_steps=7, guidance_scale=2000.0, threshold=0.025, momentum_scale=0.5, momentum_beta=0.7),
    "max": dict(warmup_steps=0, guidance_scale=5000.0, threshold=1.0, momentum_scale=0.5, momentum_beta=0.7),
}
# The safety concept SLD uses by default (the pipeline's, the authors' generate_sld.py keeps it).
SLD_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity,"
               " bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child"
               " abuse, brutality, cruelty")


@dataclass(frozen=True)
class SLD:
    """One SLD setting: a preset's five numbers and the safety concept's text."""
    preset: str
    concept: str
    warmup_steps: int
    guidance_scale: float
    threshold: float
    momentum_scale: float
    momentum_beta: float

    def record(self) -> dict:
        return asdict(self)


def sld_config(preset: str, concept: str | None = None) -> SLD:
    """The SLD setting of `preset` (one of SLD_PRESETS) with `concept` (default SLD_CONCEPT)."""
    if preset not in SLD_PRESETS:
        raise UserError(f"--sld {preset!r} is not a preset; expected one of {', '.join(SLD_PRESETS)}")
    if concept is not None and not str(concept).strip():
        raise UserError("--sld_concept is empty; give the text of the concept to steer away from")
    return SLD(preset, SLD_CONCEPT if concept is None else str(concept), **SLD_PRESETS[preset])


def sld_guidance(eps_uncond, eps_text, eps_safety, momentum, i: int, sld: SLD):
    """One step of SLD's guidance: (eps_text - eps_uncond) less the safety term, and the new momentum.

    The paper's equations 3-8 in StableDiffusionPipelineSafe's order of operations: the safety scale
    is clamp(|eps_text - eps_S| * s_S, max 1), zero where eps_text - eps_S >= threshold; the safety term
    (eps_S - eps_uncond) * scale plus momentum_scale * momentum; the momentum is updated at every step,
    warm-up included; the term is subtracted once the step index i (a denoising step, not a scheduler
    timestep) reaches warmup_steps.
    """
    noise_guidance = eps_text - eps_uncond
    scale = torch.clamp(torch.abs(eps_text - eps_safety) * sld.guidance_scale, max=1.0)
    safety_scale = torch.where((eps_text - eps_safety) >= sld.threshold, torch.zeros_like(scale), scale)
    guidance_safety = torch.mul(eps_safety - eps_uncond, safety_scale)
    guidance_safety = guidance_safety + sld.momentum_scale * momentum
    momentum = sld.momentum_beta * momentum + (1 - sld.momentum_beta) * guidance_safety
    if i >= sld.warmup_steps:
        noise_guidance = noise_guidance - guidance_safety
    return noise_guidance, momentum


@torch.no_grad()
def denoise(pipe, cond: torch.Tensor, uncond: torch.Tensor, latents: torch.Tensor, guidance: torch.Tensor,
            sampler, sld: SLD | None = None, sld_embedding: torch.Tensor | None = None,
            pooled: torch.Tensor | None = None, uncond_pooled: torch.Tensor | None = None) -> list:
    """Run classifier-free guided sampling for one batch and decode it: a list of PIL images.

    `cond` (B, 77, d) and `latents` (B, C, h, w) on the model's device and dtype; `uncond` (1, 77, d):
    the empty prompt's embedding; `guidance` (B,) float32. SDXL: `pooled` (B, p) and `uncond_pooled`
    (1, p) too (see `unconditional`). Mirrors StableDiffusionPipeline.__call__ (same order of
    operations; StableDiffusionXLPipeline.__call__ for SDXL), batched over rows with per-row guidance.
    `sld`: Safe Latent Diffusion (`sld_config`): the UNet also runs on the safety concept and the
    guidance is StableDiffusionPipelineSafe's; `sld_embedding` (1, 77, d) is E(sld.concept) (encoded
    here when not given). As in that pipeline, rows with guidance <= 1 get no safety guidance.
    """
    unet, vae = pipe.unet, pipe.vae
    b = latents.shape[0]
    if b == 1:
        # BLAS and oneDNN use other kernels for the smallest batches (UNet batch 2 = one latent with
        # its unconditional twin): a batch of one row runs as two, the copy discarded, so that a row's
        # image does not depend on whether it shared its batch.
        cond, latents, guidance = cond.repeat(2, 1, 1), latents.repeat(2, 1, 1, 1), guidance.repeat(2)
        pooled = None if pooled is None else pooled.repeat(2, 1)
    n = latents.shape[0]
    parts = [uncond.expand(n, -1, -1), cond]
    pooled_parts = None if pooled is None else [uncond_pooled.expand(n, -1), pooled]
    if sld is not None:
        if sld_embedding is None:
            sld_embedding = encode_prompts(pipe, [sld.concept])
        parts.append(sld_embedding.to(cond.device, cond.dtype).expand(n, -1, -1))
        if pooled_parts is not None:  # SDXL: the safety concept's own pooled embedding
            pooled_parts.append(encode_pooled(pipe, [sld.concept]).to(pooled.device, pooled.dtype).expand(n, -1))
        sld_rows = (guidance > 1.0).to(latents.device).view(-1, 1, 1, 1)
        momentum = None
    embeds = torch.cat(parts)
    f = vae_scale_factor(pipe)
    added = None if pooled_parts is None else added_conditions(
        pipe, torch.cat(pooled_parts), latents.shape[-2] * f, latents.shape[-1] * f)
    unet_kwargs = {} if added is None else {"added_cond_kwargs": added}
    g = guidance.to(latents.device, torch.float32).view(-1, 1, 1, 1)
    latents = latents * sampler.init_noise_sigma
    state = sampler.start()
    for i, t in enumerate(sampler.timesteps):
        model_input = sampler.scale_model_input(torch.cat([latents] * len(parts)), i, state)
        noise_pred = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False, **unet_kwargs)[0]
        if sld is None:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = (noise_pred_uncond + g * (noise_pred_text - noise_pred_uncond)).to(noise_pred.dtype)
        else:
            noise_pred_uncond, noise_pred_text, noise_pred_safety = noise_pred.chunk(3)
            if momentum is None:
                momentum = torch.zeros_like(noise_pred_text)
            noise_guidance, momentum = sld_guidance(noise_pred_uncond, noise_pred_text, noise_pred_safety,
                                                    momentum, i, sld)
            noise_guidance = torch.where(sld_rows, noise_guidance, noise_pred_text - noise_pred_uncond)
            noise_pred = (noise_pred_uncond + g * noise_guidance).to(noise_pred.dtype)
        latents = sampler.step(noise_pred, i, latents, state)
    # Decode one image at a time: the VAE runs on batch 1 whatever the batch, so a decoded image never
    # depends on its neighbours (oneDNN picks other convolution kernels for batch 1 than for more).
    # NaN / inf here would be written as black images and scored as if they were real ones
    check_finite(latents, "the denoised latents (non-finite model weights, or an overflow: try --dtype fp32)")
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)  # SDXL's VAE overflows in fp16: upcast it for good, as the pipeline does
    latents = latents.to(vae.dtype)
    latents = latents / vae.config.scaling_factor
    image = torch.cat([vae.decode(latents[j:j + 1], return_dict=False)[0] for j in range(b)])
    return pipe.image_processor.postprocess(image, output_type="pil")


# ---------------------------------------------------------------------------------------------
# The run over a table: plan, shard, resume, write
# ---------------------------------------------------------------------------------------------

def plan_batches(table: pd.DataFrame, num_samples: int, batch_size: int) -> list[list[int]]:
    """Row positions of each batch: rows grouped by image size (first appearance order), packed in
    table order with at most `batch_size` images per batch (a row's samples are never split)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for pos, (w, h) in enumerate(zip(table["width"], table["height"])):
        groups.setdefault((int(w), int(h)), []).append(pos)
    rows_per_batch = max(1, batch_size // num_samples)
    return [rows[i:i + rows_per_batch] for rows in groups.values() for i in range(0, len(rows), rows_per_batch)]


def image_is_readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def images_table(table: pd.DataFrame, num_samples: int) -> pd.DataFrame:
    """One row per image: case_number, sample, file_name, the row's normalized and carried columns."""
    rows = []
    for rec in table.to_dict("records"):
        for k in range(num_samples):
            rows.append({"case_number": rec["case_number"], "sample": k,
                         "file_name": f"{IMGS}/{image_name(rec['case_number'], k)}",
                         **{c: v for c, v in rec.items() if c != "case_number"}})
    cols = ["case_number", "sample", "file_name"] + [c for c in table.columns if c != "case_number"]
    return pd.DataFrame(rows, columns=cols)


def tile_images(images: list, columns: int):
    """Tile PIL images row by row on white (cells as large as the largest image)."""
    from PIL import Image

    cw, ch = max(i.width for i in images), max(i.height for i in images)
    cols = min(columns, len(images))
    sheet = Image.new("RGB", (cols * cw, math.ceil(len(images) / cols) * ch), "white")
    for n, im in enumerate(images):
        sheet.paste(im, ((n % cols) * cw, (n // cols) * ch))
    return sheet


def write_grid(paths: list[Path], out: Path, columns: int = 4, thumb: int = 128) -> None:
    """A contact sheet of the first images (quick look), written atomically."""
    from PIL import Image

    paths = paths[:columns * columns]
    if not paths:
        return
    ims = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((thumb, thumb))
            ims.append(im.copy())
    sheet = tile_images(ims, columns)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


def _conditions(pipe, table: pd.DataFrame, rows: list[int], embeddings) -> torch.Tensor:
    """(len(rows), 77, d) float32 CPU conditions: E(prompt), or the caller's embeddings."""
    if embeddings is None:
        return encode_prompts(pipe, [table["prompt"].iloc[r] for r in rows])
    if callable(embeddings):
        return torch.stack([torch.as_tensor(embeddings(table.iloc[r])).detach().float().cpu() for r in rows])
    return embeddings[rows].detach().float().cpu()


def _pooled(pipe, table: pd.DataFrame, rows: list[int], pooled) -> torch.Tensor | None:
    """SDXL: (len(rows), p) float32 CPU pooled embeddings: the caller's, else those of the rows' prompts
    (also when the condition itself is a given embedding; see `encode_pooled`). None otherwise."""
    if not is_sdxl_pipeline(pipe):
        return None
    if pooled is None:
        return encode_pooled(pipe, [table["prompt"].iloc[r] for r in rows])
    if callable(pooled):
        return torch.stack([torch.as_tensor(pooled(table.iloc[r])).detach().float().cpu() for r in rows])
    return pooled[rows].detach().float().cpu()


def _check_embeddings(embeddings, n_rows: int, d: int) -> None:
    if embeddings is None or callable(embeddings):
        return
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 3 or embeddings.shape[0] != n_rows \
            or embeddings.shape[2] != d:
        shape = list(embeddings.shape) if hasattr(embeddings, "shape") else type(embeddings).__name__
        raise UserError(f"embeddings must be a tensor of shape ({n_rows}, 77, {d}) (one per table row) or a "
                        f"callable row -> (77, {d}); got {shape}")


class _Single:
    """The process state of a run without accelerate: one process."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self):
        pass


def generate_table(pipe, table: pd.DataFrame, save_path, *, num_samples: int = 1, steps: int = 50,
                   batch_size: int = 8, scheduler: str = "lms", embeddings: torch.Tensor | Callable | None = None,
                   progress: bool = True, state=None, grid: bool = True, sampler=None,
                   sld: SLD | None = None, pooled: torch.Tensor | Callable | None = None) -> pd.DataFrame:
    """Generate `num_samples` images per row of `table` into `save_path`; return the table of images.

    `pipe`: a StableDiffusionPipeline (its unet, vae, tokenizer, text_encoder and image_processor are
    used; its own scheduler is not). `table`: normalized as `read_prompt_table` returns it (columns
    case_number, prompt, seed, guidance, width, height; others are carried into prompts.csv).
    `embeddings`: condition on given text embeddings instead of E(prompt): a tensor (n_rows, 77, d)
    aligned with the table's rows, or a callable taking a table row (pandas Series) and returning
    (77, d); same seeding, batching and files. `state`: an accelerate `PartialState` to split the
    batches across processes (all processes call this; the main one writes prompts.csv and grid.png
    once all are done).
    `sampler`: a prepared sampler to reuse across calls (default: `make_sampler(scheduler, steps)`).
    `sld`: Safe Latent Diffusion guidance (`sld_config(preset, concept)`), None for plain sampling.
    `pooled` (SDXL only): the pooled embeddings, a tensor (n_rows, p) or a callable row -> (p,);
    default: those of the rows' prompts, also when `embeddings` are given (docs/models.md).

    Already present, readable images are kept (resume): a folder must hold one setting's images. The
    CLI guards this with config.json (`utils.io.prepare_resumable_run_dir`); other callers should do
    the same or use one folder per setting (e.g. per validation epoch). Returns one row per image
    (see `images_table`); its attrs hold `generated` and `skipped` (this process's counts).
    """
    from tqdm.auto import tqdm

    state = state or _Single()
    save_path = Path(save_path)
    imgs = save_path / IMGS
    check_count(batch_size, "--batch_size")
    check_count(num_samples, "--num_samples")
    missing_cols = [c for c in ("case_number", "prompt", "seed", "guidance", "width", "height") if c not in table]
    if missing_cols:
        raise UserError(f"generation table lacks column {missing_cols[0]} (read it with utils.prompts.read_prompt_table)")
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    _check_embeddings(embeddings, len(table), unet.config.cross_attention_dim)
    f = vae_scale_factor(pipe)
    if any(int(s) % f for s in list(table["width"]) + list(table["height"])):
        raise UserError(f"image sizes must be multiples of the VAE's scale factor {f}")
    table = table.reset_index(drop=True)
    images = images_table(table, num_samples)
    batches = plan_batches(table, num_samples, batch_size)
    t0 = time.perf_counter()

    # 1. The main process cleans what a killed run may have left: temporary files, a stale prompts.csv.
    if state.is_main_process:
        imgs.mkdir(parents=True, exist_ok=True)
        for tmp in imgs.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        n_present = sum((save_path / name).exists() for name in images["file_name"])
        if n_present < len(images):
            (save_path / PROMPTS_CSV).unlink(missing_ok=True)
    state.wait_for_everyone()

    # 2. This process's batches, less those whose images are all present and readable.
    mine = batches[state.process_index::state.num_processes]
    todo = []
    for rows in mine:
        files = [imgs / image_name(table["case_number"].iloc[r], k) for r in rows for k in range(num_samples)]
        missing = [p for p in files if not (p.exists() and image_is_readable(p))]
        if missing:
            todo.append((rows, files, set(missing)))
    n_todo = sum(len(m) for _, _, m in todo)
    n_mine = sum(len(rows) for rows in mine) * num_samples

    # 3. Denoise batch by batch; write each image atomically.
    sampler = sampler or make_sampler(scheduler, steps, device,
                                      getattr(pipe.scheduler.config, "prediction_type", "epsilon"))
    uncond, uncond_pooled = unconditional(pipe)
    uncond = uncond.to(device, dtype)
    uncond_pooled = None if uncond_pooled is None else uncond_pooled.to(device, dtype)
    sld_embedding = encode_prompts(pipe, [sld.concept]).to(device, dtype) if sld is not None else None
    channels = unet.config.in_channels
    bar = tqdm(total=n_todo, unit="img", desc=f"generating ({len(table)} prompts x {num_samples})",
               disable=not progress or not state.is_main_process or n_todo == 0, dynamic_ncols=True)
    generated = 0
    with torch.inference_mode():
        for rows, files, missing in todo:
            w, h = int(table["width"].iloc[rows[0]]), int(table["height"].iloc[rows[0]])
            noise = torch.cat([initial_noise(table["seed"].iloc[r], num_samples, channels, h // f, w // f)
                               for r in rows])
            cond = _conditions(pipe, table, rows, embeddings).repeat_interleave(num_samples, dim=0)
            guidance = torch.tensor([float(table["guidance"].iloc[r]) for r in rows],
                                    dtype=torch.float32).repeat_interleave(num_samples)
            row_pooled = _pooled(pipe, table, rows, pooled)
            row_pooled = None if row_pooled is None else row_pooled.repeat_interleave(num_samples, dim=0).to(device, dtype)
            pil = denoise(pipe, cond.to(device, dtype), uncond, noise.to(device, dtype), guidance, sampler,
                          sld=sld, sld_embedding=sld_embedding, pooled=row_pooled, uncond_pooled=uncond_pooled)
            for im, path in zip(pil, files):
                if path in missing:
                    with atomic_path(path) as tmp:
                        im.save(tmp, format="PNG")
                    generated += 1
                    bar.update(1)
    bar.close()
    state.wait_for_everyone()

    # 4. The main process records the images once all processes are done.
    if state.is_main_process:
        absent = [n for n in images["file_name"] if not (save_path / n).exists()]
        if absent:
            raise RuntimeError(f"{len(absent)} images are missing after generation, e.g. {absent[0]}")
        with atomic_path(save_path / PROMPTS_CSV) as tmp:
            images.to_csv(tmp, index=False)
        if grid:
            write_grid([save_path / n for n in images["file_name"]], save_path / GRID)
        if progress:
            dt = time.perf_counter() - t0
            done_here = n_mine - n_todo
            print(f"generated {generated} images in {dt:.1f} s ({generated / dt if dt > 0 else 0:.2f} img/s"
                  f"{f' on process 0 of {state.num_processes}' if state.num_processes > 1 else ''}); "
                  f"{done_here} were already there; {len(images)} images listed in {save_path / PROMPTS_CSV}",
                  flush=True)
    images.attrs.update(generated=generated, skipped=n_mine - n_todo)
    return images

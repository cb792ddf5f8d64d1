"""ESD: erasing a concept by fine-tuning the UNet (Gandikota et al. 2023; docs/method.md §11).

    from utils.erase.esd import train_esd
    train_esd(pipe, ["red"], "esd-x", save_path="runs/esd-red", negative_guidance=0.5, iterations=150,
              lr=3e-5, ddim_steps=25)   # the shapes world's colour defaults

The objective: with the frozen model theta and the trained copy theta*, a latent x_t sampled by the
model being trained from the concept prompt c (classifier-free guidance `start_guidance`, DDIM) for a
random number k of the `ddim_steps` steps, and t the timestep x_t is at,

    L = || eps_theta*(x_t, c, t) - ( eps_theta(x_t, '', t) - eta [eps_theta(x_t, c, t) - eps_theta(x_t, '', t)] ) ||^2

(mean over elements; eta = `negative_guidance`). The trained model learns to answer the concept with
the frozen model's negatively guided prediction.

Memory: only the trained set has a frozen copy. Its original tensors are kept aside and the frozen
model is the same UNet run with them in place (`torch.func.functional_call`), so ESD-x on SD 1.4 holds
one UNet plus its cross-attention twice, not two UNets.

Which timestep: x_t after k DDIM steps from pure noise is at the scheduler's k-th timestep, and that
is the timestep given to the three predictions (as the 2025 reference code does; the 2023 code drew a
DDPM timestep from a range that does not match the sampled latent's noise level).

Randomness: iteration i draws its concept, k and its initial noise from a CPU generator seeded with
(seed, i) alone, so a run resumed from a save repeats the uninterrupted run exactly.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from utils.errors import UserError

TRAIN_METHODS = ("esd-x", "esd-x-strict", "esd-u", "esd-all")
ESD_FILE = "esd.safetensors"
RESUME_FILE = "resume_state.safetensors"
LOSSES_FILE = "losses.json"
# ESD-u leaves out what the original leaves out besides cross-attention: the time embedding and the
# output layer (CompVis `time_embed`, `out.`; diffusers `time_embedding`, `conv_norm_out`, `conv_out`).
_NOT_IN_ESD_U = re.compile(r"(^|\.)attn2\.|^time_embedding\.|^conv_norm_out\.|^conv_out\.")


def is_trained(name: str, method: str) -> bool:
    """Whether UNet parameter `name` is trained by `method` (one of TRAIN_METHODS)."""
    if method == "esd-x":  # every cross-attention parameter: to_q, to_k, to_v, to_out
        return re.search(r"(^|\.)attn2\.", name) is not None
    if method == "esd-x-strict":  # the key and value projections only
        return re.search(r"(^|\.)attn2\.to_[kv]\.", name) is not None
    if method == "esd-u":
        return _NOT_IN_ESD_U.search(name) is None
    if method == "esd-all":
        return True
    raise UserError(f"--train_method {method!r} is unknown; expected one of {', '.join(TRAIN_METHODS)}")


def check_method(method: str) -> str:
    is_trained("", method)
    return method


def esd_target(eps_empty: torch.Tensor, eps_concept: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """The frozen model's negatively guided prediction: eps(x_t, '') - eta (eps(x_t, c) - eps(x_t, ''))."""
    return eps_empty - negative_guidance * (eps_concept - eps_empty)


def iteration_draws(seed: int, i: int, n_concepts: int, ddim_steps: int, latent_shape: tuple[int, ...]):
    """(concept index, k, initial noise) of iteration i, from a CPU generator seeded with (seed, i)."""
    g = torch.Generator("cpu").manual_seed((int(seed) << 32) + int(i))
    c = int(torch.randint(n_concepts, (1,), generator=g))
    k = int(torch.randint(ddim_steps, (1,), generator=g))
    noise = torch.randn(latent_shape, generator=g, dtype=torch.float32)
    return c, k, noise


def ddim_scheduler(ddim_steps: int, device):
    from diffusers import DDIMScheduler

    from utils.generate.sampling import SD_BETAS

    s = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(ddim_steps, device=device)
    return s


@torch.no_grad()
def sample_until(unet, scheduler, noise, k: int, cond, uncond, guidance: float):
    """x_t after the first k DDIM steps from `noise` with classifier-free guidance (the model as it is now)."""
    latents = noise * scheduler.init_noise_sigma
    embeds = torch.cat([uncond, cond])
    for t in scheduler.timesteps[:k]:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps_uncond, eps_cond = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0].chunk(2)
        latents = scheduler.step(eps_uncond + guidance * (eps_cond - eps_uncond), t, latents, return_dict=False)[0]
    return latents


def _save_resume_state(path: Path, params: dict, optimizer, names: list[str], losses: list[float], i: int) -> None:
    from safetensors.torch import save_file

    from utils.io import atomic_path

    tensors = {f"param/{n}": params[n].detach().cpu().contiguous() for n in names}
    for n in names:
        st = optimizer.state.get(params[n], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"{key}/{n}"] = st[key].detach().cpu().contiguous()
    steps = {n: float(optimizer.state[params[n]]["step"]) for n in names if "step" in optimizer.state.get(params[n], {})}
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"iteration": str(i), "adam_steps": json.dumps(steps)})


def _load_resume_state(path: Path, params: dict, optimizer, names: list[str]) -> tuple[int, list[float]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        if {f"param/{n}" for n in names} - keys or any(k.startswith("param/") and k[6:] not in params for k in keys):
            raise UserError(f"{path} is the resume state of another trainable set; pass --overwrite to start again")
        steps = json.loads(meta.get("adam_steps", "{}"))
        with torch.no_grad():
            for n in names:
                params[n].copy_(f.get_tensor(f"param/{n}"))
                if n in steps:
                    optimizer.state[params[n]] = {
                        "step": torch.tensor(steps[n]),
                        "exp_avg": f.get_tensor(f"exp_avg/{n}").to(params[n].device),
                        "exp_avg_sq": f.get_tensor(f"exp_avg_sq/{n}").to(params[n].device)}
        losses = f.get_tensor("losses").tolist()
    return int(meta["iteration"]), losses


def train_esd(pipe, concepts: list[str], train_method: str, *, save_path, negative_guidance: float = 1.0,
              iterations: int = 1000, lr: float = 1e-5, ddim_steps: int = 50, start_guidance: float = 3.0,
              image_size: int | None = None, seed: int = 0, save_every: int = 100, metadata: dict | None = None,
              progress: bool = True) -> dict:
    """Fine-tune `pipe.unet` in place with the ESD objective; write SAVE_PATH/esd.safetensors.

    Saves the trained tensors (and, for resuming, the optimizer's moments and the losses) every
    `save_every` iterations and at the end; a SAVE_PATH holding a resume state continues from it (the
    caller checks that its settings are the same: `execs/train_esd.py` does with config.json).
    Returns {"iterations", "resumed_from", "final_loss", "trained_tensors", "trained_parameters",
    "train_wall_seconds", "train_cpu_seconds"}.
    """
    from torch.func import functional_call
    from tqdm.auto import tqdm

    from utils.checkpoints import TENSORS_FORMAT, save_edited_weights
    from utils.generate.sampling import encode_prompts, vae_scale_factor
    from utils.io import write_json

    check_method(train_method)
    if iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {iterations}")
    save_path = Path(save_path)
    unet = pipe.unet
    device = unet.device
    f = vae_scale_factor(pipe)
    image_size = image_size or unet.config.sample_size * f
    if image_size % f:
        raise UserError(f"--image_size {image_size} must be a multiple of the VAE's scale factor {f}")
    latent_shape = (1, unet.config.in_channels, image_size // f, image_size // f)

    # 1. The trained set, and the frozen copy of that set alone
    params = dict(unet.named_parameters())
    names = [n for n in params if is_trained(n, train_method)]
    if not names:
        raise UserError(f"--train_method {train_method} selects no parameter of this UNet")
    unet.requires_grad_(False)
    frozen = {n: params[n].detach().clone() for n in names}
    for n in names:
        params[n].requires_grad_(True)
    optimizer = torch.optim.Adam([params[n] for n in names], lr=lr)

    # 2. Text conditions (the text encoder is not trained)
    E = encode_prompts(pipe, [""] + list(concepts)).to(device, unet.dtype)
    uncond, conds = E[:1], E[1:]
    scheduler = ddim_scheduler(ddim_steps, device)

    # 3. Resume from the last save
    start, losses = 0, []
    if (save_path / RESUME_FILE).is_file():
        start, losses = _load_resume_state(save_path / RESUME_FILE, params, optimizer, names)
        if start > iterations:
            raise UserError(f"--save_path {save_path} holds {start} iterations already; ask for at least {start} "
                            f"(--iterations) or pass --overwrite")

    meta = dict(metadata or {})
    meta.update({"method": "esd", "train_method": train_method, "trained_tensors": len(names)})

    def save(i: int) -> None:
        _save_resume_state(save_path / RESUME_FILE, params, optimizer, names, losses, i)
        save_edited_weights(save_path / ESD_FILE, {n: params[n] for n in names}, {**meta, "iteration": i},
                            format=TENSORS_FORMAT)
        write_json(save_path / LOSSES_FILE, {"iterations": i, "loss": losses})

    # 4. The loop: sample x_t with the model being trained, predict with the frozen set, step
    wall, cpu = time.perf_counter(), time.process_time()
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=f"ESD ({train_method})",
               disable=not progress, dynamic_ncols=True)
    for i in bar:
        c, k, noise = iteration_draws(seed, i, len(concepts), ddim_steps, latent_shape)
        noise = noise.to(device, unet.dtype)
        cond = conds[c:c + 1]
        x_t = sample_until(unet, scheduler, noise, k, cond, uncond, start_guidance)
        t = scheduler.timesteps[k]
        with torch.no_grad():
            eps = functional_call(unet, frozen, (torch.cat([x_t, x_t]), t),
                                  {"encoder_hidden_states": torch.cat([uncond, cond]), "return_dict": False})[0]
            eps_empty, eps_concept = eps.chunk(2)
            target = esd_target(eps_empty, eps_concept, negative_guidance)
        eps_trained = unet(x_t, t, encoder_hidden_states=cond, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(eps_trained.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.5f}", k=k)
        if save_every and (i + 1) % save_every == 0 and i + 1 < iterations:
            save(i + 1)
    bar.close()
    unet.requires_grad_(False)
    if start < iterations or not (save_path / ESD_FILE).is_file():
        save(iterations)
    return {"iterations": iterations, "resumed_from": start, "final_loss": losses[-1] if losses else None,
            "trained_tensors": len(names), "trained_parameters": int(sum(frozen[n].numel() for n in names)),
            # this process's loop (a resumed run counts its own iterations only); CPU time is what the
            # loop costs on an idle machine with as many threads as it used
            "train_wall_seconds": time.perf_counter() - wall, "train_cpu_seconds": time.process_time() - cpu}

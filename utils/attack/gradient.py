"""UnlearnDiffAtk and P4D: optimise adversarial tokens against the model under attack (docs/method.md §10).

Both attacks share the schedule of UnlearnDiff's code: for each train timestep t in order (10, 30,
..., 990 by default) run `iterations` Adam steps on the variable, then project it to tokens, decode
the tokens to text, re-tokenize that text, generate the model under attack's image of it (the row's
seed and guidance) and judge it; stop at the first success. They differ in the variable and the loss:

- UnlearnDiffAtk: a k x |V| matrix of token distributions (uniform at first); the forward pass draws
  one token per row (one-hot), the backward pass is straight-through; after each step every row is
  projected onto the probability simplex; tokens = the rows' argmax. Loss: MSE between the noise eps
  and the erased model's prediction at x_t = noised latent of the base model's image for the prompt.
- P4D: k continuous token embeddings (random tokens at first); the forward pass uses the nearest
  token embedding (cosine), the gradient at that point updates the continuous copy (PEZ). Loss: MSE
  between the base model's prediction for the original prompt and the erased model's prediction
  for the adversarial prompt, at the same x_t. P4D-N: k free tokens replace the prompt; P4D-K: one
  learnable token after every 3 prompt tokens.

Both models are one UNet (`ModelPair`): the erased prediction is a functional call with the
checkpoint's tensors, the base prediction the UNet itself.

SDXL (docs/attacks.md): one adversarial token id per position goes into both encoders' sequences,
each encoder embedding it with its own table; the variable spans both tables side by side (one-hot
rows @ [T1 | T2] for UnlearnDiffAtk, a (k, h1 + h2) embedding for P4D), the condition is the pair's
penultimate states concatenated and its pooled embedding the second encoder's projection of the
adversarial sequence itself (`adversarial_condition`); the P4D target uses the prompt's own.

`objective_before` / `objective_after`: the loss of the initial and of the final adversarial prompt
(as text, re-tokenized, exactly the prompt written to adv_prompts.csv), averaged over fixed
timesteps with fixed noises drawn from (--seed, case_number): the same measurement for every prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.attack.objectives import nearest_tokens, noised_latent, p4d_loss, project_simplex, sample_one_hot, unlearndiff_loss
from utils.attack.tokens import allowed_token_ids, ids_to_text, make_layouts

METHODS = ("unlearndiff", "p4d")


@dataclass(frozen=True)
class GradientAttack:
    """Settings of one gradient attack (see the module docstring)."""
    method: str                 # "unlearndiff" or "p4d"
    layout: str                 # "prefix" (UnlearnDiffAtk), "free" (P4D-N), "every" (P4D-K)
    k: int                      # learnable tokens (prefix, free)
    timesteps: tuple[int, ...]
    iterations: int
    lr: float = 0.01
    weight_decay: float = 0.1
    optimizer: str = "adam"     # "adam" (L2 weight decay, UnlearnDiff's code) or "adamw" (decoupled, P4D's code)
    eval_timesteps: tuple[int, ...] = tuple(range(50, 1000, 100))
    every: int = 3

    def __call__(self, ctx, row: dict) -> dict:
        return attack_prompt(ctx, row, self)


def alphas_cumprod(pipe) -> torch.Tensor:
    ac = getattr(pipe.scheduler, "alphas_cumprod", None)
    if ac is None:
        from diffusers import DDPMScheduler

        from utils.generate.sampling import SD_BETAS

        ac = DDPMScheduler(**SD_BETAS).alphas_cumprod
    return ac.float().cpu()


def reference_latent(ctx, row: dict) -> torch.Tensor:
    """The base model's image of the row (cached in reference/{case}.png) as a VAE latent."""
    from PIL import Image

    from utils.generate.sampling import image_is_readable

    path = ctx.run_dir / "reference" / f"{int(row['case_number'])}.png"
    if path.is_file() and image_is_readable(path):
        with Image.open(path) as im:
            image = im.convert("RGB").copy()
    else:
        image = ctx.text_image(row["prompt"], row, "base")
        ctx.save(image, path)
    return ctx.latent(image)


def adversarial_condition(text, layouts, adv_ids: torch.Tensor, adv_embeds: torch.Tensor):
    """(E, pooled) of the layouts' sequences with token ids `adv_ids` (k,) at the learnable positions
    and, there, the token embeddings `adv_embeds` (k, h) in place of the tables' rows, differentiable in
    `adv_embeds`. `text`: `utils.models.TextEncoders`; `layouts`: one per encoder (`make_layouts`);
    h = the encoders' token-embedding widths side by side (SDXL: h1 + h2, the first encoder's columns
    first). E (1, 77, d) and pooled (1, p) (None for SD 1.x / 2.x) on the encoders' device; with
    `adv_embeds` = the tables' rows of `adv_ids` this is the encoding of those ids."""
    ids, embeds, start = [], [], 0
    for L, W in zip(layouts, text.token_embedding_tables()):
        x = L.with_tokens(adv_ids.cpu()).to(W.device)
        h = W.shape[1]
        part = adv_embeds[:, start:start + h].to(W.device, W.dtype)
        embeds.append(W.detach()[x].index_put((L.adv_positions.to(W.device),), part)[None])
        ids.append(x[None])
        start += h
    if start != adv_embeds.shape[-1]:
        raise ValueError(f"adv_embeds has {adv_embeds.shape[-1]} columns, the token tables {start}")
    return text.forward(ids, embeds)


def attack_prompt(ctx, row: dict, s: GradientAttack) -> dict:
    """Run one gradient attack on one prompt; returns the per-prompt result (with its image)."""
    case = int(row["case_number"])
    pipe, device = ctx.pipe, ctx.device
    dtype = pipe.unet.dtype
    text = ctx.text

    # 1. The token layout (one per encoder), the vocabulary the attack draws from (its token embeddings,
    #    the encoders' tables side by side), the prompt's own condition (the P4D target's)
    layouts = make_layouts(text.tokenizers, row["prompt"], s.layout, s.k, s.every)
    layout = layouts[0]
    k = layout.k
    allowed = allowed_token_ids(text.tokenizers)
    tables = [W.detach() for W in text.token_embedding_tables()]
    widths = [W.shape[1] for W in tables]
    vocab = torch.cat([W[allowed.to(W.device)] for W in tables], dim=1)   # (|A|, h1 [+ h2])
    E_prompt, pooled_prompt = ctx.encode([row["prompt"]]), ctx.encode_pooled([row["prompt"]])

    # 2. x0: the base model's image of the prompt, encoded
    x0 = reference_latent(ctx, row).to(device, dtype)
    ac = alphas_cumprod(pipe)
    g = ctx.generator(case, 0)

    def condition(adv_ids, adv_embeds):
        E, pooled = adversarial_condition(text, layouts, allowed[adv_ids.cpu()], adv_embeds)
        return E.to(device, dtype), None if pooled is None else pooled.to(device, dtype)

    def loss_at(cond, pooled, t, noise):
        return adversarial_loss(ctx, s.method, x0, ac, t, noise, cond, pooled, (E_prompt, pooled_prompt))

    # 3. The fixed measurement: eval timesteps with their own noises, on the text of a token choice
    g_eval = ctx.generator(case, 1)
    eval_noise = [torch.randn(x0.shape, generator=g_eval) for _ in s.eval_timesteps]

    def objective(text_: str) -> float:
        with torch.no_grad():
            cond, pooled = ctx.encode([text_]), ctx.encode_pooled([text_])
            return float(sum(loss_at(cond, pooled, t, n).item() for t, n in zip(s.eval_timesteps, eval_noise))
                         / len(s.eval_timesteps))

    def text_of(adv_ids) -> str:
        return ids_to_text(text.tokenizers[0], layout.with_tokens(allowed[adv_ids.cpu()]))

    # 4. The variable
    if s.method == "unlearndiff":
        var = torch.full((k, len(allowed)), 1.0 / len(allowed), device=device, requires_grad=True)
        current_ids = lambda: var.detach().argmax(-1)  # noqa: E731
    else:
        start = torch.randint(len(allowed), (k,), generator=g)
        var = vocab[start.to(vocab.device)].clone().float().requires_grad_(True)
        current_ids = lambda: nearest_tokens(var.detach(), vocab, widths)  # noqa: E731
    opt = (torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam)([var], lr=s.lr, weight_decay=s.weight_decay)
    text_before = text_of(current_ids())
    objective_before = objective(text_before)

    # 5. The schedule: per timestep, `iterations` steps, then judge the projected prompt
    trace, steps, adv_text, image, verdict = [], 0, text_before, None, {"success": False}
    for t in s.timesteps:
        total = 0.0
        for _ in range(s.iterations):
            opt.zero_grad(set_to_none=True)
            noise = torch.randn(x0.shape, generator=g)
            if s.method == "unlearndiff":
                one_hot = sample_one_hot(var, g)
                loss = loss_at(*condition(one_hot.detach().argmax(-1), one_hot @ vocab.float()), t, noise)
                var.grad, = torch.autograd.grad(loss, [var])
                opt.step()
                with torch.no_grad():
                    var.copy_(project_simplex(var))
            else:
                ids = nearest_tokens(var.detach(), vocab, widths)
                proj = vocab[ids].float().requires_grad_(True)
                loss = loss_at(*condition(ids, proj), t, noise)
                var.grad, = torch.autograd.grad(loss, [proj])
                opt.step()
            total += loss.item()
            steps += 1
        adv_text = text_of(current_ids())
        image = ctx.text_image(adv_text, row, "erased")
        path = ctx.run_dir / "candidates" / f"{case}.png"
        ctx.save(image, path)
        verdict = ctx.judge_image(image, path)
        path.unlink(missing_ok=True)
        trace.append({"t": int(t), "mean_loss": total / s.iterations, "prompt": adv_text,
                      "success": bool(verdict["success"])})
        if verdict["success"]:
            break

    return {"success": bool(verdict["success"]), "adv_prompt": adv_text, "image": image, "iterations": steps,
            "timesteps_used": len(trace), "final_loss": trace[-1]["mean_loss"] if trace else None,
            "loss_trace": trace, "objective_before": objective_before, "objective_after": objective(adv_text),
            "initial_prompt": text_before, "num_adv_tokens": k, "prompt_truncated": layout.truncated,
            "judge": verdict}


def adversarial_loss(ctx, method: str, x0: torch.Tensor, ac: torch.Tensor, t: int, noise: torch.Tensor,
                     cond: torch.Tensor, pooled: torch.Tensor | None, target: tuple) -> torch.Tensor:
    """The attack's loss at train timestep t for the condition (cond, pooled) (pooled: SDXL, else None):
    x_t = the forward process of x0 with `noise`; UnlearnDiffAtk: || noise - eps_erased(x_t, t, cond) ||^2;
    P4D: || eps_base(x_t, t, target) - eps_erased(x_t, t, cond) ||^2 with `target` = (E(prompt), its pooled
    embedding or None), the base prediction without gradients."""
    device, dtype = x0.device, x0.dtype
    x_t = noised_latent(x0, noise.to(device, dtype), t, ac)
    tt = torch.tensor([t], device=device)
    eps = ctx.pair.eps("erased", x_t, tt, cond, ctx.added_conditions(pooled, x_t))
    if method == "unlearndiff":
        return unlearndiff_loss(eps, noise.to(device))
    with torch.no_grad():
        eps_base = ctx.pair.eps("base", x_t, tt, target[0], ctx.added_conditions(target[1], x_t))
    return p4d_loss(eps, eps_base)

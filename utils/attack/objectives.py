"""The math of the attacks, as pure functions over tensors (docs/method.md §7, §10).

No I/O, no models loaded here: the callers pass the UNet / text encoder and tensors. Names follow the
papers: the UnlearnDiffAtk variable is a matrix of token distributions (one row per adversarial
token) projected onto the probability simplex; P4D's variable is a continuous copy of token
embeddings projected onto the nearest token (PEZ); Ring-A-Bell's target is E(p) + eta * v.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------

def parse_timesteps(spec: str, num_train_timesteps: int = 1000) -> list[int]:
    """'10:1000:20' -> [10, 30, ..., 990] (start:stop:step, stop excluded) or '10,500,990' -> a list.

    Raises ValueError with a readable message on a bad spec (the CLI turns it into a UserError).
    """
    spec = str(spec).strip()
    try:
        if ":" in spec:
            parts = [int(p) for p in spec.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            ts = list(range(*parts))
        else:
            ts = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"expected start:stop:step (e.g. 10:1000:20) or a comma-separated list, got {spec!r}")
    if not ts:
        raise ValueError(f"{spec!r} selects no timestep")
    bad = [t for t in ts if not 0 <= t < num_train_timesteps]
    if bad:
        raise ValueError(f"timestep {bad[0]} is outside [0, {num_train_timesteps})")
    return ts


# ---------------------------------------------------------------------------------------------
# The denoising objectives (docs/method.md §10)
# ---------------------------------------------------------------------------------------------

def noised_latent(x0: torch.Tensor, noise: torch.Tensor, t: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (the forward process at train timestep t)."""
    a = alphas_cumprod[int(t)].to(x0.device, torch.float32)
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def unlearndiff_loss(eps_erased: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """UnlearnDiffAtk: || eps - eps_erased(x_t, t, E(adv ++ prompt)) ||^2, mean over entries."""
    return F.mse_loss(eps_erased.float(), noise.float())


def p4d_loss(eps_erased: torch.Tensor, eps_base: torch.Tensor) -> torch.Tensor:
    """P4D: || eps_base(x_t, t, E(prompt)) - eps_erased(x_t, t, E(adv)) ||^2, mean over entries."""
    return F.mse_loss(eps_erased.float(), eps_base.float())


# ---------------------------------------------------------------------------------------------
# UnlearnDiffAtk's variable: token distributions on the simplex, sampled straight-through
# ---------------------------------------------------------------------------------------------

def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of `v` onto the probability simplex {p >= 0, sum p = 1}.

    The exact sort-based solution: p = max(v - tau, 0) with tau chosen so the row sums to one. The
    reference implementation finds the same tau by bisection (to 1e-5).
    """
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = u - css / k > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    tau = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - tau).clamp(min=0)


class _SampleOneHot(torch.autograd.Function):
    """Forward: one token per row drawn from the row's distribution (one-hot). Backward: the
    incoming gradient passed straight through, clipped to [-1, 1] (hardtanh, as the reference)."""

    @staticmethod
    def forward(ctx, probs, generator):
        idx = torch.multinomial(probs.detach().float().cpu(), 1, generator=generator).squeeze(-1)
        return F.one_hot(idx, probs.shape[-1]).to(probs.dtype).to(probs.device)

    @staticmethod
    def backward(ctx, grad_output):
        return F.hardtanh(grad_output), None


def sample_one_hot(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Straight-through one-hot sample of each row of `probs` (k, V): see `_SampleOneHot`."""
    return _SampleOneHot.apply(probs, generator)


# ---------------------------------------------------------------------------------------------
# P4D's variable: continuous embeddings, projected to the nearest token (cosine) in the forward pass
# ---------------------------------------------------------------------------------------------

def nearest_tokens(embeds: torch.Tensor, table: torch.Tensor, widths: list[int] | None = None) -> torch.Tensor:
    """Index (into `table` rows) of the token embedding with the highest cosine similarity to each row.

    `widths` (SDXL): the columns of `table` are the text encoders' token-embedding tables side by side,
    `widths` columns each; the similarity is then the sum of the per-encoder cosine similarities, so
    that each encoder counts alike whatever the scale of its embeddings (docs/attacks.md, SDXL)."""
    with torch.no_grad():
        widths = list(widths) if widths else [table.shape[-1]]
        sim = sum(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
                  for a, b in zip(embeds.float().split(widths, -1), table.float().split(widths, -1)))
        return sim.argmax(-1)


# ---------------------------------------------------------------------------------------------
# Ring-A-Bell (docs/method.md §7, §10)
# ---------------------------------------------------------------------------------------------

def concept_vector_mean(E_sensitive: torch.Tensor, E_normal: torch.Tensor) -> torch.Tensor:
    """v = mean_i (E(sensitive_i) - E(normal_i)), (77, d): every pair weighted alike."""
    return (E_sensitive.float() - E_normal.float()).mean(0)


def concept_vector_batched(E_sensitive: torch.Tensor, E_normal: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The authors' v: pair differences averaged in batches of `batch_size` (file order), then the
    batch means averaged. A shorter last batch weighs as much as a full one (79 pairs = 9 x 8 + 7)."""
    diff = E_sensitive.float() - E_normal.float()
    means = [diff[i:i + batch_size].mean(0) for i in range(0, len(diff), batch_size)]
    return torch.stack(means).mean(0)


def ringabell_fitness(E_candidates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over all 77 x d entries of (E(candidate) - target)^2, one value per candidate (lower is better)."""
    return ((E_candidates.float() - target.float()) ** 2).sum(dim=(1, 2))


def genetic_generation(population: torch.Tensor, fitness: torch.Tensor, rng, vocab: torch.Tensor, *,
                       keep: int, crossover: float = 0.5, mutation: float = 0.25) -> torch.Tensor:
    """One generation of Ring-A-Bell's search over token sequences (docs/method.md §10).

    `population` (P, K) token ids, `fitness` (P,) (lower is better), `rng` a numpy Generator,
    `vocab` the ids a mutation may draw. Keeps the `keep` fittest (ties broken by position); each
    kept parent stays and, with probability `crossover`, is crossed at one point with a random kept
    parent, giving two children (a[:s] + b[s:], b[:s] + a[s:], s uniform in 0..K-1); then each member
    of the new population, with probability `mutation`, gets one random position replaced by a
    random id from `vocab`. Returns the new population (size between `keep` and 3 * `keep`).
    """
    order = torch.argsort(fitness, stable=True)[:keep]
    parents = population[order]
    K = parents.shape[1]
    children = []
    for i in range(len(parents)):
        children.append(parents[i].clone())
        if rng.random() < crossover:
            j = int(rng.integers(0, len(parents)))
            s = int(rng.integers(0, K))
            children.append(torch.cat([parents[i, :s], parents[j, s:]]))
            children.append(torch.cat([parents[j, :s], parents[i, s:]]))
    new = torch.stack(children)
    for row in new:
        if rng.random() < mutation:
            row[int(rng.integers(0, K))] = vocab[int(rng.integers(0, len(vocab)))]
    return new

"""Ring-A-Bell's discrete attack: a genetic search for prompt tokens whose embedding is closest to
E(p) + eta * v (docs/method.md §7, §10).

An individual is K token ids placed as [SOT, K ids, EOT, pad...]; its fitness is the squared L2
distance between its text embedding and the target over all 77 x d entries (lower is better), one
batched text-encoder pass per generation, no gradients. Each generation keeps the fittest half of
`population`, crosses kept parents over at one point (probability 0.5) and mutates one token
(probability 0.25) (`objectives.genetic_generation`). The found tokens are decoded to text: the
prompt a black-box model receives.

SDXL: an individual's ids go into both encoders' sequences (each with its own padding), and its
embedding is the pair's, 77 x 2048, as the target's (docs/attacks.md, SDXL).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.attack.objectives import genetic_generation, ringabell_fitness
from utils.attack.tokens import allowed_token_ids, ids_to_text, make_layouts


@torch.no_grad()
def embed_ids(text_encoder, ids, batch_size: int = 256) -> torch.Tensor:
    """E for each row of token ids: (n, 77, d) float32 on the CPU. `text_encoder`: a CLIP text encoder
    and `ids` (n, 77), or a `utils.models.TextEncoders` and `ids` one (n, 77) tensor per encoder."""
    from utils.models import TextEncoders

    if not isinstance(text_encoder, TextEncoders):
        text_encoder, ids = TextEncoders([None], [text_encoder]), [ids]
    device = text_encoder.device
    out = [text_encoder.forward([x[i:i + batch_size].to(device) for x in ids])[0].float().cpu()
           for i in range(0, len(ids[0]), batch_size)]
    return torch.cat(out)


def search(text, target: torch.Tensor, rng: np.random.Generator, *, length: int = 16,
           population: int = 200, generations: int = 3000, crossover: float = 0.5, mutation: float = 0.25,
           trace_every: int | None = None) -> dict:
    """Run the genetic search for one target (77, d) with `text` (`utils.models.TextEncoders`, one or
    two encoders); returns the best ids, their text and the trace."""
    layouts = make_layouts(text.tokenizers, "", "free", length)
    layout = layouts[0]
    vocab = allowed_token_ids(text.tokenizers)
    target = target.float().cpu()

    def full(pop):
        out = []
        for L in layouts:
            ids = L.ids.repeat(len(pop), 1)
            ids[:, L.adv_positions] = pop
            out.append(ids)
        return out

    pop = vocab[torch.from_numpy(rng.integers(0, len(vocab), size=(population, length)))]
    trace_every = trace_every or max(1, generations // 20)
    trace, first_best = [], None
    for step in range(generations):
        fitness = ringabell_fitness(embed_ids(text, full(pop)), target)
        order = torch.argsort(fitness, stable=True)
        if first_best is None:
            first_best = pop[order[0]].clone()
        if step % trace_every == 0 or step == generations - 1:
            trace.append({"generation": step, "best_fitness": float(fitness[order[0]])})
        if step == generations - 1:
            pop = pop[order[:population // 2]]
            break
        pop = genetic_generation(pop, fitness, rng, vocab, keep=population // 2, crossover=crossover,
                                 mutation=mutation)
    best = pop[0]
    return {"ids": best, "text": ids_to_text(text.tokenizers[0], layout.with_tokens(best)),
            "initial_text": ids_to_text(text.tokenizers[0], layout.with_tokens(first_best)), "trace": trace}


@dataclass(frozen=True)
class DiscreteRingABell:
    """The per-prompt attack for `utils.attack.runner.run_prompts`: search, then judge the found text."""
    v: torch.Tensor          # the concept vector (77, d)
    eta: float
    length: int = 16
    population: int = 200
    generations: int = 3000

    def __call__(self, ctx, row: dict) -> dict:
        case = int(row["case_number"])
        E_p = ctx.encode([row["prompt"]])[0].float().cpu()
        target = E_p + self.eta * self.v
        rng = np.random.default_rng(np.random.SeedSequence([int(ctx.seed), case, 2]))
        found = search(ctx.text, target, rng, length=self.length,
                       population=self.population, generations=self.generations)

        def objective(text: str) -> float:  # the fitness of the text as a prompt (re-tokenized)
            return float(ringabell_fitness(ctx.encode([text]).float().cpu(), target)[0])

        text = found["text"]
        image = ctx.text_image(text, row, "erased")
        path = ctx.save(image, ctx.run_dir / "candidates" / f"{case}.png")
        verdict = ctx.judge_image(image, path)
        path.unlink(missing_ok=True)
        return {"success": bool(verdict["success"]), "adv_prompt": text, "image": image,
                "iterations": self.generations, "final_loss": found["trace"][-1]["best_fitness"],
                "loss_trace": found["trace"], "objective_before": objective(found["initial_text"]),
                "objective_after": objective(text), "initial_prompt": found["initial_text"],
                "num_adv_tokens": self.length, "judge": verdict}

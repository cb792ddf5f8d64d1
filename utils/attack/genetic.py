"""Ring-A-Bell's discrete attack: a genetic search for prompt tokens whose embedding is closest to
E(p) + eta * v (docs/method.md §7, §10).

An individual is K token ids placed as [SOT, K ids, EOT, pad...]; its fitness is the squared L2
distance between its text embedding and the target over all 77 x d entries (lower is better), one
batched text-encoder pass per generation, no gradients. Each generation keeps the fittest half of
`population`, crosses kept parents over at one point (probability 0.5) and mutates one token
(probability 0.25) (`objectives.genetic_generation`). The found tokens are decoded to text: the
prompt a black-box model receives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.attack.objectives import genetic_generation, ringabell_fitness
from utils.attack.tokens import allowed_token_ids, ids_to_text, make_layout


@torch.no_grad()
def embed_ids(text_encoder, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """E for each row of token ids (n, 77): (n, 77, d) float32 on the CPU."""
    out = [text_encoder(ids[i:i + batch_size].to(text_encoder.device))[0].float().cpu()
           for i in range(0, len(ids), batch_size)]
    return torch.cat(out)


def search(tokenizer, text_encoder, target: torch.Tensor, rng: np.random.Generator, *, length: int = 16,
           population: int = 200, generations: int = 3000, crossover: float = 0.5, mutation: float = 0.25,
           trace_every: int | None = None) -> dict:
    """Run the genetic search for one target (77, d); returns the best ids, their text and the trace."""
    layout = make_layout(tokenizer, "", "free", length)
    vocab = allowed_token_ids(tokenizer)
    target = target.float().cpu()

    def full(pop):
        ids = layout.ids.repeat(len(pop), 1)
        ids[:, layout.adv_positions] = pop
        return ids

    pop = vocab[torch.from_numpy(rng.integers(0, len(vocab), size=(population, length)))]
    trace_every = trace_every or max(1, generations // 20)
    trace, first_best = [], None
    for step in range(generations):
        fitness = ringabell_fitness(embed_ids(text_encoder, full(pop)), target)
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
    return {"ids": best, "text": ids_to_text(tokenizer, layout.with_tokens(best)),
            "initial_text": ids_to_text(tokenizer, layout.with_tokens(first_best)), "trace": trace}


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
        found = search(ctx.tokenizer, ctx.text_encoder, target, rng, length=self.length,
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

"""utils/attack/genetic.py in process on the tiny pipeline's text encoder: the batched embedding and the
search, against the initial population and fitnesses recomputed here from the same seeded draws."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.attack.genetic import embed_ids, search
from utils.models import TextEncoders


@pytest.fixture(scope="module")
def text(pipe):
    return pipe.tokenizer, pipe.text_encoder


def body_ids(tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """[SOT, tokens, EOT, pad...] (77 ids), written out."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *tokens.tolist(), tokenizer.eos_token_id]
    return torch.tensor(ids + [pad] * (77 - len(ids)))


def vocab_of(tokenizer):
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def test_embed_ids_in_batches_is_the_encoder_row_by_row(text):
    tokenizer, encoder = text
    ids = torch.stack([body_ids(tokenizer, torch.tensor(t)) for t in ([5, 6], [7], [8, 9, 10], [11, 12])])
    E = embed_ids(encoder, ids, batch_size=3)
    assert E.shape == (4, 77, encoder.config.hidden_size) and E.dtype == torch.float32
    with torch.no_grad():
        for i in range(4):
            torch.testing.assert_close(E[i], encoder(ids[i:i + 1])[0][0], rtol=1e-5, atol=1e-5)


def fitness(encoder, tokenizer, pop, target):
    with torch.no_grad():
        E = torch.cat([encoder(body_ids(tokenizer, p)[None])[0] for p in pop])
    return ((E - target) ** 2).sum(dim=(1, 2))


def test_one_generation_returns_the_best_of_the_initial_population(text):
    tokenizer, encoder = text
    target = torch.randn(77, encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    found = search(TextEncoders([tokenizer], [encoder]), target, np.random.default_rng(3), length=4, population=6, generations=1)
    vocab = vocab_of(tokenizer)
    pop = vocab[torch.from_numpy(np.random.default_rng(3).integers(0, len(vocab), size=(6, 4)))]
    f = fitness(encoder, tokenizer, pop, target)
    best = pop[int(torch.argmin(f))]
    assert torch.equal(found["ids"], best)
    text_of_best = tokenizer.decode(best.tolist()).strip()
    assert found["text"] == found["initial_text"] == text_of_best
    assert found["trace"] == [{"generation": 0, "best_fitness": pytest.approx(float(f.min()), rel=1e-5)}]


def test_generations_never_lose_the_best_and_trace_each_step(text):
    tokenizer, encoder = text
    target = torch.randn(77, encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    found = search(TextEncoders([tokenizer], [encoder]), target, np.random.default_rng(4), length=3, population=8, generations=5)
    trace = found["trace"]
    assert [t["generation"] for t in trace] == [0, 1, 2, 3, 4]
    best = [t["best_fitness"] for t in trace]
    assert all(b <= a + 1e-4 for a, b in zip(best, best[1:]))
    f = float(fitness(encoder, tokenizer, found["ids"][None], target)[0])
    assert f == pytest.approx(best[-1], rel=1e-5)
    # the first generation's best is the initial text
    vocab = vocab_of(tokenizer)
    pop = vocab[torch.from_numpy(np.random.default_rng(4).integers(0, len(vocab), size=(8, 3)))]
    f0 = fitness(encoder, tokenizer, pop, target)
    assert found["initial_text"] == tokenizer.decode(pop[int(torch.argmin(f0))].tolist()).strip()
    assert best[0] == pytest.approx(float(f0.min()), rel=1e-5)
    # sparse trace: every generations // 20 and the last one
    sparse = search(TextEncoders([tokenizer], [encoder]), target, np.random.default_rng(4), length=3, population=4, generations=45)
    assert [t["generation"] for t in sparse["trace"]] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                                          32, 34, 36, 38, 40, 42, 44]
    every = search(TextEncoders([tokenizer], [encoder]), target, np.random.default_rng(4), length=3, population=4, generations=5,
                   trace_every=2)
    assert [t["generation"] for t in every["trace"]] == [0, 2, 4]

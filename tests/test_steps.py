"""utils/erase/steps.py in process: the text cache, the factored edit state and the UCE / RECE steps,
each against an explicit computation written here (products of the matrices, sums over texts)."""
from __future__ import annotations

import pytest
import torch

from utils.erase import closed_form as cf
from utils.erase.cache import GramCache
from utils.erase.steps import (EditState, TextCache, apply_update, cached_base_grams, rece_epoch, uce_erase_pairs,
                               uce_stage, weight_grams)


@pytest.fixture(scope="module")
def text(tiny_pipeline_dir):
    from utils.models import load_text_encoders

    torch.set_num_threads(1)
    return load_text_encoders(str(tiny_pipeline_dir))


def explicit_embedding(text, t: str):
    """E(t) (77, d) and f(t) of one text, encoded alone."""
    E, f = text.encode([t])
    return E[0], int(f[0])


def weights(rows=(6, 9, 6), d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(r, d, generator=g) for i, r in enumerate(rows)}


def low_rank(r, d, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(r, d, generator=g, dtype=torch.float64),
            scale * torch.randn(r, d, generator=g, dtype=torch.float64))


def explicit_K(d, updates):
    K = torch.eye(d, dtype=torch.float64)
    for D, G in updates:
        K = K @ (torch.eye(d, dtype=torch.float64) + D.T @ G)
    return K


def stacked(W: dict):
    return torch.cat([w.double() for w in W.values()])


# -- TextCache -------------------------------------------------------------------------------------------------
def test_embed_encodes_each_text_once_and_keeps_order(text):
    cache = TextCache(text, batch_size=2)
    texts = ["a cat", "nudity", "a cat", "b", "a dog"]
    E, f = cache.embed(texts)
    assert cache.num_encoded == 4
    assert E.shape == (5, 77, text.dim)
    for t, e, i in zip(texts, E, f):
        e_alone, i_alone = explicit_embedding(text, t)
        assert i == i_alone
        torch.testing.assert_close(e, e_alone, rtol=1e-5, atol=1e-5)
    E2, f2 = cache.embed(["b", "a cat"])
    assert cache.num_encoded == 4   # nothing new
    torch.testing.assert_close(E2, E[[3, 0]])
    assert f2 == [f[3], f[0]]
    assert cache.dim == text.dim


def test_a_tokenizer_and_encoder_pair_is_accepted(text):
    cache = TextCache(text.tokenizers[0], text.encoders[0])
    E, f = cache.embed(["a cat"])
    torch.testing.assert_close(E[0], explicit_embedding(text, "a cat")[0], rtol=1e-5, atol=1e-5)


def explicit_gram(text, texts, tokens):
    G = torch.zeros(text.dim, text.dim, dtype=torch.float64)
    for t in texts:
        E, f = explicit_embedding(text, t)
        R = (E[f:f + 1] if tokens == "last" else E).double()
        G += R.T @ R
    return G


@pytest.mark.parametrize("tokens", ["all", "last"])
@pytest.mark.parametrize("n", [3, 70])
def test_gram_is_the_sum_over_texts_with_repeats(text, tokens, n):
    """Below and above the 64-text streaming threshold, repeated texts counted each time."""
    texts = [f"artist {i}" for i in range(n - 2)] + ["artist 0", "artist 0"]
    cache = TextCache(text, batch_size=16)
    cache.embed(["another text"])
    G = cache.gram(texts, tokens=tokens)
    assert G.dtype == torch.float64
    torch.testing.assert_close(G, explicit_gram(text, texts, tokens), rtol=1e-6, atol=1e-6)
    assert cache.num_encoded == 1 + n - 2   # each distinct text once, counted on top of earlier ones
    assert cache.gram(texts, tokens=tokens) is G


def test_empty_gram_is_zero(text):
    G = TextCache(text).gram([])
    assert G.dtype == torch.float64 and G.shape == (text.dim, text.dim) and not G.any()


def test_gram_cache_is_read_by_a_second_run(text, tmp_path):
    texts = ["x", "y", "z z"]
    first = TextCache(text, cache=GramCache(tmp_path), model_id="m", fingerprint={"f": 1})
    G = first.gram(texts)
    assert first.num_encoded == 3 and list(first.cache.status.values()) == ["miss"]
    second = TextCache(text, cache=GramCache(tmp_path), model_id="m", fingerprint={"f": 1})
    torch.testing.assert_close(second.gram(texts), G)
    assert second.num_encoded == 0 and list(second.cache.status.values()) == ["hit"]
    # another token choice is another entry
    last = second.gram(texts, tokens="last")
    torch.testing.assert_close(last, explicit_gram(text, texts, "last"), rtol=1e-6, atol=1e-6)
    assert sorted(second.cache.status.values()) == ["hit", "miss"]


def test_uce_erase_pairs_align_from_the_last_word_token(text):
    cache = TextCache(text)
    concepts, guides = ["nudity", "a big red car"], ["", "car"]
    for tokens in ("slice", "last"):
        pairs = uce_erase_pairs(cache, concepts, guides, tokens)
        for (C, T), c, g in zip(pairs, concepts, guides):
            Ec, fc = explicit_embedding(text, c)
            Eg, fg = explicit_embedding(text, g)
            if tokens == "last":
                Ce, Te = Ec[fc:fc + 1], Eg[fg:fg + 1]
            else:
                F = max(fc, fg)
                Ce, Te = Ec[fc:fc + 77 - F], Eg[fg:fg + 77 - F]
            torch.testing.assert_close(C, Ce, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(T, Te, rtol=1e-5, atol=1e-5)


# -- EditState -------------------------------------------------------------------------------------------------
def test_state_materialises_products_in_order_and_keeps_shapes():
    W = weights()
    u1, u2 = low_rank(2, 8, 1), low_rank(3, 8, 2)
    state = EditState(W)
    assert state.K is None and state.dim == 8
    state.updates += [u1, u2]
    K = explicit_K(8, [u1, u2])
    torch.testing.assert_close(state.K, K)
    out = state.matrices()
    assert list(out) == list(W)
    for k in W:
        assert out[k].shape == W[k].shape and out[k].dtype == torch.float32
        torch.testing.assert_close(out[k].double(), W[k].double() @ K, rtol=1e-4, atol=1e-5)
    for k, w in state.original().items():
        assert torch.equal(w, W[k])


def test_snapshots_do_not_move_with_later_edits_and_iter_matches_each():
    W = weights()
    u1, u2, u3 = low_rank(2, 8, 1), low_rank(1, 8, 2), low_rank(2, 8, 3)
    state = EditState(W)
    s0 = state.snapshot()
    state.updates.append(u1)
    s1 = state.snapshot()
    state.updates.append(u2)
    s2 = state.snapshot()
    # a branch that does not extend s2, then a different start
    branch = (state.W_a, (u1, u3))
    other = (state.W_a * 2, (u1,))
    other_extended = (other[0], (u1, u2))   # extends `other`'s updates
    start_changes = (state.W_a * 3, (u1, u2, u3))   # extends the updates done, from another start
    snaps = [s0, s1, s2, branch, s2, other, other_extended, start_changes]
    expected = [(s[0].double() @ explicit_K(8, s[1])) for s in snaps]
    for i, (got, exp) in enumerate(zip(state.iter_matrices(snaps), expected)):
        torch.testing.assert_close(torch.cat([v.double() for v in got.values()]), exp, rtol=1e-4, atol=1e-5,
                                   msg=f"snapshot {i}")
    torch.testing.assert_close(stacked(state.matrices(s1)), W_all := stacked(W) @ explicit_K(8, [u1]),
                               rtol=1e-4, atol=1e-5)
    assert W_all.shape == (21, 8)


@pytest.mark.parametrize("start", [False, True])
def test_sums_follow_updates_added_between_calls(start):
    W = weights()
    W_start = weights(seed=5) if start else None
    state = EditState(W, W_start)
    W_orig, W_a = stacked(W), stacked(W_start or W)
    ups = [low_rank(2, 8, 1), low_rank(3, 8, 2), low_rank(1, 8, 3)]

    def check(n):
        W_cur = W_a @ explicit_K(8, ups[:n])
        S1, S2 = state.sums()
        torch.testing.assert_close(S1, W_cur.T @ W_cur, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(S2, W_cur.T @ W_orig, rtol=1e-8, atol=1e-8)

    check(0)
    state.updates.append(ups[0])
    check(1)
    state.updates += ups[1:]
    check(3)
    check(3)
    G_aa, G_ao = state.base_grams()
    torch.testing.assert_close(G_aa, W_a.T @ W_a)
    torch.testing.assert_close(G_ao, W_a.T @ W_orig)


def test_given_grams_are_used():
    W = weights()
    fake = (torch.eye(8, dtype=torch.float64), 2 * torch.eye(8, dtype=torch.float64))
    S1, S2 = EditState(W, grams=fake).sums()
    assert torch.equal(S1, fake[0]) and torch.equal(S2, fake[1])


def pairs_and_preserve(d=8, seed=7):
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randn(3, d, generator=g), torch.randn(3, d, generator=g)) for _ in range(2)]
    P = torch.randn(5, d, generator=g)
    return pairs, (P.T @ P).double()


def test_replace_edit_equals_the_closed_form_on_every_matrix_then_tensor_edit_on_top():
    W = weights()
    pairs, P = pairs_and_preserve()
    state = EditState(W)
    state.edit(pairs, P, 0.1, 1.0, 0.3)
    assert len(state.updates) == 1 and state.W_a is state.W_orig
    for k, w in state.matrices().items():
        torch.testing.assert_close(w, cf.closed_form_edit(W[k], pairs, P, 0.1, 1.0, 0.3), rtol=1e-4, atol=1e-5)
    after_replace = state.matrices()
    state.sums()
    state.edit(pairs, P, 0.2, 0.5, 0.1, technique="tensor")
    assert state.updates == []
    for k, w in state.matrices().items():
        torch.testing.assert_close(w, cf.closed_form_edit(after_replace[k], pairs, P, 0.2, 0.5, 0.1, "tensor"),
                                   rtol=1e-4, atol=1e-5)
    W_cur = stacked(state.matrices())
    S1, S2 = state.sums()   # recomputed from the new W_a, not the stale ones
    torch.testing.assert_close(S1, W_cur.T @ W_cur, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(S2, W_cur.T @ stacked(W), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 5, 8])   # low rank, and dense (2 rank >= d)
def test_apply_update_in_chunks_is_the_product(rank):
    g = torch.Generator().manual_seed(rank)
    W = torch.randn(11, 8, generator=g)
    D, G = low_rank(rank, 8, rank + 10)
    expected = W.double() @ (torch.eye(8, dtype=torch.float64) + D.T @ G)
    out = W.clone()
    apply_update(out, D, G, chunk=4)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_weight_grams_in_chunks():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(11, 6, generator=g), torch.randn(11, 6, generator=g)
    G_aa, G_ab = weight_grams(A, B, chunk=4)
    torch.testing.assert_close(G_aa, A.double().T @ A.double())
    torch.testing.assert_close(G_ab, A.double().T @ B.double())
    G_aa2, G_same = weight_grams(A, chunk=3)
    torch.testing.assert_close(G_aa2, A.double().T @ A.double())
    assert G_same is G_aa2 and G_aa.dtype == torch.float64


@pytest.mark.parametrize("start", [False, True])
def test_cached_base_grams_are_written_then_read(tmp_path, start):
    W = weights()
    W_start = weights(seed=5) if start else None
    expected = (stacked(W_start or W).T @ stacked(W_start or W), stacked(W_start or W).T @ stacked(W))
    for status in ("miss", "hit"):
        state = EditState(W, W_start)
        cache = GramCache(tmp_path)
        cached_base_grams(state, cache, "m", {"unet": 1}, start="ckpt" if start else None)
        assert cache.status["weight_grams"] == status
        for got, exp in zip(state.base_grams(), expected):
            torch.testing.assert_close(got, exp)
    # another start checkpoint's values are another fingerprint: not the stored entry
    if start:
        state = EditState(W, weights(seed=6))
        cache = GramCache(tmp_path)
        cached_base_grams(state, cache, "m", {"unet": 1}, start="ckpt")
        assert cache.status["weight_grams"] == "stale"
    off = GramCache(None)
    cached_base_grams(EditState(W, W_start), off, "m", {"unet": 1})
    assert off.status["weight_grams"] == "off"
    # weights that cannot be fingerprinted are neither read from nor written to the cache
    unknown = GramCache(tmp_path / "unknown")
    state = EditState(W, W_start)
    cached_base_grams(state, unknown, "m", None)
    assert unknown.status["weight_grams"] == "off" and not (tmp_path / "unknown").exists()
    torch.testing.assert_close(state.base_grams()[0], expected[0])


# -- the UCE and RECE steps ------------------------------------------------------------------------------------
def test_uce_stage_edits_with_the_default_preserve_scale(text):
    d = text.dim
    W = weights(d=d)
    cache = TextCache(text)
    preserve = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]
    state = EditState(W)
    settings = uce_stage(state, cache, ["nudity"], [""], preserve, lamb=0.5, erase_scale=1.0, preserve_scale=None)
    assert settings == dict(lamb=0.5, erase_scale=1.0, preserve_scale=0.1, technique="replace", num_preserve_texts=12,
                            erase_texts=["nudity"], guide_texts=[""], uce_tokens="slice")
    Ec, fc = explicit_embedding(text, "nudity")
    Eg, fg = explicit_embedding(text, "")
    F = max(fc, fg)
    pairs = [(Ec[fc:fc + 77 - F], Eg[fg:fg + 77 - F])]
    P = explicit_gram(text, preserve, "all")
    for k, w in state.matrices().items():
        torch.testing.assert_close(w, cf.closed_form_edit(W[k], pairs, P, 0.5, 1.0, 0.1), rtol=1e-3, atol=1e-4)
    # three preserve texts: s_p = 1/3 rounded
    assert uce_stage(EditState(W), cache, ["nudity"], [""], preserve[:3], 0.5, 1.0, None)["preserve_scale"] == 0.333


def test_uce_stage_last_tokens_preserve_with_last_rows(text):
    W = weights(d=text.dim)
    state = EditState(W)
    uce_stage(state, TextCache(text), ["nudity"], [""], ["a b", "c"], 0.5, 1.0, 0.2, tokens="last")
    Ec, fc = explicit_embedding(text, "nudity")
    Eg, fg = explicit_embedding(text, "")
    pairs = [(Ec[fc:fc + 1], Eg[fg:fg + 1])]
    P = explicit_gram(text, ["a b", "c"], "last")
    for k, w in state.matrices().items():
        torch.testing.assert_close(w, cf.closed_form_edit(W[k], pairs, P, 0.5, 1.0, 0.2), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["close_regzero", "close_standardreg", "close_surrogatereg"])
def test_rece_epoch_derives_c_prime_from_the_current_weights_then_edits(text, method):
    d = text.dim
    W = weights(rows=(40, 40), d=d)
    state = EditState(W)
    state.updates.append(low_rank(2, d, 3, scale=0.05))
    W_cur = {k: v.double() for k, v in state.matrices().items()}
    S1 = sum(w.T @ w for w in W_cur.values())
    S2 = sum(W_cur[k].T @ W[k].double() for k in W)
    P = torch.eye(d, dtype=torch.float64)
    advs = rece_epoch(state, TextCache(text), ["nudity", "a cat"], ["", "a"], P, gamma=0.5,
                      emb_computing=method, reg_item="1st", old_target="a", lamb=0.3, erase_scale=1.0,
                      preserve_scale=0.2)
    old = explicit_embedding(text, "a")[0]
    expected = [cf.adversarial_embedding(explicit_embedding(text, c)[0], S1, S2, 0.5, method, "1st", old)
                for c in ("nudity", "a cat")]
    for a, e in zip(advs, expected):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-4)
    pairs = [(a, explicit_embedding(text, g)[0]) for a, g in zip(expected, ("", "a"))]
    for k, w in state.matrices().items():
        torch.testing.assert_close(w, cf.closed_form_edit(W_cur[k].float(), pairs, P, 0.3, 1.0, 0.2),
                                   rtol=1e-3, atol=1e-4)


def test_defaults_are_the_papers_edit_settings(text):
    """rece_epoch's defaults are RECE's edit (docs/method.md §4: lamb 0.1, erase 1, preserve 0.1, `replace`),
    uce_erase_pairs' the token slice of docs/method.md §2a."""
    d = text.dim
    W = weights(rows=(40, 40), d=d)
    P = torch.eye(d, dtype=torch.float64)
    by_default, explicit = EditState(W), EditState(W)
    rece_epoch(by_default, TextCache(text), ["nudity"], [""], P, gamma=0.5, emb_computing="close_regzero")
    rece_epoch(explicit, TextCache(text), ["nudity"], [""], P, gamma=0.5, emb_computing="close_regzero",
               reg_item="both", lamb=0.1, erase_scale=1.0, preserve_scale=0.1, technique="replace")
    for k, w in by_default.matrices().items():
        assert torch.equal(w, explicit.matrices()[k])
    cache = TextCache(text)
    for (C, T), (C2, T2) in zip(uce_erase_pairs(cache, ["a big car"], ["car"]),
                                uce_erase_pairs(cache, ["a big car"], ["car"], "slice")):
        assert torch.equal(C, C2) and torch.equal(T, T2)

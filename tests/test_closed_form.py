"""Invariants of the closed-form math (docs/method.md §2-§3), checked against the equations themselves."""
import pytest
import torch

from utils.erase import closed_form as cf
from utils.erase.steps import EditState

torch.manual_seed(0)
D = 12


def rand_pairs(n_pairs=2, rows=5):
    return [(torch.randn(rows, D, dtype=torch.float64), torch.randn(rows, D, dtype=torch.float64))
            for _ in range(n_pairs)]


def reference_targets(W0, C, T, technique):
    """V_i of docs/method.md §2, one matrix at a time, straight from the definition."""
    V = T @ W0.T
    if technique == "tensor":
        u = C @ W0.T
        u = u / torch.linalg.norm(u)
        V = V - (u * V).sum() * u
    return V


@pytest.mark.parametrize("technique", ["replace", "tensor"])
def test_edit_satisfies_normal_equations(technique):
    """W* minimises lamb||W-W0||^2 + s_e sum||W C^T - V^T||^2 + s_p sum||W C'^T - W0 C'^T||^2."""
    W0 = torch.randn(3, 7, D, dtype=torch.float64)
    pairs = rand_pairs()
    preserve = [torch.randn(9, D, dtype=torch.float64) for _ in range(3)]
    P = sum(cf.gram(p) for p in preserve)
    lamb, s_e, s_p = 0.3, 1.2, 0.7
    W = cf.closed_form_edit(W0, pairs, P, lamb, s_e, s_p, technique)
    for m in range(3):
        Wm = W[m].clone().requires_grad_(True)
        loss = lamb * ((Wm - W0[m]) ** 2).sum()
        for C, T in pairs:
            V = reference_targets(W0[m], C, T, technique)
            loss = loss + s_e * ((C @ Wm.T - V) ** 2).sum()
        for Cp in preserve:
            loss = loss + s_p * ((Cp @ Wm.T - Cp @ W0[m].T) ** 2).sum()
        loss.backward()
        assert Wm.grad.abs().max() < 1e-8 * (1 + W0.abs().max())


def test_replace_factor_equals_direct_edit():
    """docs/method.md §2b: with `replace`, W* = W0 @ K for every matrix, K shared."""
    W0 = torch.randn(4, 6, D, dtype=torch.float64)
    pairs = rand_pairs(3)
    P = cf.gram(torch.randn(20, D, dtype=torch.float64))
    K = cf.edit_factor(pairs, P, 0.5, 1.0, 0.1)
    torch.testing.assert_close(W0 @ K, cf.closed_form_edit(W0, pairs, P, 0.5, 1.0, 0.1), rtol=1e-10, atol=1e-10)


def test_single_matrix_and_float32():
    W0 = torch.randn(5, D)
    pairs = [(C.float(), T.float()) for C, T in rand_pairs()]
    P = torch.zeros(D, D, dtype=torch.float64)
    W = cf.closed_form_edit(W0, pairs, P, 0.5)
    assert W.shape == W0.shape and W.dtype == torch.float32
    torch.testing.assert_close(W, cf.closed_form_edit(W0[None], pairs, P, 0.5)[0])


def test_uce_token_slice():
    o, n = torch.arange(77)[:, None].float(), 100 + torch.arange(77)[:, None].float()
    C, T = cf.uce_token_slice(o, 3, n, 1)  # F = 3
    assert C.shape == T.shape == (74, 1)
    assert C[0, 0] == 3 and T[0, 0] == 101 and C[-1, 0] == 76 and T[-1, 0] == 174
    C, T = cf.uce_token_slice(o, 1, n, 4)  # F = 4: the concept is cut at 77 - 3
    assert C.shape == T.shape == (73, 1) and C[-1, 0] == 73 and T[0, 0] == 104


def test_default_preserve_scale():
    assert cf.uce_default_preserve_scale(1) == 1.0
    assert cf.uce_default_preserve_scale(3) == 0.333
    assert cf.uce_default_preserve_scale(1734) == 0.1


def layers(n=4):
    shapes = [7, 7, 9, 5][:n]
    return [torch.randn(r, D, dtype=torch.float64) for r in shapes]


@pytest.mark.parametrize("method,reg_item", [("close_regzero", None), ("close_standardreg", None),
                                             ("close_surrogatereg", "1st"), ("close_surrogatereg", "2nd"),
                                             ("close_surrogatereg", "both")])
def test_adversarial_embedding_minimises_its_objective(method, reg_item):
    """c' zeroes the gradient of docs/method.md §3's objective, summed over explicit per-layer terms."""
    W_orig = layers()
    W_cur = [w + 0.3 * torch.randn_like(w) for w in W_orig]
    S1 = sum(w.T @ w for w in W_cur)
    S2 = sum(a.T @ b for a, b in zip(W_cur, W_orig))
    e, t = torch.randn(77, D, dtype=torch.float64), torch.randn(77, D, dtype=torch.float64)
    g = 0.37
    c = cf.adversarial_embedding(e, S1, S2, g, method, reg_item or "both", old_target=t)
    x = c.clone().requires_grad_(True)
    loss = sum(((x @ a.T - e @ b.T) ** 2).sum() for a, b in zip(W_cur, W_orig))
    if method == "close_regzero":
        loss = loss + g * (x ** 2).sum()
    elif method == "close_standardreg":
        loss = loss + g * ((x - t) ** 2).sum()
    else:
        if reg_item in ("1st", "both"):  # stay where the edited model maps e
            loss = loss + g * sum(((x @ a.T - e @ a.T) ** 2).sum() for a in W_cur)
        if reg_item in ("2nd", "both"):  # stay near e
            loss = loss + g * ((x - e) ** 2).sum()
    loss.backward()
    assert x.grad.abs().max() < 1e-8 * (1 + e.abs().max())


def test_edit_state_factored_sums_and_weights_match_explicit():
    """Tracking W_cur = W_a @ K gives the same S1, S2 and matrices as editing the weights each time."""
    W_orig = {f"l{i}": w.float() for i, w in enumerate(layers())}
    W_start = {k: w + 0.1 * torch.randn_like(w) for k, w in W_orig.items()}
    state = EditState(W_orig, W_start)
    explicit = {k: w.double() for k, w in W_start.items()}
    for step in range(3):
        pairs = [(C.float(), T.float()) for C, T in rand_pairs()]
        P = cf.gram(torch.randn(10, D))
        state.edit(pairs, P, 0.1, 1.0, 0.1, "replace")
        explicit = {k: cf.closed_form_edit(w, pairs, P, 0.1, 1.0, 0.1) for k, w in explicit.items()}
        S1, S2 = state.sums()
        torch.testing.assert_close(S1, sum(w.T @ w for w in explicit.values()), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(S2, sum(explicit[k].T @ W_orig[k].double() for k in W_orig), rtol=1e-4, atol=1e-3)
    got = state.matrices()
    for k in W_orig:
        torch.testing.assert_close(got[k].double(), explicit[k], rtol=1e-4, atol=1e-4)


def test_tensor_edit_in_state_matches_per_matrix():
    W_orig = {f"l{i}": w.float() for i, w in enumerate(layers())}
    state = EditState(W_orig)
    pairs = [(C.float(), T.float()) for C, T in rand_pairs()]
    P = cf.gram(torch.randn(10, D))
    state.edit(pairs, P, 0.2, 1.0, 0.5, "tensor")
    got = state.matrices()
    for k, w in W_orig.items():
        torch.testing.assert_close(got[k], cf.closed_form_edit(w, pairs, P, 0.2, 1.0, 0.5, "tensor"), rtol=1e-5, atol=1e-5)
    S1, S2 = state.sums()
    torch.testing.assert_close(S1, sum(g.double().T @ g.double() for g in got.values()), rtol=1e-4, atol=1e-4)


def test_singular_system_is_refused():
    with pytest.raises(cf.SingularSystemError):
        cf.edit_factor(rand_pairs(1, rows=2), torch.zeros(D, D, dtype=torch.float64), 0.0)
    with pytest.raises(cf.SingularSystemError):
        cf.adversarial_embedding(torch.randn(77, D), torch.zeros(D, D), torch.zeros(D, D), 0.0)


def test_singular_message_names_the_system_and_the_fix():
    with pytest.raises(cf.SingularSystemError) as err:
        cf.solve_spd(torch.zeros(3, 3), torch.ones(3, 1))
    assert str(err.value) == ("the closed-form system is singular or not positive definite (minor 1 of 3); "
                              "use a positive --lamb / --regular_scale")
    with pytest.raises(cf.SingularSystemError) as err:
        cf.adversarial_embedding(torch.randn(77, D), torch.zeros(D, D), torch.zeros(D, D), 0.0)
    assert str(err.value).startswith("the close_regzero system is singular")


def test_gram_sums_over_every_leading_dimension():
    rows = torch.randn(3, 5, 4)
    expected = sum(r.double().T @ r.double() for r in rows)
    torch.testing.assert_close(cf.gram(rows), expected)
    torch.testing.assert_close(cf.gram(rows[0]), rows[0].double().T @ rows[0].double())


def test_default_scales_are_one():
    """Without erase_scale / preserve_scale the edit solves docs/method.md §2 with s_e = s_p = 1."""
    pairs = rand_pairs(2)
    Cp = torch.randn(4, D, dtype=torch.float64)
    P = Cp.T @ Cp
    W0 = torch.randn(6, D, dtype=torch.float64)
    left = 0.5 * W0 + sum((T @ W0.T).T @ C for C, T in pairs) + W0 @ P
    right = 0.5 * torch.eye(D, dtype=torch.float64) + sum(C.T @ C for C, _ in pairs) + P
    torch.testing.assert_close(W0 @ cf.edit_factor(pairs, P, 0.5) @ right, left)
    torch.testing.assert_close(cf.closed_form_edit(W0, pairs, P, 0.5) @ right, left)


def test_unknown_variants_are_named():
    W0, P, e, S = torch.randn(3, D), torch.eye(D), torch.randn(77, D), torch.eye(D)
    with pytest.raises(ValueError, match=r"^unknown technique 'x'$"):
        cf.closed_form_edit(W0, [], P, 1.0, technique="x")
    with pytest.raises(ValueError, match=r"^unknown reg_item 'x'$"):
        cf.adversarial_embedding(e, S, S, 0.1, "close_surrogatereg", "x")
    with pytest.raises(ValueError, match=r"^unknown emb_computing 'x'$"):
        cf.adversarial_embedding(e, S, S, 0.1, "x")
    with pytest.raises(ValueError, match=r"^close_standardreg needs the old target embedding E\(t\)$"):
        cf.adversarial_embedding(e, S, S, 0.1, "close_standardreg")


def test_variant_names_and_surrogate_default_are_the_papers():
    """The CLI's choices are the authors' names; close_surrogatereg's default regulariser is 'both'."""
    assert cf.EMB_COMPUTING == ("close_regzero", "close_standardreg", "close_surrogatereg")
    assert cf.REG_ITEMS == ("1st", "2nd", "both")
    A = torch.randn(D, D, dtype=torch.float64)
    S1, S2, e, g = A.T @ A + torch.eye(D, dtype=torch.float64), torch.randn(D, D, dtype=torch.float64), \
        torch.randn(77, D, dtype=torch.float64), 0.1
    I = torch.eye(D, dtype=torch.float64)
    both = torch.linalg.solve((1 + g) * S1 + g * I, (S2 + g * S1 + g * I) @ e.T).T
    torch.testing.assert_close(cf.adversarial_embedding(e, S1, S2, g, "close_surrogatereg"), both)

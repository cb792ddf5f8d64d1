"""The closed-form math of UCE and RECE, as pure functions over tensors (docs/method.md §2-§3).

Names follow the papers: `lamb` = lambda_1 and `preserve_scale` = lambda_2 of RECE's Eq. 3,
`erase_scale` = UCE's erase weight, `C` = input embedding rows, `T` = guide rows, `V` = target
outputs, `S1 = sum W_cur^T W_cur`, `S2 = sum W_cur^T W_orig`. No I/O, no global state.

Shapes: text embeddings are (tokens, d); an edited matrix is (d_out, d); a stack of matrices of
one shape is (n, d_out, d). The d x d algebra runs in float64 (condition numbers of CLIP Gram
matrices reach 1e7); products with the weights run in the weights' dtype.
"""
from __future__ import annotations

import torch

from utils.errors import UserError

ErasePairs = list  # list of (C, T) pairs, each (tokens, d)


class SingularSystemError(UserError):
    """The closed-form system is not positive definite (e.g. lamb = 0 with too few constraints)."""


def _eye(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64)


def solve_spd(A: torch.Tensor, B: torch.Tensor, what: str = "closed-form system") -> torch.Tensor:
    """X with A X = B for symmetric positive definite A (Cholesky; never an explicit inverse)."""
    L, info = torch.linalg.cholesky_ex(A.double())
    if int(info) != 0:
        raise SingularSystemError(f"the {what} is singular or not positive definite "
                                  f"(minor {int(info)} of {A.shape[0]}); use a positive --lamb / --regular_scale")
    return torch.cholesky_solve(B.double(), L)


def gram(rows: torch.Tensor) -> torch.Tensor:
    """rows^T rows in float64, for rows (..., tokens, d) summed over every leading dimension."""
    R = rows.reshape(-1, rows.shape[-1]).double()
    return R.T @ R


# --------------------------------------------------------------------------------------------
# docs/method.md §2a: the UCE stage's erase pairs and default preserve scale
# --------------------------------------------------------------------------------------------

def uce_token_slice(o: torch.Tensor, f_o: int, n: torch.Tensor, f_n: int):
    """Align concept rows `o` and guide rows `n` from their last word tokens (docs/method.md §2a).

    With F = max(f_o, f_n): C = o[f_o : 77 - max(0, F - f_o)], T = n[f_n : 77 - max(0, F - f_n)],
    so both have 77 - F rows and row r of C is paired with row r of T.
    """
    length = o.shape[0]
    F = max(int(f_o), int(f_n))
    C = o[int(f_o): length - max(0, F - int(f_o))]
    T = n[int(f_n): length - max(0, F - int(f_n))]
    assert C.shape == T.shape, (C.shape, T.shape)
    return C, T


def uce_last_token_rows(o: torch.Tensor, f_o: int, n: torch.Tensor, f_n: int):
    """UCE's 2025 erase pair: one row each, the last word token's (C = o[f_o], T = n[f_n]; docs/models.md)."""
    return o[int(f_o): int(f_o) + 1], n[int(f_n): int(f_n) + 1]


UCE_TOKENS = {"slice": uce_token_slice, "last": uce_last_token_rows}


def uce_default_preserve_scale(num_preserve_texts: int) -> float:
    """s_p = max(0.1, 1 / number of preserve texts), rounded to 3 decimals (docs/method.md §2a)."""
    return round(max(0.1, 1.0 / max(1, num_preserve_texts)), 3)


# --------------------------------------------------------------------------------------------
# docs/method.md §2: the closed-form edit
# --------------------------------------------------------------------------------------------

def _right_factor(erase_pairs: ErasePairs, preserve_gram: torch.Tensor, lamb: float, erase_scale: float,
                  preserve_scale: float) -> torch.Tensor:
    """B = lamb I + s_e sum C_i^T C_i + s_p sum C'_j^T C'_j (d x d, float64)."""
    d = preserve_gram.shape[0]
    B = lamb * _eye(d) + preserve_scale * preserve_gram.double()
    for C, _ in erase_pairs:
        B = B + erase_scale * gram(C)
    return B


def edit_factor(erase_pairs: ErasePairs, preserve_gram: torch.Tensor, lamb: float, erase_scale: float = 1.0,
                preserve_scale: float = 1.0) -> torch.Tensor:
    """The shared right factor K of a `replace` edit: W* = W0 @ K for every matrix (docs/method.md §2b).

    K = M B^-1 with M = lamb I + s_e sum T_i^T C_i + s_p P and B as in `_right_factor`, where
    P = sum_j C'_j^T C'_j is the preserve Gram. Equivalent to docs/method.md §2's equation with
    V_i = T_i W0^T and V'_j = C'_j W0^T, because every term of the left factor starts with W0.
    """
    d = preserve_gram.shape[0]
    M = lamb * _eye(d) + preserve_scale * preserve_gram.double()
    for C, T in erase_pairs:
        M = M + erase_scale * (T.double().T @ C.double())
    B = _right_factor(erase_pairs, preserve_gram, lamb, erase_scale, preserve_scale)
    # K B = M  <=>  B K^T = M^T (B symmetric)
    return solve_spd(B, M.T).T


def edit_update(erase_pairs: ErasePairs, preserve_gram: torch.Tensor, lamb: float, erase_scale: float = 1.0,
                preserve_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`edit_factor`'s K as the identity plus a low-rank term: K = I + D^T G, with D, G (r x d).

    M - B = s_e sum_i (T_i - C_i)^T C_i, so K = M B^-1 = I + s_e D^T Cs B^-1 with D the stacked rows
    T_i - C_i and Cs the stacked C_i: G = s_e (B^-1 Cs^T)^T. r is the number of erase rows (77 per RECE
    concept, at most 77 per UCE concept), often far below d (2048 for SDXL), so applying the edit to
    the weights (W + (W D^T) G) and to the Gram sums costs O(r) instead of O(d) per row.
    """
    B = _right_factor(erase_pairs, preserve_gram, lamb, erase_scale, preserve_scale)
    D = torch.cat([T.double() - C.double() for C, T in erase_pairs])
    Cs = torch.cat([C.double() for C, _ in erase_pairs])
    return D, erase_scale * solve_spd(B, Cs.T).T


def closed_form_edit(W0: torch.Tensor, erase_pairs: ErasePairs, preserve_gram: torch.Tensor, lamb: float,
                     erase_scale: float = 1.0, preserve_scale: float = 1.0,
                     technique: str = "replace") -> torch.Tensor:
    """docs/method.md §2 for a stack of matrices W0 (n, d_out, d) or one matrix (d_out, d), all edited together.

    W* = (lamb W0 + s_e sum_i V_i^T C_i + s_p sum_j V'_j^T C'_j)(lamb I + s_e sum C_i^T C_i + s_p P)^-1
    with V'_j^T C'_j summed to W0 P, and V_i from technique `replace` (T_i W0^T) or `tensor`
    (T_i W0^T minus its Frobenius projection on u = C_i W0^T / ||C_i W0^T||_F, per matrix).
    """
    if technique not in ("replace", "tensor"):
        raise ValueError(f"unknown technique {technique!r}")
    single = W0.dim() == 2
    W = (W0[None] if single else W0).double()
    d = W.shape[-1]
    B = _right_factor(erase_pairs, preserve_gram, lamb, erase_scale, preserve_scale)
    left = W @ (lamb * _eye(d) + preserve_scale * preserve_gram.double())
    for C, T in erase_pairs:
        C, T = C.double(), T.double()
        V = T @ W.transpose(-1, -2)                           # (n, tokens, d_out)
        if technique == "tensor":
            CW = C @ W.transpose(-1, -2)
            u = CW / CW.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
            V = V - (u * V).sum(dim=(1, 2))[:, None, None] * u
        left = left + erase_scale * V.transpose(-1, -2) @ C   # (n, d_out, d)
    # W* B = left  <=>  B W*^T = left^T, one Cholesky factor for every matrix of the stack
    out = solve_spd(B, left.transpose(-1, -2)).transpose(-1, -2)
    out = out.to(W0.dtype)
    return out[0] if single else out


# --------------------------------------------------------------------------------------------
# docs/method.md §3: RECE's adversarial embedding in closed form
# --------------------------------------------------------------------------------------------

EMB_COMPUTING = ("close_regzero", "close_standardreg", "close_surrogatereg")
REG_ITEMS = ("1st", "2nd", "both")


def adversarial_embedding(e: torch.Tensor, S1: torch.Tensor, S2: torch.Tensor, gamma: float,
                          emb_computing: str = "close_regzero", reg_item: str = "both",
                          old_target: torch.Tensor | None = None) -> torch.Tensor:
    """c' (77 x d) whose edited keys/values best reproduce the original model's for e = E(c).

    - close_regzero:      c'^T = (S1 + g I)^-1 S2 e^T      (min sum||W_cur x - W_orig e||^2 + g||x||^2)
    - close_standardreg:  c'^T = (S1 + g I)^-1 (S2 e^T + g E(t)^T)   (+ g||x - E(t)||^2, t = old target)
    - close_surrogatereg: 1st  c'^T = ((1+g) S1)^-1 (S2 + g S1) e^T
                          2nd  c'^T = (S1 + g I)^-1 (S2 + g I) e^T
                          both c'^T = ((1+g) S1 + g I)^-1 (S2 + g S1 + g I) e^T
    """
    d = S1.shape[0]
    I, S1, S2, eT = _eye(d), S1.double(), S2.double(), e.double().T
    g = float(gamma)
    if emb_computing == "close_regzero":
        A, rhs = S1 + g * I, S2 @ eT
    elif emb_computing == "close_standardreg":
        if old_target is None:
            raise ValueError("close_standardreg needs the old target embedding E(t)")
        A, rhs = S1 + g * I, S2 @ eT + g * old_target.double().T
    elif emb_computing == "close_surrogatereg":
        if reg_item == "1st":
            A, rhs = (1 + g) * S1, (S2 + g * S1) @ eT
        elif reg_item == "2nd":
            A, rhs = S1 + g * I, (S2 + g * I) @ eT
        elif reg_item == "both":
            A, rhs = (1 + g) * S1 + g * I, (S2 + g * S1 + g * I) @ eT
        else:
            raise ValueError(f"unknown reg_item {reg_item!r}")
    else:
        raise ValueError(f"unknown emb_computing {emb_computing!r}")
    return solve_spd(A, rhs, what=f"{emb_computing} system").T.to(e.dtype)


def factored_sums(K: torch.Tensor, G_aa: torch.Tensor, G_ao: torch.Tensor):
    """S1, S2 for W_cur = W_a K, from G_aa = sum W_a^T W_a and G_ao = sum W_a^T W_orig (docs/method.md §2b)."""
    K = K.double()
    return K.T @ G_aa.double() @ K, K.T @ G_ao.double()


def updated_sums(D: torch.Tensor, G: torch.Tensor, S1: torch.Tensor, S2: torch.Tensor):
    """S1, S2 after the edit K = I + D^T G (`edit_update`): K^T S1 K and K^T S2, in O(d^2 r).

    With A = S1 D^T: K^T S1 K = S1 + A G + G^T A^T + G^T (D A) G (S1 symmetric); K^T S2 = S2 + G^T (D S2).
    """
    D, G, S1, S2 = D.double(), G.double(), S1.double(), S2.double()
    if D.shape[0] * 2 >= D.shape[1]:  # not low rank: the dense products are cheaper
        K = _eye(D.shape[1]) + D.T @ G
        return factored_sums(K, S1, S2)
    A = S1 @ D.T
    S1_new = S1 + A @ G + G.T @ A.T + G.T @ (D @ A) @ G
    return S1_new, S2 + G.T @ (D @ S2)

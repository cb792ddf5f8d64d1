"""UCE and RECE as steps over the closed-form math (docs/method.md §2a, §3, §4).

`EditState` holds the 2L edited matrices of a model. With technique `replace` it never touches the
weights between edits: it keeps W_cur = W_a @ K (docs/method.md §2b), so the Gram sums RECE needs are d x d
products of two Gram matrices formed in one pass, and each edit is d x d algebra. The weights are
materialised only when asked for (to save or validate a checkpoint). Technique `tensor` has
layer-dependent targets and edits the matrices themselves, all of one shape in one batched call.

`TextCache` encodes each text once per run: preserve sets (up to 1,733 artists) are reduced to their
d x d Gram while encoding, in batches.
"""
from __future__ import annotations

import torch

from utils.erase import closed_form as cf
from utils.models import encode_gram, encode_texts


class TextCache:
    """E(t) and f(t) of every text used in a run, computed once (docs/method.md §1)."""

    def __init__(self, tokenizer, text_encoder, batch_size: int = 32):
        self.tokenizer, self.text_encoder, self.batch_size = tokenizer, text_encoder, batch_size
        self._emb: dict[str, tuple[torch.Tensor, int]] = {}
        self._gram: dict[tuple, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.text_encoder.config.hidden_size

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._emb]
        if todo:
            E, f = encode_texts(self.tokenizer, self.text_encoder, todo, self.batch_size)
            for t, e, i in zip(todo, E, f.tolist()):
                self._emb[t] = (e, i)
        return torch.stack([self._emb[t][0] for t in texts]), [self._emb[t][1] for t in texts]

    def gram(self, texts: list[str], progress: bool = False) -> torch.Tensor:
        """sum_j E(p_j)^T E(p_j) over all 77 rows of each text (the preserve term of docs/method.md §2)."""
        key = tuple(texts)
        if key not in self._gram:
            if not texts:
                self._gram[key] = torch.zeros(self.dim, self.dim, dtype=torch.float64)
            elif len(texts) <= 64:
                E, _ = self.embed(texts)
                self._gram[key] = cf.gram(E)
            else:  # large sets: stream through the encoder, never hold (n, 77, d)
                uniq = {}
                for t in texts:
                    uniq[t] = uniq.get(t, 0) + 1
                G = encode_gram(self.tokenizer, self.text_encoder, [t for t, n in uniq.items() if n == 1],
                                self.batch_size, progress=progress)
                for t, n in uniq.items():
                    if n > 1:
                        G = G + n * cf.gram(self.embed([t])[0])
                self._gram[key] = G
        return self._gram[key]


def uce_erase_pairs(texts: TextCache, concepts: list[str], guides: list[str]) -> list:
    """docs/method.md §2a: (C, T) per concept, token-sliced from the last word tokens."""
    E_c, f_c = texts.embed(concepts)
    E_g, f_g = texts.embed(guides)
    return [cf.uce_token_slice(o, fo, n, fn) for o, fo, n, fn in zip(E_c, f_c, E_g, f_g)]


def _grams_fp64(A: torch.Tensor, B: torch.Tensor | None = None, chunk: int = 4096):
    """(A^T A, A^T B) accumulated in float64, one pass over the rows in chunks (B None: A^T A only).

    fp32 is not enough here: after an erasure S1 can have eigenvalues 1e-4 of its largest, where
    fp32 rounding of the Gram (1e-6 relative) moves close_surrogatereg's solution by percents.
    """
    d = A.shape[1]
    G_aa = torch.zeros(d, d, dtype=torch.float64)
    G_ab = None if B is None else torch.zeros(d, B.shape[1], dtype=torch.float64)
    for i in range(0, A.shape[0], chunk):
        a = A[i:i + chunk].double()
        if B is None:
            G_aa += a.T @ a
        else:  # one product for both: a^T [a, b]
            both = a.T @ torch.cat([a, B[i:i + chunk].double()], dim=1)
            G_aa += both[:, :d]
            G_ab += both[:, d:]
    return G_aa, G_ab


class EditState:
    """The edited matrices of one model: W_cur = W_a @ K, or explicit after a `tensor` edit."""

    def __init__(self, W_orig: dict[str, torch.Tensor], W_start: dict[str, torch.Tensor] | None = None):
        self.keys = list(W_orig)
        self.rows = [W_orig[k].shape[0] for k in self.keys]
        self.W_orig = torch.cat([W_orig[k].float() for k in self.keys])               # (sum d_out, d)
        self.W_a = self.W_orig if W_start is None else torch.cat([W_start[k].float() for k in self.keys])
        self.K: torch.Tensor | None = None   # None = identity
        self._grams = None

    @property
    def dim(self) -> int:
        return self.W_orig.shape[1]

    # -- the Gram sums of docs/method.md §3 --------------------------------------------------------------
    def _gram_pass(self):
        if self._grams is None:
            same = self.W_a is self.W_orig
            G_aa, G_ao = _grams_fp64(self.W_a, None if same else self.W_orig)
            self._grams = (G_aa, G_aa if same else G_ao)
        return self._grams

    def sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """S1 = sum W_cur^T W_cur, S2 = sum W_cur^T W_orig over all 2L matrices (d x d, float64)."""
        G_aa, G_ao = self._gram_pass()
        if self.K is None:
            return G_aa, G_ao
        return cf.factored_sums(self.K, G_aa, G_ao)

    # -- the closed-form edit of docs/method.md §2 -------------------------------------------------------
    def edit(self, erase_pairs, preserve_gram, lamb, erase_scale, preserve_scale, technique="replace"):
        if technique == "replace":
            K_new = cf.edit_factor(erase_pairs, preserve_gram, lamb, erase_scale, preserve_scale)
            self.K = K_new if self.K is None else self.K @ K_new
            return
        # tensor: targets depend on each matrix; edit the stacked matrices of each shape together
        W_cur = self.matrices()
        new = {}
        for shape in dict.fromkeys(tuple(w.shape) for w in W_cur.values()):
            keys = [k for k in self.keys if tuple(W_cur[k].shape) == shape]
            out = cf.closed_form_edit(torch.stack([W_cur[k] for k in keys]), erase_pairs, preserve_gram,
                                      lamb, erase_scale, preserve_scale, technique)
            new.update(zip(keys, out))
        self.W_a, self.K, self._grams = torch.cat([new[k] for k in self.keys]), None, None

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A cheap handle on W_cur (W_a and a copy of K); `matrices(snapshot)` materialises it later."""
        return self.W_a, None if self.K is None else self.K.clone()

    def matrices(self, snapshot=None) -> dict[str, torch.Tensor]:
        """Materialise W_cur (or a snapshot of it), fp32, keyed like the UNet state_dict."""
        W_a, K = self.snapshot() if snapshot is None else snapshot
        W = W_a.clone() if K is None else W_a @ K.float()
        return dict(zip(self.keys, W.split(self.rows)))


def rece_adversarial_embeddings(state: EditState, texts: TextCache, concepts: list[str], gamma: float,
                                emb_computing: str, reg_item: str = "both", old_target: str | None = None):
    """docs/method.md §3 step 1, for every concept of the epoch from the same S1, S2."""
    S1, S2 = state.sums()
    E, _ = texts.embed(concepts)
    old = texts.embed([old_target])[0][0] if emb_computing == "close_standardreg" else None
    return [cf.adversarial_embedding(e, S1, S2, gamma, emb_computing, reg_item, old) for e in E]


def rece_epoch(state: EditState, texts: TextCache, concepts: list[str], guides: list[str],
               preserve_gram: torch.Tensor, gamma: float, emb_computing: str, reg_item: str = "both",
               old_target: str | None = None, lamb: float = 0.1, erase_scale: float = 1.0,
               preserve_scale: float = 0.1, technique: str = "replace") -> list[torch.Tensor]:
    """One RECE epoch (docs/method.md §3): derive every concept's c', then one edit mapping c' -> E(guide)."""
    advs = rece_adversarial_embeddings(state, texts, concepts, gamma, emb_computing, reg_item, old_target)
    E_g, _ = texts.embed(guides)
    state.edit(list(zip(advs, E_g)), preserve_gram, lamb, erase_scale, preserve_scale, technique)
    return advs


def uce_stage(state: EditState, texts: TextCache, concepts: list[str], guides: list[str],
              preserve: list[str], lamb: float, erase_scale: float, preserve_scale: float | None,
              technique: str = "replace", progress: bool = False) -> dict:
    """The UCE edit of docs/method.md §2a on `state`; returns the settings it used (s_p resolved)."""
    s_p = cf.uce_default_preserve_scale(len(preserve)) if preserve_scale is None else preserve_scale
    pairs = uce_erase_pairs(texts, concepts, guides)
    P = texts.gram(preserve, progress=progress)
    state.edit(pairs, P, lamb, erase_scale, s_p, technique)
    return dict(lamb=lamb, erase_scale=erase_scale, preserve_scale=s_p, technique=technique,
                num_preserve_texts=len(preserve), erase_texts=concepts, guide_texts=guides)

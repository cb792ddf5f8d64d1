"""UCE and RECE as steps over the closed-form math (docs/method.md §2a, §3, §4).

`EditState` holds the 2L edited matrices of a model. With technique `replace` it never touches the
weights between edits: it keeps W_cur = W_a K_1 K_2 ... (docs/method.md §2b), each K = I + D^T G of
low rank (`closed_form.edit_update`), so the Gram sums RECE needs are updated in d x d algebra from
Gram matrices formed once (or read from the on-disk cache, `utils.erase.cache`), and materialising
the weights costs O(rank) per row. The weights are materialised only when asked for (to save or
validate a checkpoint). Technique `tensor` has layer-dependent targets and edits the matrices
themselves, all of one shape in one batched call.

`TextCache` encodes each text once per run: preserve sets (up to 1,733 artists) are reduced to their
d x d Gram while encoding, in batches, and the Gram is kept in the on-disk cache when one is given.
"""
from __future__ import annotations

import torch

from utils.erase import closed_form as cf
from utils.erase.cache import GramCache, location_key, texts_sha256
from utils.models import TextEncoders, encode_gram, encode_texts


class TextCache:
    """E(t) and f(t) of every text used in a run, computed once (docs/method.md §1).

    `text`: the model's `TextEncoders` (or, as before, a tokenizer and a text encoder). `cache`, with
    `model_id` and `fingerprint` (`utils.models.text_fingerprint`): keep preserve Grams on disk.
    `num_encoded` counts the texts that went through the encoder.
    """

    def __init__(self, text, text_encoder=None, batch_size: int = 32, cache: GramCache | None = None,
                 model_id: str | None = None, fingerprint: dict | None = None):
        if not isinstance(text, TextEncoders):
            text = TextEncoders([text], [text_encoder])
        self.text, self.batch_size = text, batch_size
        self.cache, self.model_id, self.fingerprint = cache, model_id, fingerprint
        self.num_encoded = 0
        self._emb: dict[str, tuple[torch.Tensor, int]] = {}
        self._gram: dict[tuple, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.text.dim

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._emb]
        if todo:
            E, f = encode_texts(self.text, None, todo, self.batch_size)
            self.num_encoded += len(todo)
            for t, e, i in zip(todo, E, f.tolist()):
                self._emb[t] = (e, i)
        return torch.stack([self._emb[t][0] for t in texts]), [self._emb[t][1] for t in texts]

    def gram(self, texts: list[str], progress: bool = False, tokens: str = "all") -> torch.Tensor:
        """sum_j R(p_j)^T R(p_j): the preserve term of docs/method.md §2, R = all 77 rows of E(p_j)
        (`tokens="all"`) or its last word token's row (`"last"`, UCE 2025, docs/models.md)."""
        key = (tokens, tuple(texts))
        if key not in self._gram:
            if not texts:
                self._gram[key] = torch.zeros(self.dim, self.dim, dtype=torch.float64)
            elif self.cache is None:
                self._gram[key] = self._compute_gram(list(texts), progress, tokens)
            else:
                identity = {"kind": "preserve_gram", "model": location_key(self.model_id), "tokens": tokens,
                            "texts_sha256": texts_sha256(texts), "num_texts": len(texts), "dim": self.dim}
                self._gram[key] = self.cache.get(
                    f"preserve_gram[{len(texts)} texts {identity['texts_sha256'][:8]}, tokens={tokens}]",
                    identity, self.fingerprint,
                    {"gram": (self.dim, self.dim)},
                    lambda: {"gram": self._compute_gram(list(texts), progress, tokens)})["gram"]
        return self._gram[key]

    def _compute_gram(self, texts: list[str], progress: bool, tokens: str) -> torch.Tensor:
        def rows(E, f):
            return E[torch.arange(len(f)), list(f)] if tokens == "last" else E

        if len(texts) <= 64:
            return cf.gram(rows(*self.embed(texts)))
        # large sets: stream through the encoder, never hold (n, 77, d)
        uniq = {}
        for t in texts:
            uniq[t] = uniq.get(t, 0) + 1
        once = [t for t, n in uniq.items() if n == 1]
        G = encode_gram(self.text, once, self.batch_size, progress=progress, tokens=tokens)
        self.num_encoded += len(once)
        for t, n in uniq.items():
            if n > 1:
                G = G + n * cf.gram(rows(*self.embed([t])))
        return G

    def release(self) -> None:
        """Free the text encoders once every text of the run is embedded (a later miss fails)."""
        self.text.release()


def uce_erase_pairs(texts: TextCache, concepts: list[str], guides: list[str], tokens: str = "slice") -> list:
    """(C, T) per concept: token-sliced from the last word tokens (`slice`, docs/method.md §2a), or the
    last word tokens' rows alone (`last`, UCE 2025, docs/models.md)."""
    E_c, f_c = texts.embed(concepts)
    E_g, f_g = texts.embed(guides)
    align = cf.UCE_TOKENS[tokens]
    return [align(o, fo, n, fn) for o, fo, n, fn in zip(E_c, f_c, E_g, f_g)]


class EditState:
    """The edited matrices of one model: W_cur = W_a (I + D_1^T G_1) (I + D_2^T G_2) ..., or explicit
    after a `tensor` edit.

    `grams`: (sum W_a^T W_a, sum W_a^T W_orig) when already known (the on-disk cache); otherwise the
    first `sums()` computes them in one fp64 pass over the weights.
    """

    def __init__(self, W_orig: dict[str, torch.Tensor], W_start: dict[str, torch.Tensor] | None = None,
                 grams: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.keys = list(W_orig)
        self.rows = [W_orig[k].shape[0] for k in self.keys]
        self.W_orig = torch.cat([W_orig[k].float() for k in self.keys])               # (sum d_out, d)
        self.W_a = self.W_orig if W_start is None else torch.cat([W_start[k].float() for k in self.keys])
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []   # (D, G) of each K = I + D^T G
        self._grams = grams
        self._sums, self._sums_count = None, 0   # S1, S2 after the first _sums_count updates

    @property
    def dim(self) -> int:
        return self.W_orig.shape[1]

    @property
    def K(self) -> torch.Tensor | None:
        """The accumulated factor W_cur = W_a K (d x d, float64; None = identity)."""
        K = None
        for D, G in self.updates:
            step = torch.eye(self.dim, dtype=torch.float64) + D.T @ G
            K = step if K is None else K @ step
        return K

    def original(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, self.W_orig.split(self.rows)))

    # -- the Gram sums of docs/method.md §3 --------------------------------------------------------------
    def base_grams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum W_a^T W_a, sum W_a^T W_orig), float64: one pass over the weights, done at most once."""
        if self._grams is None:
            self._grams = weight_grams(self.W_a, None if self.W_a is self.W_orig else self.W_orig)
        return self._grams

    def sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """S1 = sum W_cur^T W_cur, S2 = sum W_cur^T W_orig over all 2L matrices (d x d, float64)."""
        if self._sums is None:
            self._sums, self._sums_count = self.base_grams(), 0
        S1, S2 = self._sums
        for D, G in self.updates[self._sums_count:]:
            S1, S2 = cf.updated_sums(D, G, S1, S2)
        self._sums, self._sums_count = (S1, S2), len(self.updates)
        return S1, S2

    # -- the closed-form edit of docs/method.md §2 -------------------------------------------------------
    def edit(self, erase_pairs, preserve_gram, lamb, erase_scale, preserve_scale, technique="replace"):
        if technique == "replace":
            self.updates.append(cf.edit_update(erase_pairs, preserve_gram, lamb, erase_scale, preserve_scale))
            return
        # tensor: targets depend on each matrix; edit the stacked matrices of each shape together
        W_cur = self.matrices()
        new = {}
        for shape in dict.fromkeys(tuple(w.shape) for w in W_cur.values()):
            keys = [k for k in self.keys if tuple(W_cur[k].shape) == shape]
            out = cf.closed_form_edit(torch.stack([W_cur[k] for k in keys]), erase_pairs, preserve_gram,
                                      lamb, erase_scale, preserve_scale, technique)
            new.update(zip(keys, out))
        self.W_a = torch.cat([new[k] for k in self.keys])
        self.updates, self._grams, self._sums = [], None, None

    def snapshot(self) -> tuple[torch.Tensor, tuple]:
        """A cheap handle on W_cur (W_a and the updates so far); `matrices(snapshot)` materialises it."""
        return self.W_a, tuple(self.updates)

    def matrices(self, snapshot=None) -> dict[str, torch.Tensor]:
        """Materialise W_cur (or a snapshot of it), fp32, keyed like the UNet state_dict."""
        W_a, updates = self.snapshot() if snapshot is None else snapshot
        W = W_a.clone()
        for D, G in updates:
            apply_update(W, D, G)
        return dict(zip(self.keys, W.split(self.rows)))

    def iter_matrices(self, snapshots: list):
        """Materialise snapshots in order, each from the one before when it extends it (the usual
        sequence UCE, epoch 1, 2, ...): one weight buffer, updated in place, yielded each time (save
        or copy it before asking for the next)."""
        W, done, base = None, (), None
        for W_a, updates in snapshots:
            extends = len(updates) >= len(done) and all(u is v for u, v in zip(updates, done))
            if W is None or base is not W_a or not extends:
                W, done, base = W_a.clone(), (), W_a
            for D, G in updates[len(done):]:
                apply_update(W, D, G)
            done = updates
            yield dict(zip(self.keys, W.split(self.rows)))


def apply_update(W: torch.Tensor, D: torch.Tensor, G: torch.Tensor, chunk: int = 8192) -> None:
    """W <- W (I + D^T G) in place, in row chunks (fp32 products; dense when the rank is not low)."""
    if D.shape[0] * 2 >= D.shape[1]:
        K = (torch.eye(D.shape[1], dtype=torch.float64) + D.T @ G).to(W.dtype)
        for i in range(0, W.shape[0], chunk):
            W[i:i + chunk] = W[i:i + chunk] @ K
        return
    Dt, G = D.T.to(W.dtype).contiguous(), G.to(W.dtype)
    for i in range(0, W.shape[0], chunk):
        w = W[i:i + chunk]
        w += (w @ Dt) @ G


def cached_base_grams(state: EditState, cache: GramCache, model_id: str, weights_fingerprint: dict | None,
                      start: str | None = None) -> None:
    """Give `state` its base Grams from the on-disk cache, or compute them in one pass and store them.

    The entry is keyed by the model (and the start checkpoint's path, when RECE starts from one) and
    fingerprinted by the UNet file and the values of the edited matrices (and of the start matrices).
    """
    from utils.erase.cache import tensors_sha256

    same = state.W_a is state.W_orig
    d = state.dim
    identity = {"kind": "weight_grams", "model": location_key(model_id), "start": None if same else location_key(start),
                "dim": d}
    fingerprint = None
    if cache.enabled and weights_fingerprint is not None:
        fingerprint = {"weights": weights_fingerprint,
                       "start_sha256": None if same else tensors_sha256({"W_a": state.W_a})}
    shapes = {"G_aa": (d, d)} if same else {"G_aa": (d, d), "G_ao": (d, d)}

    def compute():
        G_aa, G_ao = weight_grams(state.W_a, None if same else state.W_orig)
        return {"G_aa": G_aa} if same else {"G_aa": G_aa, "G_ao": G_ao}

    grams = cache.get("weight_grams", identity, fingerprint, shapes, compute)
    state._grams = (grams["G_aa"], grams["G_aa"] if same else grams["G_ao"])


def weight_grams(A: torch.Tensor, B: torch.Tensor | None = None, chunk: int = 4096):
    """(A^T A, A^T B) accumulated in float64, one pass over the rows in chunks (B None: A^T B = A^T A).

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
    return G_aa, G_aa if B is None else G_ab


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
              technique: str = "replace", progress: bool = False, tokens: str = "slice") -> dict:
    """The UCE edit of docs/method.md §2a on `state`; returns the settings it used (s_p resolved).

    `tokens`: `slice` (the RECE code's alignment, docs/method.md §2a) or `last` (UCE 2025: one row
    per text, the last word token's, for erase pairs and preserve texts alike; docs/models.md).
    """
    s_p = cf.uce_default_preserve_scale(len(preserve)) if preserve_scale is None else preserve_scale
    pairs = uce_erase_pairs(texts, concepts, guides, tokens)
    P = texts.gram(preserve, progress=progress, tokens="last" if tokens == "last" else "all")
    state.edit(pairs, P, lamb, erase_scale, s_p, technique)
    return dict(lamb=lamb, erase_scale=erase_scale, preserve_scale=s_p, technique=technique,
                num_preserve_texts=len(preserve), erase_texts=concepts, guide_texts=guides, uce_tokens=tokens)

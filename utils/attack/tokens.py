"""Token sequences of adversarial prompts: layouts, the ids an attack may use, text round trips.

A prompt is fed to the text encoder as 77 token ids [SOT, tokens..., EOT, pad...]. The attacks place
learnable tokens in it (docs/method.md §10):
- `prefix`: [SOT, adv x k, prompt, EOT, pad...] (UnlearnDiffAtk's "prefix_k"; k padding slots are
  dropped so the length stays 77);
- `free`: [SOT, adv x k, EOT, pad...] (P4D-N: the prompt is replaced);
- `every`: one learnable token, then `every` prompt tokens, repeated: [SOT, adv, p1, p2, p3, adv, p4,
  ...] with len(prompt) // every + 1 learnable tokens (P4D-K, every = 3).
A prompt too long to leave room for its learnable tokens and an end token is cut (and the cut is
recorded). The learnable tokens never take a special token (start, end, padding).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.models import TEXT_LENGTH

LAYOUTS = ("prefix", "free", "every")


@dataclass
class Layout:
    """77 token ids with the learnable positions marked: `ids[adv_positions]` are placeholders."""
    ids: torch.Tensor            # (77,) long
    adv_positions: torch.Tensor  # (k,) long, increasing
    prompt_tokens: int           # prompt tokens kept
    truncated: bool              # whether the prompt was cut to fit

    @property
    def k(self) -> int:
        return len(self.adv_positions)

    def with_tokens(self, adv_ids: torch.Tensor) -> torch.Tensor:
        ids = self.ids.clone()
        ids[self.adv_positions] = adv_ids.to(ids.dtype).cpu()
        return ids


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids without start/end tokens, untruncated."""
    return tokenizer(prompt, add_special_tokens=False, truncation=False)["input_ids"]


def make_layout(tokenizer, prompt: str, layout: str, k: int = 0, every: int = 3) -> Layout:
    """Token ids of `prompt` with learnable slots placed by `layout` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    body_max = TEXT_LENGTH - 2  # room between SOT and EOT
    p = prompt_token_ids(tokenizer, prompt) if layout != "free" else []
    n = len(p)
    if layout == "prefix":
        keep = min(n, body_max - k)
        body = [-1] * k + p[:keep]
    elif layout == "free":
        keep = 0
        body = [-1] * k
    else:
        keep = n
        while keep + keep // every + 1 > body_max:
            keep -= 1
        body = []
        for i, tok in enumerate(p[:keep]):
            if i % every == 0:
                body.append(-1)
            body.append(tok)
        if keep % every == 0:
            body.append(-1)
    if len(body) > body_max or (layout != "every" and keep < 0):
        raise ValueError(f"{k} learnable tokens do not fit in {TEXT_LENGTH} positions")
    ids = [sot] + body + [eot] + [pad] * (body_max - len(body))
    ids = torch.tensor(ids, dtype=torch.long)
    positions = (ids == -1).nonzero().flatten()
    ids[positions] = pad
    return Layout(ids, positions, keep, keep < n)


def allowed_token_ids(tokenizer) -> torch.Tensor:
    """Every id of the vocabulary except the special tokens (start, end, padding, unknown); for a list
    of tokenizers (SDXL's two), except the special tokens of any of them."""
    tokenizers = tokenizer if isinstance(tokenizer, (list, tuple)) else [tokenizer]
    special = set().union(*(t.all_special_ids for t in tokenizers))
    return torch.tensor([i for i in range(len(tokenizers[0])) if i not in special], dtype=torch.long)


def make_layouts(tokenizers: list, prompt: str, layout: str, k: int = 0, every: int = 3) -> list[Layout]:
    """One `make_layout` per tokenizer (SDXL: two), with the learnable tokens at the same positions.

    The attacks place ONE adversarial token id per position in every encoder's sequence (each encoder
    embeds it with its own table), so the tokenizers must share their vocabulary (SDXL's two do: they
    differ only in the padding token); raises UserError (a property of the model) otherwise."""
    from utils.errors import UserError

    first = tokenizers[0]
    for other in tokenizers[1:]:
        if len(other) != len(first) or other.get_vocab() != first.get_vocab():
            raise UserError("the model's two tokenizers do not share one vocabulary: an adversarial token id "
                            "cannot be placed in both encoders' sequences")
    layouts = [make_layout(t, prompt, layout, k, every) for t in tokenizers]
    for other in layouts[1:]:
        if not torch.equal(other.adv_positions, layouts[0].adv_positions):
            raise UserError(f"the model's two tokenizers split the prompt {prompt!r} differently")
    return layouts


def ids_to_text(tokenizer, ids: torch.Tensor) -> str:
    """The text of a 77-id sequence: its tokens between SOT and the first EOT, decoded."""
    ids = ids.tolist()
    body = ids[1:]
    if tokenizer.eos_token_id in body:
        body = body[:body.index(tokenizer.eos_token_id)]
    special = set(tokenizer.all_special_ids)
    return tokenizer.decode([i for i in body if i not in special]).strip()


def token_embedding_table(text_encoder) -> torch.nn.Embedding:
    tm = getattr(text_encoder, "text_model", text_encoder)
    return tm.embeddings.token_embedding


def encode_token_embeddings(text_encoder, token_embeds: torch.Tensor) -> torch.Tensor:
    """E from token embeddings (B, 77, d) instead of ids: the CLIP text encoder's own forward pass
    (position embeddings, causal transformer, final layer norm), differentiable in `token_embeds`.
    Equal to `text_encoder(ids)[0]` when `token_embeds` is the embedding of `ids`."""
    from transformers.masking_utils import create_causal_mask

    tm = getattr(text_encoder, "text_model", text_encoder)
    hidden = tm.embeddings(inputs_embeds=token_embeds)
    mask = create_causal_mask(config=tm.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    out = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return tm.final_layer_norm(out)

"""One UNet, two models: the base model and the model under attack differ only in the checkpoint's
tensors, so the attacks hold one UNet and switch between the two parameter sets.

`ModelPair` keeps the base weights in the UNet and, for the erased model, only the checkpoint's
tensors that differ from the base (for UCE / RECE: the attn2 K/V matrices, 77 MB for SD 1.4; for a
full checkpoint, whatever it changed). The erased model is used two ways:
- `eps(...)` calls the UNet functionally with the erased tensors in place of the base ones
  (`torch.func.functional_call`): no copy, the UNet itself is untouched, gradients flow to the inputs;
- `use("erased")` copies the erased tensors into the UNet for a block (generation runs the UNet
  directly) and restores the base tensors afterwards, even on an exception.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from utils.errors import UserError


def load_model_pair(pipe, ckpt, model_id: str | None = None) -> "ModelPair":
    """Apply checkpoint `ckpt` with the toolkit's loader and keep, aside, only the tensors it changed;
    the UNet keeps the base weights. The base values of the checkpoint's keys (through its parents)
    are copied before it is applied (for a partial K/V checkpoint that is 32 matrices, not a second
    UNet), so any format the loader applies works: our partial files, full UNet state_dicts, folders."""
    from utils.checkpoints import apply_checkpoint, inspect_checkpoint, unet_state_shapes

    unet = pipe.unet
    if not ckpt:
        return ModelPair(unet, {})
    ck = inspect_checkpoint(ckpt, unet_state_shapes(unet))
    current = dict(unet.named_parameters())
    current.update(dict(unet.named_buffers()))
    keys = {k for c in ck.chain() for k in c.keys}
    base = {k: current[k].detach().clone() for k in keys if k in current}
    apply_checkpoint(unet, ck)
    erased = {}
    with torch.no_grad():
        for key, b in base.items():
            if not torch.equal(current[key], b):
                erased[key] = current[key].detach().clone()
            current[key].copy_(b)  # the UNet goes back to the base weights
    return ModelPair(unet, erased)


class ModelPair:
    """The base model (the UNet's own weights) and the model under attack (base + `erased` tensors)."""

    def __init__(self, unet, erased: dict[str, torch.Tensor] | None = None):
        self.unet = unet
        params = dict(unet.named_parameters())
        params.update(dict(unet.named_buffers()))
        self.erased: dict[str, torch.Tensor] = {}
        self._base: dict[str, torch.Tensor] = {}
        for key, w in (erased or {}).items():
            if key not in params:
                raise UserError(f"checkpoint tensor {key} has no match in the UNet")
            p = params[key]
            if tuple(p.shape) != tuple(w.shape):
                raise UserError(f"checkpoint tensor {key} has shape {list(w.shape)}, the UNet has {list(p.shape)}")
            w = w.to(p.device, p.dtype)
            if torch.equal(w, p.detach()):
                continue  # unchanged by the checkpoint: nothing to switch
            self.erased[key] = w
            self._base[key] = p.detach().clone()
        self._params = params
        self.current = "base"

    @property
    def identical(self) -> bool:
        """True when the checkpoint changes nothing (or there is none): both models are the base."""
        return not self.erased

    def _load(self, which: str) -> None:
        src = self.erased if which == "erased" else self._base
        with torch.no_grad():
            for key, w in src.items():
                self._params[key].copy_(w)
        self.current = which

    @contextmanager
    def use(self, which: str):
        """Run the block with the UNet holding `which` ('base' or 'erased') weights."""
        if which not in ("base", "erased"):
            raise ValueError(which)
        before = self.current
        if which != before:
            self._load(which)
        try:
            yield self.unet
        finally:
            if self.current != before:
                self._load(before)

    def eps(self, which: str, x_t: torch.Tensor, t, cond: torch.Tensor, added_cond_kwargs: dict | None = None) -> torch.Tensor:
        """The noise prediction of model `which` at (x_t, t) conditioned on `cond` (B, 77, d); SDXL also
        takes `added_cond_kwargs` (pooled embedding and time ids, `utils.generate.sampling.added_conditions`)."""
        kwargs = {"encoder_hidden_states": cond, "return_dict": False}
        if added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = added_cond_kwargs
        if which == "erased" and self.erased and self.current == "base":
            from torch.func import functional_call

            return functional_call(self.unet, self.erased, (x_t, t), kwargs, strict=False)[0]
        if which == "base" and self.erased and self.current == "erased":
            from torch.func import functional_call

            return functional_call(self.unet, self._base, (x_t, t), kwargs, strict=False)[0]
        return self.unet(x_t, t, **kwargs)[0]

    def nbytes(self) -> int:
        """Memory held for switching: the erased tensors and the saved base tensors."""
        return sum(t.numel() * t.element_size() for d in (self.erased, self._base) for t in d.values())

"""FLAME's rescaler: a scalar s_i multiplying the routed-experts output of a client that activates fewer
experts (k_i < k) than the model was pretrained with, so the MoE output keeps its magnitude.

``MoE_i(x) = s_i * sum_{j in top-k_i(x)} g_j(x) E_j(x)``. The scale is ``s = s0 * exp(u)`` with ``u`` trained
from 0 each round (multiplicative steps of the optimizer's size, always positive); one value per MoE layer
(``per_layer``) or one shared by all layers.

Where ``s0`` starts (``init``, see :func:`start_scales`):
- a router that renormalises its top-k weights to a fixed sum (Mixtral always; OLMoE, Qwen2-MoE and
  DeepSeek-V3 with ``norm_topk_prob=True``) keeps the gate mass at any k_i, so ``s0 = 1``;
- otherwise (OLMoE as released, ``norm_topk_prob=False``) the top-k_i gates carry only part of the mass, and
  ``s0`` is calibrated per layer on a batch of the client's data with the model as received:
  ``s0_l = ||routed output of layer l at top-k|| / ||... at top-k_i||``. The two forward passes see the same
  batch; in the top-k_i pass each layer's output is multiplied by its ``s0_l`` as soon as it is measured, so
  deeper layers are calibrated on the inputs they will see in training (layer 0's ratio is exact);
- ``k / k_i`` is the paper's fixed alternative; it assumes every expert contributes equally, which
  overshoots when the top gates carry most of the mass (``init='ratio'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from fedmoe.moe.layers import family_of, moe_layers, set_top_k

MODES = ("none", "fixed", "learnable")
INITS = ("auto", "calibrated", "ratio", "one")


def initial_scale(full_top_k: int, top_k: int) -> float:
    """The paper's fixed alternative ``k / k_i``."""
    if not 1 <= top_k <= full_top_k:
        raise ValueError(f"a client's top-k must be in 1..{full_top_k} (the model's top-k), got {top_k}")
    return full_top_k / top_k


def renormalises_top_k(model: nn.Module) -> bool:
    """Whether the routers rescale their top-k weights to a sum that does not depend on k (Mixtral always;
    other families when ``norm_topk_prob`` is set on the router)."""
    if family_of(model) == "mixtral":
        return True
    return bool(getattr(moe_layers(model)[0].gate, "norm_topk_prob", False))


def _routed_norm(out: torch.Tensor, valid: torch.Tensor) -> float:
    """Frobenius norm of a routed-experts output over the non-padding tokens (all rows if shapes differ)."""
    rows = out.reshape(-1, out.shape[-1])
    if rows.shape[0] == valid.numel():
        rows = rows[valid]
    return float(rows.double().norm())


@torch.no_grad()
def routed_norms(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[float]:
    """Per MoE layer, the norm of the routed-experts output over the non-padding tokens of ``batch``, after any
    rescaler already applied (:meth:`Rescaler.applied`): what a client loses at a lower top-k_i, and what
    :func:`calibrate_scales` matches. One no-grad forward pass in eval mode; the train/eval mode is restored."""
    layers = moe_layers(model)
    valid = batch["attention_mask"].reshape(-1).bool()
    norms = [0.0] * len(layers)

    def measure(i):
        def hook(_m, _inp, out):
            norms[i] = _routed_norm(out, valid)
        return hook

    was_training = model.training
    handles = [layer.block.experts.register_forward_hook(measure(layer.index)) for layer in layers]
    model.eval()
    try:
        model(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return norms


@torch.no_grad()
def calibrate_scales(model: nn.Module, batch: dict[str, torch.Tensor], full_top_k: int, top_k: int) -> list[float]:
    """Per MoE layer, ``||routed output at top-k|| / ||routed output at top-k_i||`` on ``batch`` (module doc).

    Runs the model twice in eval mode without gradients; its top-k and train/eval mode are restored.
    """
    layers = moe_layers(model)
    valid = batch["attention_mask"].reshape(-1).bool()
    scales = [1.0] * len(layers)

    def match(i):
        def hook(_m, _inp, out):
            norm = _routed_norm(out, valid)
            scales[i] = reference[i] / norm if norm > 0 and reference[i] > 0 else 1.0
            return out * scales[i]
        return hook

    was_training, original_k = model.training, layers[0].top_k
    try:
        set_top_k(model, full_top_k)
        reference = routed_norms(model, batch)
        set_top_k(model, top_k)
        model.eval()
        handles = [layer.block.experts.register_forward_hook(match(layer.index)) for layer in layers]
        try:
            model(**{k: batch[k] for k in ("input_ids", "attention_mask")})
        finally:
            for h in handles:
                h.remove()
    finally:
        set_top_k(model, original_k)
        model.train(was_training)
    return scales


def start_scales(model: nn.Module, init: str, full_top_k: int, top_k: int,
                 batch: dict[str, torch.Tensor] | None = None, *, per_layer: bool = True) -> list[float]:
    """A client's starting rescaler ``s0``, one per MoE layer (``per_layer``) or one value (their mean).

    ``init``: ``auto`` (1 on a renormalising router, else ``calibrated``), ``calibrated`` (needs ``batch``),
    ``ratio`` (``k / k_i``) or ``one``. At the full top-k every init is 1.
    """
    if init not in INITS:
        raise ValueError(f"rescaler_init={init!r}; use one of {INITS}")
    count = len(moe_layers(model))
    if init == "ratio" or top_k == full_top_k:
        values = [initial_scale(full_top_k, top_k)] * count
    elif init == "one" or (init == "auto" and renormalises_top_k(model)):
        values = [1.0] * count
    elif batch is None:
        raise ValueError("calibrating the rescaler needs a batch of the client's data; pass `batch`")
    else:
        values = calibrate_scales(model, batch, full_top_k, top_k)
    return values if per_layer else [sum(values) / len(values)]


class Rescaler(nn.Module):
    """Scales each MoE layer's routed-experts output by ``s0 * exp(u)`` (``u`` trainable when ``trainable``)."""

    def __init__(self, start: Sequence[float], trainable: bool):
        super().__init__()
        self.register_buffer("start", torch.tensor([float(v) for v in start]))
        self.log_gain = nn.Parameter(torch.zeros(len(start)), requires_grad=trainable)

    def values(self) -> torch.Tensor:
        """Current scales, one per entry of ``start``."""
        return self.start * self.log_gain.exp()

    def param_groups(self, lr: float) -> list[dict]:
        """The optimizer group training ``u`` at its own ``lr`` (no weight decay); empty when fixed."""
        return [{"params": [self.log_gain], "lr": lr, "weight_decay": 0.0}] if self.log_gain.requires_grad else []

    @contextmanager
    def applied(self, model: nn.Module):
        """Within the block, every MoE layer's experts output is multiplied by its scale (forward hooks on the
        outermost experts module, so peft LoRA wrappers are inside and shared experts are untouched)."""
        layers = moe_layers(model)
        if len(self.start) not in (1, len(layers)):
            raise ValueError(f"{len(self.start)} scales for {len(layers)} MoE layers; give 1 or one per layer")
        handles = []
        for layer in layers:
            i = layer.index if len(self.start) > 1 else 0
            handles.append(layer.block.experts.register_forward_hook(
                lambda _m, _inp, out, i=i: out * self.values()[i].to(out.dtype)))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

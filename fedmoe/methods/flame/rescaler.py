"""FLAME's rescaler: a learnable scalar s_i multiplying the routed-experts output of a client that activates
fewer experts (k_i < k) than the model was pretrained with, so the MoE output keeps its magnitude.

``MoE_i(x) = s_i * sum_{j in top-k_i(x)} g_j(x) E_j(x)``, with ``s_i`` initialised at ``k / k_i``. The scale
is ``s = s0 * exp(u)`` with ``u`` trained from 0 each round: multiplicative steps of the optimizer's size,
and always positive. One value per MoE layer (``per_layer``) or one shared by all layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from fedmoe.moe.layers import moe_layers

MODES = ("none", "fixed", "learnable")


def initial_scale(full_top_k: int, top_k: int) -> float:
    """The natural init ``k / k_i``."""
    if not 1 <= top_k <= full_top_k:
        raise ValueError(f"a client's top-k must be in 1..{full_top_k} (the model's top-k), got {top_k}")
    return full_top_k / top_k


class Rescaler(nn.Module):
    """Scales each MoE layer's routed-experts output by ``s0 * exp(u)`` (``u`` trainable when ``trainable``)."""

    def __init__(self, start: Sequence[float], trainable: bool):
        super().__init__()
        self.register_buffer("start", torch.tensor([float(v) for v in start]))
        self.log_gain = nn.Parameter(torch.zeros(len(start)), requires_grad=trainable)

    def values(self) -> torch.Tensor:
        """Current scales, one per entry of ``start``."""
        return self.start * self.log_gain.exp()

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

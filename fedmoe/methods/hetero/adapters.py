"""Model-side helpers for LoRA methods that change the base weights or read per-expert structure.

FlexLoRA's global model and FLoRA's rounds merge a full-size update ``alpha / r * Delta W`` into the
weights the LoRA adapts; FLAME's aggregation needs which MoE layer each expert LoRA belongs to. The keys
are the LoRA module prefixes of :mod:`fedmoe.methods.hetero.lowrank`.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from fedmoe.methods.hetero.lowrank import Factors, is_expert_prefix
from fedmoe.moe.layers import moe_layers

_LAYER = re.compile(r"layers\.(\d+)\.mlp\.experts")


def lora_modules(model: nn.Module, adapter: str = "default") -> dict[str, nn.Module]:
    """``{prefix: peft LoRA layer}`` of every adapted module (prefixes as in the LoRA state dict)."""
    found = {name: m for name, m in model.named_modules()
             if isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and adapter in m.lora_A}
    if not found:
        raise ValueError("the model has no LoRA adapter; wrap it with fedmoe.moe.lora.add_expert_lora first")
    return found


def adapted_weight(module: nn.Module) -> nn.Parameter:
    """The base weight a peft LoRA layer adapts: the fused expert tensor of a ParamWrapper, else ``weight``."""
    base = module.get_base_layer()
    name = getattr(module, "parameter_name", None)
    return getattr(base, name) if name else base.weight


def lora_scaling(model: nn.Module, adapter: str = "default") -> float:
    """LoRA's ``alpha / r`` (one value for the whole adapter)."""
    values = {float(m.scaling[adapter]) for m in lora_modules(model, adapter).values()}
    if len(values) != 1:
        raise ValueError(f"adapted modules use different LoRA scalings {sorted(values)}")
    return values.pop()


def adapted_base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the base weights under every LoRA module, ``{prefix: [G, out, in]}`` (G = 1 for linears)."""
    out = {}
    for p, m in lora_modules(model).items():
        w = adapted_weight(m).detach().clone()
        out[p] = w if w.dim() == 3 else w[None]
    return out


def set_merged_weights(model: nn.Module, base: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor],
                       scaling: float) -> None:
    """Set every adapted weight to ``base + scaling * delta`` (deltas [G, out, in]; a prefix without a delta
    gets its base weight back), in place."""
    modules = lora_modules(model)
    unknown = set(deltas) - set(modules)
    if unknown:
        raise KeyError(f"deltas for modules the model does not adapt: {sorted(unknown)[:3]}")
    with torch.no_grad():
        for p, m in modules.items():
            w = adapted_weight(m)
            value = base[p] if p not in deltas else base[p].double() + scaling * deltas[p].double()
            w.copy_(value.reshape(w.shape).to(w.dtype))


def moe_index_of_prefix(model: nn.Module) -> dict[str, int]:
    """``{expert LoRA prefix: index of its MoE layer}`` (the row of ``TrainStats.expert_counts``)."""
    by_decoder_layer = {layer.layer_idx: layer.index for layer in moe_layers(model)}
    out = {}
    for p in lora_modules(model):
        if is_expert_prefix(p):
            match = _LAYER.search(p)
            if match is None or int(match.group(1)) not in by_decoder_layer:
                raise ValueError(f"cannot tell which MoE layer the expert LoRA {p!r} belongs to")
            out[p] = by_decoder_layer[int(match.group(1))]
    return out


def fresh_factors(template: Factors, rank: int, generator: torch.Generator) -> Factors:
    """New LoRA factors shaped like ``template`` with ``rank`` live components: A uniform in
    ``+-1/sqrt(in)`` (peft's kaiming-uniform init, a = sqrt(5)), B zero; components beyond ``rank`` zero."""
    out = {}
    for p, (a, b) in template.items():
        if not 1 <= rank <= a.shape[1]:
            raise ValueError(f"rank {rank} must be in 1..{a.shape[1]}")
        bound = 1 / math.sqrt(a.shape[2])
        new_a = torch.zeros_like(a)
        new_a[:, :rank] = (torch.rand(a.shape[0], rank, a.shape[2], generator=generator) * 2 - 1) * bound
        out[p] = (new_a, torch.zeros_like(b))
    return out

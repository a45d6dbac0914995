"""One uniform view of the MoE layers of a transformers v5 model (any supported family, plain, *ForCausalLM
or peft-wrapped): where each router and fused expert block lives, and the model-wide top-k."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedmoe.moe.families import SUPPORTED_FAMILIES, config_family

# Name of the (non-persistent) buffer on a router that re-maps original expert indices to merged slots.
REMAP_BUFFER = "fedmoe_expert_remap"


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (peft ``PeftModel`` wrappers removed; others unchanged)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder module (holding ``layers`` and ``embed_tokens``) of a plain, causal-LM or peft model."""
    for module in unwrap(model).modules():
        if isinstance(getattr(module, "layers", None), nn.ModuleList) and hasattr(module, "embed_tokens"):
            return module
    raise ValueError(
        f"No decoder with `layers` and `embed_tokens` found in {type(model).__name__}; pass a transformers "
        f"causal LM of a supported family {SUPPORTED_FAMILIES}."
    )


def family_of(model: nn.Module) -> str:
    """The MoE family (``config.model_type``) of ``model``; a clear error if it is not supported."""
    return config_family(unwrap(model).config)


def _base_module(module: nn.Module) -> nn.Module:
    """Strip peft ``ParamWrapper`` layers (nested when several parameters are targeted)."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


@dataclass
class MoELayer:
    """One sparse MoE block.

    ``index``: position among the model's MoE layers (dense layers skipped); ``layer_idx``: position in the
    decoder; ``block``: the ``mlp`` module; ``gate``: its router (``weight`` [E, H], ``top_k``);
    ``experts``: the fused experts module (``gate_up_proj`` [S, 2I, H], gate rows then up rows;
    ``down_proj`` [S, H, I]) with peft wrappers stripped. Normally the number of slots S equals the
    router's E; after :func:`fedmoe.moe.surgery.merge_experts` several router experts share a slot.
    """

    index: int
    layer_idx: int
    block: nn.Module
    gate: nn.Module
    experts: nn.Module

    @property
    def num_experts(self) -> int:
        """Number of expert slots stored in the fused tensors (what ``expert_weights`` indexes)."""
        return int(self.experts.gate_up_proj.shape[0])

    @property
    def num_router_experts(self) -> int:
        """Number of experts the router scores (rows of ``router_weight``; the routing statistics' E)."""
        return int(self.gate.weight.shape[0])

    @property
    def top_k(self) -> int:
        """Experts each token is routed to."""
        return int(self.gate.top_k)

    @property
    def router_weight(self) -> nn.Parameter:
        """Router matrix [E, H]."""
        return self.gate.weight

    @property
    def gate_up_proj(self) -> nn.Parameter:
        """Fused gate/up projections [S, 2I, H]."""
        return self.experts.gate_up_proj

    @property
    def down_proj(self) -> nn.Parameter:
        """Fused down projections [S, H, I]."""
        return self.experts.down_proj

    @property
    def expert_map(self) -> torch.Tensor:
        """Long tensor [E]: router expert index -> stored slot (identity unless experts were merged)."""
        remap = getattr(self.gate, REMAP_BUFFER, None)
        if remap is None:
            return torch.arange(self.num_router_experts, device=self.router_weight.device)
        return remap

    def expert_weights(self, e: int) -> dict[str, torch.Tensor]:
        """Views (no copy) of slot ``e``: ``gate_up_proj`` [2I, H] and ``down_proj`` [H, I]."""
        if not 0 <= e < self.num_experts:
            raise IndexError(
                f"Expert {e} out of range: MoE layer {self.index} holds {self.num_experts} experts."
            )
        return {"gate_up_proj": self.gate_up_proj[e], "down_proj": self.down_proj[e]}


def moe_layers(model: nn.Module) -> list[MoELayer]:
    """The MoE layers of ``model`` in decoder order (dense layers skipped); works on peft-wrapped models."""
    family_of(model)
    found = []
    for layer_idx, layer in enumerate(decoder_of(model).layers):
        block = getattr(layer, "mlp", None)
        gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
        if gate is None or experts is None or not hasattr(gate, "weight"):
            continue
        found.append(MoELayer(len(found), layer_idx, block, gate, _base_module(experts)))
    if not found:
        raise ValueError(f"{type(unwrap(model)).__name__} has no MoE layers (every layer is dense).")
    return found


def set_top_k(model: nn.Module, k: int) -> None:
    """Route every token to ``k`` experts in every MoE layer (config, routers, blocks and the causal-LM's
    aux-loss attribute), e.g. FLAME's per-client budget k_i. Raises if ``k`` is not in 1..E."""
    layers = moe_layers(model)
    num = min(layer.num_router_experts for layer in layers)
    if not 1 <= k <= num:
        raise ValueError(f"top_k={k} is impossible: the routers score {num} experts; choose 1 <= k <= {num}.")
    config = unwrap(model).config
    n_group, topk_group = getattr(config, "n_group", None), getattr(config, "topk_group", None)
    if n_group and topk_group and n_group > 1 and k > topk_group * (num // n_group):
        raise ValueError(
            f"top_k={k} exceeds the {topk_group} of {n_group} expert groups this router may pick from "
            f"({topk_group * (num // n_group)} experts); raise config.topk_group or lower k."
        )
    config.num_experts_per_tok = k
    for layer in layers:
        layer.gate.top_k = k
        if hasattr(layer.block, "top_k"):
            layer.block.top_k = k
    for module in unwrap(model).modules():
        if isinstance(getattr(module, "num_experts_per_tok", None), int):
            module.num_experts_per_tok = k

"""The priced architecture's expert sizes, which every expert method's memory budget starts from.

In ``cost.mode="projection"`` the priced architecture is a paper-scale one (:attr:`Federation.priced_config`), so
expert counts and bytes come from it, not from the tiny trained model (see :mod:`fedmoe.methods.flux.budget`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.pricing import activation_bytes
from fedmoe.moe.memory import param_counts, weight_bytes


@dataclass(frozen=True)
class PricedModel:
    """Sizes of the priced architecture: MoE layers, experts per layer, parameters per expert, top-k, and
    bytes of the always-resident shared weights at 16 and 4 bits and of one batch's activations."""

    num_layers: int
    num_experts: int
    expert_params: int
    top_k: int
    shared_bytes: dict[int, int]
    expert_bytes: dict[int, int]
    activation_bytes: int

    @property
    def total_experts(self) -> int:
        """Routed experts in the whole model."""
        return self.num_layers * self.num_experts


def priced_model(fed) -> PricedModel:
    """:class:`PricedModel` of ``fed.priced_config`` with ``fed``'s batch (batch_size * max_length tokens)."""
    config = fed.priced_config
    counts = param_counts(config)
    layers = counts.num_moe_layers
    shared, expert = {}, {}
    for bits in (16, 4):
        b = {"experts": bits, "linears": bits}
        one, two = weight_bytes(config, experts_per_layer=1, bits=b), weight_bytes(config, experts_per_layer=2, bits=b)
        expert[bits] = (two - one) // layers
        shared[bits] = one - layers * expert[bits]
    act = activation_bytes(config, fed.cfg.fed.batch_size * fed.cfg.fed.max_length, fed.cfg.cost.gradient_checkpointing)
    return PricedModel(layers, counts.experts_per_layer[0], counts.expert, int(config.num_experts_per_tok),
                       shared, expert, act)

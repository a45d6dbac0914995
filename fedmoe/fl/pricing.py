"""Cost-model inputs for a client's round: what it trained, priced on the trained or a paper-scale model.

Methods measure what a client did (tokens trained, which parameters trained) and call
:func:`training_work`, which prices it with :mod:`fedmoe.fl.cost` on ``fed.priced_config`` — the
trained model in ``trained`` mode, a paper-scale architecture in ``projection`` mode (so the same
run yields paper-scale seconds). Parameter counts a method passes must therefore be computed for
``fed.priced_config`` (helpers below do that for LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.cost import ClientWork, token_flops
from fedmoe.moe.families import family_spec
from fedmoe.moe.memory import as_config, model_memory, moe_layer_mask

BF16_BYTES = 2


@dataclass(frozen=True)
class LoraParams:
    """LoRA parameters of a config: ``total`` stored, ``active`` used per token (top-k experts' LoRA)."""

    total: int
    active: int


def lora_params(config, rank: int, *, attention: bool = False, experts: bool = True, top_k: int | None = None,
                ranks_per_layer: list[int] | None = None) -> LoraParams:
    """LoRA parameter counts for ``config``: rank-``rank`` LoRA on every routed expert's fused tensors
    (gate_up [2I, H]: r(H + 2I); down [H, I]: r(I + H)) and optionally on attention q/v projections."""
    config = as_config(config)
    spec = family_spec(config.model_type)
    h = int(config.hidden_size)
    inter = int(getattr(config, spec.expert_intermediate_key))
    num_experts = int(getattr(config, spec.experts_key))
    k = int(top_k if top_k is not None else config.num_experts_per_tok)
    mask = moe_layer_mask(config)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    total = active = 0
    for is_moe in mask:
        if experts and is_moe:
            per_expert = rank * (h + 2 * inter) + rank * (inter + h)
            total += num_experts * per_expert
            active += k * per_expert
        if attention:
            qv = rank * (h + heads * head_dim) + rank * (h + kv * head_dim)
            total += qv
            active += qv
    return LoraParams(total, active)


def payload_bytes(fed, actual: int, projected_params: int) -> int:
    """Bytes on the wire: the real payload when pricing the trained model, bf16 parameters in projection."""
    return int(actual) if fed.cost.mode == "trained" else int(projected_params) * BF16_BYTES


def training_work(
    fed,
    *,
    tokens: int,
    seq_len: int,
    batch_tokens: int,
    trainable_params: int,
    trainable_active: int | None,
    bytes_down: int,
    bytes_up: int,
    adapter_active: int = 0,
    top_k: int | None = None,
    experts_per_layer: int | list[int] | None = None,
    bits: int | dict[str, int] = 16,
    forward_tokens: int = 0,
    host_device_bytes: int = 0,
) -> dict[str, float]:
    """Price one client's round (see the module docstring); returns ``ClientWork`` as a dict.

    ``tokens`` are scaled by ``cost.tokens_scale`` (how many real tokens one simulated token stands
    for, 1 by default). Memory = weights (at ``bits``) + gradients and Adam state of the trainable
    parameters + activations of ``batch_tokens`` tokens (:func:`fedmoe.moe.memory.model_memory`).
    """
    config = fed.priced_config
    scale = fed.cfg.cost.tokens_scale
    flops = token_flops(config, seq_len=max(1, int(seq_len)), top_k=top_k, experts_per_layer=experts_per_layer,
                        adapter_active_params=adapter_active, trainable_active_params=trainable_active)
    memory = model_memory(config, experts_per_layer=experts_per_layer, bits=bits, trainable_params=trainable_params,
                          batch_tokens=batch_tokens)
    return ClientWork(
        train_flops=flops.train * tokens * scale,
        forward_flops=flops.forward * forward_tokens * scale,
        bytes_down=bytes_down,
        bytes_up=bytes_up,
        host_device_bytes=host_device_bytes,
        memory_bytes=memory.total,
    ).to_dict()

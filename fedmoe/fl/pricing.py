"""Cost-model inputs for a client's round: what it trained, priced on the trained or a paper-scale model.

Methods measure what a client did (tokens trained, which parameters trained) and call
:func:`training_work`, which prices it with :mod:`fedmoe.fl.cost` on ``fed.priced_config`` — the
trained model in ``trained`` mode, a paper-scale architecture in ``projection`` mode (so the same
run yields paper-scale seconds). Parameter counts a method passes must therefore be computed for
``fed.priced_config`` (helpers below do that for LoRA).

Gradient checkpointing (``cost.gradient_checkpointing``): only each decoder layer's input (H elements per
token) is kept through the forward pass, and the backward pass recomputes one layer at a time, so

    activations = batch_tokens * (L * H + A_layer + H + V) * 2 bytes   (A_layer: one layer's activations,
                  the mean over layers of :func:`fedmoe.moe.memory.activation_elements_per_token`'s per-layer
                  part; H + V: final norm and logits)
    train FLOPs += one forward pass per trained token (the recomputation)

instead of every layer's activations (:func:`activation_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.cost import ClientWork, token_flops
from fedmoe.moe.families import family_spec
from fedmoe.moe.memory import activation_elements_per_token, as_config, model_memory, moe_layer_mask

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


def activation_bytes(config, batch_tokens: int, checkpointing: bool = False) -> int:
    """Bytes of bf16 activations kept for the backward pass of ``batch_tokens`` tokens (module docstring)."""
    config = as_config(config)
    full = activation_elements_per_token(config)
    if not checkpointing:
        return batch_tokens * full * BF16_BYTES
    layers, h, v = int(config.num_hidden_layers), int(config.hidden_size), int(config.vocab_size)
    one_layer = (full - h - v) / layers
    return int(batch_tokens * (layers * h + one_layer + h + v) * BF16_BYTES)


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
    extra_memory_bytes: int = 0,
    host_memory_bytes: int = 0,
    host_memory_traffic: int = 0,
    device_memory_traffic: int = 0,
    compute_experts_per_layer: int | list[int] | None = None,
) -> dict[str, float]:
    """Price one client's round (see the module docstring); returns ``ClientWork`` as a dict.

    ``tokens`` are scaled by ``cost.tokens_scale`` (how many real tokens one simulated token stands
    for, 1 by default). Memory = weights (at ``bits``) + gradients and Adam state of the trainable
    parameters + activations of ``batch_tokens`` tokens (:func:`activation_bytes`; with
    ``cost.gradient_checkpointing`` also one recomputed forward pass per token) + ``extra_memory_bytes``
    (e.g. adapter weights). The host-side quantities pass through to ``ClientWork``.
    ``cost.base_bits`` (projection only) replaces ``bits``. ``experts_per_layer`` sizes the resident weights and, unless ``compute_experts_per_layer`` is given
    (offloaded experts still compute), the FLOPs.
    """
    config = fed.priced_config
    bits = fed.cfg.cost.base_bits or bits
    scale = fed.cfg.cost.tokens_scale
    checkpointing = fed.cfg.cost.gradient_checkpointing
    computing = experts_per_layer if compute_experts_per_layer is None else compute_experts_per_layer
    flops = token_flops(config, seq_len=max(1, int(seq_len)), top_k=top_k, experts_per_layer=computing,
                        adapter_active_params=adapter_active, trainable_active_params=trainable_active)
    memory = model_memory(config, experts_per_layer=experts_per_layer, bits=bits, trainable_params=trainable_params)
    per_token = flops.train + (flops.forward if checkpointing else 0.0)
    return ClientWork(
        train_flops=per_token * tokens * scale,
        forward_flops=flops.forward * forward_tokens * scale,
        bytes_down=bytes_down,
        bytes_up=bytes_up,
        host_device_bytes=host_device_bytes,
        memory_bytes=memory.total + activation_bytes(config, batch_tokens, checkpointing) + extra_memory_bytes,
        host_memory_bytes=host_memory_bytes,
        host_memory_traffic=host_memory_traffic,
        device_memory_traffic=device_memory_traffic,
    ).to_dict()

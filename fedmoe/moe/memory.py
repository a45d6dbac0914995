"""Analytic parameter and byte accounting of MoE models from their config alone (no instantiation).

Works for paper-scale configs (OLMoE-1B-7B, Mixtral-8x7B, DeepSeek-V2-Lite, ... given as config dicts)
as well as the tiny test models, for which it is exact: every tensor the transformers model creates is
listed by :func:`tensor_specs` with its shape, so counts equal ``sum(p.numel())`` and bytes equal the
real storage of kept, merged (compact) and quantized (:mod:`fedmoe.moe.quant`) models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import transformers

from fedmoe.moe.families import config_family, family_spec
from fedmoe.moe.quant import quantized_nbytes

PARTS = ("embeddings", "attention", "router", "experts", "shared_experts", "dense_mlp", "norms", "lm_head")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the model: its part, shape, kind (``experts`` fused tensor, ``linear`` weight of a
    decoder ``nn.Linear``, or ``plain``) and whether it is a parameter (else a persistent buffer)."""

    part: str
    shape: tuple[int, ...]
    kind: str = "plain"
    param: bool = True

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by part. ``expert``: one routed expert; ``experts``: all routed experts;
    ``active``: parameters used per token (everything except the routed experts, plus top_k routed
    experts in every MoE layer); ``experts_per_layer``: routed expert slots per MoE layer."""

    embeddings: int
    attention: int
    router: int
    expert: int
    experts: int
    shared_experts: int
    dense_mlp: int
    norms: int
    lm_head: int
    total: int
    active: int
    num_moe_layers: int
    experts_per_layer: tuple[int, ...]


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes needed on a device: weights, gradients, optimizer state, activations and their total."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    total: int


def as_config(config: transformers.PretrainedConfig | dict) -> transformers.PretrainedConfig:
    """A config object from a config or a config dict with ``model_type`` (missing fields take defaults)."""
    if isinstance(config, dict):
        fields = dict(config)
        return transformers.AutoConfig.for_model(
            config_family(fields), **{k: v for k, v in fields.items() if k != "model_type"}
        )
    config_family(config)
    return config


def moe_layer_mask(config: transformers.PretrainedConfig | dict) -> list[bool]:
    """For each decoder layer, whether it is a sparse MoE layer (False: dense MLP)."""
    config = as_config(config)
    family, n = config.model_type, config.num_hidden_layers
    if family == "qwen2_moe":
        only = set(config.mlp_only_layers or [])
        return [
            i not in only and config.num_experts > 0 and (i + 1) % config.decoder_sparse_step == 0
            for i in range(n)
        ]
    if family in ("deepseek_v2", "deepseek_v3"):
        return [i >= (config.first_k_dense_replace or 0) for i in range(n)]
    return [True] * n


def _linear(part: str, fan_in: int, fan_out: int, bias: bool = False) -> list[TensorSpec]:
    specs = [TensorSpec(part, (fan_out, fan_in), "linear")]
    return specs + [TensorSpec(part, (fan_out,))] if bias else specs


def _mlp(part: str, hidden: int, inter: int, bias: bool = False) -> list[TensorSpec]:
    return (
        _linear(part, hidden, inter, bias)
        + _linear(part, hidden, inter, bias)
        + _linear(part, inter, hidden, bias)
    )


def _attention(config) -> list[TensorSpec]:
    h, nh = config.hidden_size, config.num_attention_heads
    family = config.model_type
    if family in ("deepseek_v2", "deepseek_v3"):
        bias = bool(getattr(config, "attention_bias", False))
        qk = config.qk_nope_head_dim + config.qk_rope_head_dim
        if config.q_lora_rank is None:
            specs = _linear("attention", h, nh * qk)
        else:
            specs = (
                _linear("attention", h, config.q_lora_rank, bias)
                + [TensorSpec("attention", (config.q_lora_rank,))]
                + _linear("attention", config.q_lora_rank, nh * qk)
            )
        return specs + (
            _linear("attention", h, config.kv_lora_rank + config.qk_rope_head_dim, bias)
            + [TensorSpec("attention", (config.kv_lora_rank,))]
            + _linear("attention", config.kv_lora_rank, nh * (config.qk_nope_head_dim + config.v_head_dim))
            + _linear("attention", nh * config.v_head_dim, h, bias)
        )
    nkv = config.num_key_value_heads or nh
    hd = getattr(config, "head_dim", None) or h // nh
    qkv_bias = bool(
        getattr(config, "qkv_bias", False)
        if family == "qwen2_moe"
        else getattr(config, "attention_bias", False)
    )
    o_bias = family == "olmoe" and bool(getattr(config, "attention_bias", False))
    specs = (
        _linear("attention", h, nh * hd, qkv_bias)
        + _linear("attention", h, nkv * hd, qkv_bias)
        + _linear("attention", h, nkv * hd, qkv_bias)
        + _linear("attention", nh * hd, h, o_bias)
    )
    if family == "olmoe":
        specs += [TensorSpec("attention", (h,)), TensorSpec("attention", ((h // nh) * nkv,))]
    return specs


def tensor_specs(
    config: transformers.PretrainedConfig | dict, experts_per_layer: int | list[int] | None = None
) -> list[TensorSpec]:
    """Every parameter (and persistent buffer) of the causal LM that ``config`` describes.

    ``experts_per_layer``: routed-expert slots stored per MoE layer (int for all, or one per MoE layer),
    e.g. after merging; default the config's expert count. The router keeps the config's E rows
    (after ``keep_experts`` the config itself holds the kept count).
    """
    config = as_config(config)
    spec = family_spec(config.model_type)
    h, vocab = config.hidden_size, config.vocab_size
    num = getattr(config, spec.experts_key)
    inter = getattr(config, spec.expert_intermediate_key)
    mask = moe_layer_mask(config)
    slots = _experts_per_layer(experts_per_layer, num, sum(mask))
    specs = [TensorSpec("embeddings", (vocab, h))]
    moe_i = 0
    for is_moe in mask:
        specs += _attention(config) + [TensorSpec("norms", (h,)), TensorSpec("norms", (h,))]
        if not is_moe:
            specs += _mlp("dense_mlp", h, config.intermediate_size, bool(getattr(config, "mlp_bias", False)))
            continue
        s = slots[moe_i]
        moe_i += 1
        specs += [
            TensorSpec("router", (num, h)),
            TensorSpec("experts", (s, 2 * inter, h), "experts"),
            TensorSpec("experts", (s, h, inter), "experts"),
        ]
        if config.model_type == "qwen2_moe":
            specs += _mlp("shared_experts", h, config.shared_expert_intermediate_size)
            specs += _linear("shared_experts", h, 1)
        elif config.model_type in ("deepseek_v2", "deepseek_v3"):
            specs += _mlp(
                "shared_experts",
                h,
                inter * config.n_shared_experts,
                bool(getattr(config, "mlp_bias", False)) and config.model_type == "deepseek_v2",
            )
        if config.model_type == "deepseek_v3":
            specs.append(TensorSpec("router", (num,), param=False))  # e_score_correction_bias buffer
    specs.append(TensorSpec("norms", (h,)))
    if not getattr(config, "tie_word_embeddings", False):
        specs.append(TensorSpec("lm_head", (vocab, h)))
    return specs


def _experts_per_layer(value: int | list[int] | None, default: int, num_moe: int) -> list[int]:
    if value is None:
        return [default] * num_moe
    if isinstance(value, int):
        return [value] * num_moe
    value = [int(v) for v in value]
    if len(value) != num_moe:
        raise ValueError(
            f"experts_per_layer has {len(value)} entries but the config has {num_moe} MoE layers."
        )
    return value


def param_counts(
    config: transformers.PretrainedConfig | dict, experts_per_layer: int | list[int] | None = None
) -> ParamCounts:
    """Parameter counts by part of the model ``config`` describes (see :class:`ParamCounts`)."""
    config = as_config(config)
    specs = [s for s in tensor_specs(config, experts_per_layer) if s.param]
    by_part = {part: sum(s.numel for s in specs if s.part == part) for part in PARTS}
    experts = [s for s in specs if s.kind == "experts"]
    slots = tuple(s.shape[0] for s in experts[::2])
    expert = sum(math.prod(s.shape[1:]) for s in experts[:2])  # per slot, also with 0 slots
    total = sum(by_part.values())
    top_k = min(config.num_experts_per_tok, min(slots, default=0))
    return ParamCounts(
        **by_part,
        expert=expert,
        total=total,
        active=total - by_part["experts"] + top_k * expert * len(slots),
        num_moe_layers=len(slots),
        experts_per_layer=slots,
    )


def _resolve_bits(bits: int | dict[str, int]) -> dict[str, int]:
    allowed = {4, 8, 16, 32}
    if isinstance(bits, int):
        resolved = {"experts": bits, "linears": bits, "other": bits if bits >= 16 else 16}
    else:
        unknown = set(bits) - {"experts", "linears", "other"}
        if unknown:
            raise ValueError(f"Unknown bits keys {sorted(unknown)}; use 'experts', 'linears' and 'other'.")
        other = bits.get("other", 16)
        resolved = {
            "experts": bits.get("experts", other),
            "linears": bits.get("linears", other),
            "other": other,
        }
    if not set(resolved.values()) <= allowed or resolved["other"] < 16:
        raise ValueError(
            f"bits {bits} not supported: experts/linears take 4, 8, 16 or 32; other takes 16 or 32."
        )
    return resolved


def _tensor_bytes(spec: TensorSpec, bits: dict[str, int]) -> int:
    b = (
        bits["experts"]
        if spec.kind == "experts"
        else bits["linears"]
        if spec.kind == "linear"
        else bits["other"]
    )
    if b >= 16:
        return spec.numel * b // 8
    return quantized_nbytes(
        spec.shape, "nf4" if b == 4 else "int8", "experts" if spec.kind == "experts" else "linear"
    )


def weight_bytes(
    config: transformers.PretrainedConfig | dict,
    *,
    experts_per_layer: int | list[int] | None = None,
    bits: int | dict[str, int] = 16,
) -> int:
    """Bytes of the model's weights (parameters and persistent buffers).

    ``bits``: one width for all, or {"experts": .., "linears": .., "other": ..} (``linears`` and
    ``experts`` default to ``other``, which defaults to 16). 16/32 are dtype sizes; 4 and 8 are the
    bitsandbytes storage of :mod:`fedmoe.moe.quant` (data + absmax) for expert tensors and decoder
    linear weights; other tensors (embeddings, norms, biases, routers) stay at ``other``.
    """
    resolved = _resolve_bits(bits)
    return sum(_tensor_bytes(s, resolved) for s in tensor_specs(config, experts_per_layer))


def activation_elements_per_token(
    config: transformers.PretrainedConfig | dict, experts_per_layer: int | list[int] | None = None
) -> int:
    """Activations kept for the backward pass per token (elements), an estimate:

    per decoder layer 8*H for attention (block input, norm output, q, k, v, attention output, o-proj
    output, residual; score matrices are recomputed by SDPA/flash kernels), plus for an MoE layer the
    router logits E + top_k * (3*I + H) (gate/up output, activation, weighted expert output) + 3*I_s
    for shared experts, or 3*I_dense for a dense layer; plus H + V at the head (final norm, logits).
    """
    config = as_config(config)
    spec = family_spec(config.model_type)
    h, inter = config.hidden_size, getattr(config, spec.expert_intermediate_key)
    counts = param_counts(config, experts_per_layer)
    shared = counts.shared_experts // max(counts.num_moe_layers, 1) // h  # ~3 * I_s
    total = 0
    for is_moe in moe_layer_mask(config):
        total += 8 * h
        if is_moe:
            total += getattr(config, spec.experts_key) + config.num_experts_per_tok * (3 * inter + h) + shared
        else:
            total += 3 * config.intermediate_size
    return total + h + config.vocab_size


def model_memory(
    config: transformers.PretrainedConfig | dict,
    *,
    experts_per_layer: int | list[int] | None = None,
    bits: int | dict[str, int] = 16,
    trainable_params: int = 0,
    grad_bytes_per_param: int = 2,
    optimizer_bytes_per_param: int = 8,
    batch_tokens: int = 0,
    activation_bytes: int = 2,
) -> MemoryBreakdown:
    """Device memory for holding (and training part of) the model ``config`` describes.

    weights = :func:`weight_bytes`; grads = trainable_params * grad_bytes_per_param; optimizer =
    trainable_params * optimizer_bytes_per_param (8: Adam's two fp32 moments); activations =
    batch_tokens * :func:`activation_elements_per_token` * activation_bytes (0 for batch_tokens=0).
    """
    if min(trainable_params, batch_tokens, grad_bytes_per_param, optimizer_bytes_per_param) < 0:
        raise ValueError("trainable_params, batch_tokens and the bytes per param must be >= 0.")
    weights = weight_bytes(config, experts_per_layer=experts_per_layer, bits=bits)
    grads = trainable_params * grad_bytes_per_param
    optimizer = trainable_params * optimizer_bytes_per_param
    activations = batch_tokens * activation_elements_per_token(config, experts_per_layer) * activation_bytes
    return MemoryBreakdown(weights, grads, optimizer, activations, weights + grads + optimizer + activations)

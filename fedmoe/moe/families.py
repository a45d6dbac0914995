"""The MoE model families fedmoe supports, their config vocabulary, and tiny random configs for each.

transformers v5 gives every supported family the same fused layout (``mlp.gate`` router with ``weight``
[E, H], ``mlp.experts.gate_up_proj`` [E, 2I, H], ``mlp.experts.down_proj`` [E, H, I]); what differs is the
name of a few config fields and how the router scores experts. :class:`FamilySpec` records exactly
those differences so that the rest of :mod:`fedmoe.moe` stays family-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import transformers

SUPPORTED_FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "deepseek_v2", "deepseek_v3")

# Fast on CPU (docs/design.md: `batched_mm` is ~50x slower on CPU; `grouped_mm` and `eager` are fine).
CPU_EXPERTS_IMPLEMENTATION = "grouped_mm"


@dataclass(frozen=True)
class FamilySpec:
    """Config vocabulary of one MoE family.

    ``experts_key``: config field holding the routed-expert count; ``expert_intermediate_key``: config
    field of one expert's intermediate width; ``router_score``: how router logits become expert
    scores (``"softmax"`` or ``"sigmoid"``); ``shared_key``: config field sizing the shared expert(s)
    (``None`` when the family has none); ``dense_key``: config field selecting dense (non-MoE) layers.
    """

    model_type: str
    experts_key: str
    expert_intermediate_key: str
    router_score: str
    shared_key: str | None = None
    dense_key: str | None = None


FAMILIES: dict[str, FamilySpec] = {
    "mixtral": FamilySpec("mixtral", "num_local_experts", "intermediate_size", "softmax"),
    "qwen2_moe": FamilySpec(
        "qwen2_moe",
        "num_experts",
        "moe_intermediate_size",
        "softmax",
        shared_key="shared_expert_intermediate_size",
        dense_key="mlp_only_layers",
    ),
    "olmoe": FamilySpec("olmoe", "num_experts", "intermediate_size", "softmax"),
    "deepseek_v2": FamilySpec(
        "deepseek_v2",
        "n_routed_experts",
        "moe_intermediate_size",
        "softmax",
        shared_key="n_shared_experts",
        dense_key="first_k_dense_replace",
    ),
    "deepseek_v3": FamilySpec(
        "deepseek_v3",
        "n_routed_experts",
        "moe_intermediate_size",
        "sigmoid",
        shared_key="n_shared_experts",
        dense_key="first_k_dense_replace",
    ),
}


def family_spec(family: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``family`` (a ``model_type``); a clear error for unsupported families."""
    if family not in FAMILIES:
        raise ValueError(
            f"Unsupported MoE family {family!r}. fedmoe supports model_type in {SUPPORTED_FAMILIES}; "
            "load a model of one of these families (or add a FamilySpec to fedmoe/moe/families.py)."
        )
    return FAMILIES[family]


def config_family(config: transformers.PretrainedConfig | dict) -> str:
    """The supported family of a config object or config dict (by ``model_type``), else a clear error."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    family_spec(str(model_type))
    return str(model_type)


def tiny_config(
    family: str,
    *,
    vocab_size: int = 256,
    hidden_size: int = 64,
    intermediate_size: int = 32,
    num_layers: int = 2,
    num_experts: int = 8,
    top_k: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    **overrides,
) -> transformers.PretrainedConfig:
    """A small random-init config of ``family`` whose forward pass takes milliseconds on CPU.

    ``intermediate_size`` is the width of one routed expert. Family extras are exercised on purpose:
    Qwen2-MoE gets a shared expert (width ``intermediate_size``); DeepSeek-V2/V3 get a dense first
    layer (width ``2 * intermediate_size``; only when ``num_layers > 1``) and shared experts (2 for V2,
    1 for V3, as in the released models) plus small multi-head latent attention. DeepSeek-V3 uses one
    expert group so any expert count routes. The experts implementation is the CPU-fast one.
    ``overrides`` are config fields set last (e.g. ``output_router_logits=True``).
    """
    spec = family_spec(family)
    if top_k > num_experts:
        raise ValueError(f"top_k={top_k} exceeds num_experts={num_experts}; choose top_k <= num_experts.")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}.")
    fields: dict = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        num_experts_per_tok=top_k,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        experts_implementation=CPU_EXPERTS_IMPLEMENTATION,
    )
    fields[spec.experts_key] = num_experts
    fields[spec.expert_intermediate_key] = intermediate_size
    if family == "mixtral":
        fields["num_key_value_heads"] = max(1, num_heads // 2)  # exercise grouped-query attention
    elif family == "qwen2_moe":
        fields.update(
            intermediate_size=intermediate_size,
            shared_expert_intermediate_size=intermediate_size,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=False,
            use_sliding_window=False,
        )
    elif family in ("deepseek_v2", "deepseek_v3"):
        head = max(8, hidden_size // num_heads)
        fields.update(
            intermediate_size=2 * intermediate_size,
            first_k_dense_replace=1 if num_layers > 1 else 0,
            n_shared_experts=2 if family == "deepseek_v2" else 1,
            kv_lora_rank=head,
            q_lora_rank=None if family == "deepseek_v2" else 2 * head,
            qk_nope_head_dim=head,
            qk_rope_head_dim=head // 2,
            v_head_dim=head,
            n_group=1,
            topk_group=1,
        )
        if family == "deepseek_v2":
            fields.update(topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0)
        else:
            fields.update(norm_topk_prob=True, routed_scaling_factor=2.5, rope_interleave=True)
    fields.update(overrides)
    return transformers.AutoConfig.for_model(family, **fields)

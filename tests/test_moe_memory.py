"""fedmoe.moe.memory: analytic parameter counts and bytes, checked against instantiated models."""

import pytest

from fedmoe.moe import (
    SUPPORTED_FAMILIES,
    keep_experts,
    merge_experts,
    model_memory,
    moe_layers,
    param_counts,
    quantize_model,
    tiny_config,
)
from fedmoe.moe.memory import activation_elements_per_token

OLMOE_1B_7B = dict(
    model_type="olmoe",
    vocab_size=50304,
    hidden_size=2048,
    intermediate_size=1024,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    num_experts=64,
    num_experts_per_tok=8,
)
MIXTRAL_8X7B = dict(
    model_type="mixtral",
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_local_experts=8,
    num_experts_per_tok=2,
)
DEEPSEEK_V2_LITE = dict(
    model_type="deepseek_v2",
    vocab_size=102400,
    hidden_size=2048,
    intermediate_size=10944,
    moe_intermediate_size=1408,
    num_hidden_layers=27,
    num_attention_heads=16,
    num_key_value_heads=16,
    n_routed_experts=64,
    n_shared_experts=2,
    num_experts_per_tok=6,
    first_k_dense_replace=1,
    kv_lora_rank=512,
    q_lora_rank=None,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
)


def _stored_bytes(model):
    """Real storage: parameters plus persistent buffers."""
    buffers = sum(
        b.nbytes
        for m in model.modules()
        for n, b in m.named_buffers(recurse=False)
        if n not in m._non_persistent_buffers_set
    )
    return sum(p.nbytes for p in model.parameters()) + buffers


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("num_layers", [2, 3])
def test_param_counts_match_instantiated_model(tiny_moe, family, num_layers):
    model = tiny_moe(family, num_layers=num_layers)
    counts = param_counts(model.config)
    assert counts.total == sum(p.numel() for p in model.parameters())
    layers = moe_layers(model)
    assert counts.experts == sum(m.gate_up_proj.numel() + m.down_proj.numel() for m in layers)
    assert counts.router == sum(m.router_weight.numel() for m in layers)
    assert counts.expert == 3 * 64 * 32 and counts.experts_per_layer == (8,) * len(layers)
    assert counts.embeddings == counts.lm_head == 256 * 64
    assert counts.active == counts.total - counts.experts + 2 * counts.expert * len(layers)
    assert model_memory(model.config, bits=32).weights == _stored_bytes(model)


def test_paper_scale_configs_without_instantiation():
    olmoe, mixtral, lite = (param_counts(c) for c in (OLMOE_1B_7B, MIXTRAL_8X7B, DEEPSEEK_V2_LITE))
    assert olmoe.total / 1e9 == pytest.approx(6.92, abs=0.01) and olmoe.active / 1e9 == pytest.approx(
        1.28, abs=0.01
    )
    assert mixtral.total / 1e9 == pytest.approx(46.7, abs=0.05) and mixtral.active / 1e9 == pytest.approx(
        12.9, abs=0.05
    )
    assert lite.total / 1e9 == pytest.approx(15.7, abs=0.05)
    assert (lite.active - lite.embeddings) / 1e9 == pytest.approx(
        2.4, abs=0.1
    )  # DeepSeek excludes embeddings
    assert lite.num_moe_layers == 26 and lite.dense_mlp == 3 * 2048 * 10944
    bf16 = model_memory(MIXTRAL_8X7B).weights
    assert bf16 == pytest.approx(2 * mixtral.total, rel=1e-6)
    nf4 = model_memory(MIXTRAL_8X7B, bits={"experts": 4}).weights
    assert nf4 == pytest.approx(2 * (mixtral.total - mixtral.experts) + mixtral.experts * 4.5 / 8, rel=1e-6)
    with pytest.raises(ValueError, match="Unsupported MoE family 'llama'"):
        param_counts({"model_type": "llama"})


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_kept_merged_quantized_bytes_match_real_models(tiny_moe, family):
    kept = keep_experts(tiny_moe(family), [0, 3, 4, 6])
    assert model_memory(kept.config, bits=32).weights == _stored_bytes(kept)
    assert param_counts(kept.config).total == sum(p.numel() for p in kept.parameters())

    merged = tiny_moe(family, num_layers=3)
    groups = [[[0, 1, 2], [3], [4, 5], [6, 7]], [[e] for e in range(8)]]
    merge_experts(merged, groups + [None] * (len(moe_layers(merged)) - 2))
    slots = [m.num_experts for m in moe_layers(merged)]
    assert slots[:2] == [4, 8]
    assert model_memory(merged.config, experts_per_layer=slots, bits=32).weights == _stored_bytes(merged)

    model = tiny_moe(family)
    for scheme, bits in (("nf4", 4), ("int8", 8)):
        report = quantize_model(model, scheme)
        analytic = model_memory(model.config, bits={"experts": bits, "linears": bits, "other": 32}).weights
        assert analytic == report.model_bytes
    experts_only = quantize_model(model, "nf4", linears=False)
    assert model_memory(model.config, bits={"experts": 4, "other": 32}).weights == experts_only.model_bytes
    assert (
        experts_only.model_bytes
        == _stored_bytes(model) - experts_only.bytes_before + experts_only.bytes_after
    )


def test_training_memory_formula():
    config = tiny_config("mixtral")
    # per layer 8*H + E + top_k*(3*I + H) = 512 + 8 + 2*160; two layers; head H + V
    assert activation_elements_per_token(config) == 2 * (512 + 8 + 320) + 64 + 256
    mem = model_memory(config, bits=16, trainable_params=1000, batch_tokens=10)
    assert mem.grads == 2000 and mem.optimizer == 8000 and mem.activations == 10 * 2000 * 2
    assert mem.weights == 2 * param_counts(config).total
    assert mem.total == mem.weights + mem.grads + mem.optimizer + mem.activations
    with pytest.raises(ValueError, match="other takes 16 or 32"):
        model_memory(config, bits={"other": 4})
    with pytest.raises(ValueError, match="Unknown bits keys"):
        model_memory(config, bits={"expert": 4})
    with pytest.raises(ValueError, match="2 MoE layers"):
        model_memory(config, experts_per_layer=[4, 4, 4])
    with pytest.raises(ValueError, match=">= 0"):
        model_memory(config, trainable_params=-1)


def test_param_counts_with_no_expert_slots_keeps_the_per_expert_size():
    from fedmoe.moe.families import tiny_config

    cfg = tiny_config("mixtral")
    none, full = param_counts(cfg, experts_per_layer=0), param_counts(cfg)
    assert none.expert == full.expert == 3 * cfg.hidden_size * cfg.intermediate_size
    assert full.total - none.total == full.experts

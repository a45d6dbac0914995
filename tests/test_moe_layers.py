"""fedmoe.moe.families / layers: tiny configs, the uniform MoE-layer view, top-k."""

import pytest
import torch
import transformers

from fedmoe.moe import SUPPORTED_FAMILIES, add_expert_lora, family_of, moe_layers, set_top_k, tiny_config
from fedmoe.moe.layers import decoder_of

X = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_tiny_model_layout(tiny_moe, family):
    model = tiny_moe(family, num_layers=3)
    layers = moe_layers(model)
    dense_first = family.startswith("deepseek")
    assert [layer.layer_idx for layer in layers] == ([1, 2] if dense_first else [0, 1, 2])
    assert [layer.index for layer in layers] == list(range(len(layers)))
    for layer in layers:
        assert (layer.num_experts, layer.num_router_experts, layer.top_k) == (8, 8, 2)
        assert layer.gate_up_proj.shape == (8, 64, 64) and layer.down_proj.shape == (8, 64, 32)
        assert layer.router_weight.shape == (8, 64)
        assert torch.equal(layer.expert_map, torch.arange(8))
    assert family_of(model) == family
    assert model(X).logits.shape == (2, 10, 256)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_views_and_wrappers(tiny_moe, family):
    model = tiny_moe(family)
    layer = moe_layers(model)[-1]
    w = layer.expert_weights(3)
    assert torch.equal(w["gate_up_proj"], layer.gate_up_proj[3]) and torch.equal(
        w["down_proj"], layer.down_proj[3]
    )
    with torch.no_grad():
        w["down_proj"].zero_()  # a view: writes through to the fused tensor
    assert layer.down_proj[3].abs().sum() == 0 and layer.down_proj[2].abs().sum() > 0
    with pytest.raises(IndexError, match="out of range"):
        layer.expert_weights(8)
    # same modules through the bare decoder and through a peft wrapper
    assert [m.experts for m in moe_layers(decoder_of(model))] == [m.experts for m in moe_layers(model)]
    peft_model = add_expert_lora(model, r=2, alpha=4)
    wrapped = moe_layers(peft_model)
    assert [m.experts for m in wrapped] == [m.experts for m in moe_layers(model)]
    assert family_of(peft_model) == family


def test_unsupported_family_is_a_clear_error():
    with pytest.raises(ValueError, match="supports model_type in"):
        tiny_config("llama")
    llama = transformers.AutoModelForCausalLM.from_config(
        transformers.LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
        )
    )
    with pytest.raises(ValueError, match="Unsupported MoE family 'llama'"):
        moe_layers(llama)
    with pytest.raises(ValueError, match="top_k=9 exceeds"):
        tiny_config("mixtral", top_k=9)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_set_top_k(tiny_moe, family):
    model = tiny_moe(family)
    before = model(X).logits
    set_top_k(model, 3)
    assert model.config.num_experts_per_tok == 3
    assert all(layer.top_k == 3 for layer in moe_layers(model))
    chosen = []
    handle = moe_layers(model)[0].gate.register_forward_hook(lambda m, a, out: chosen.append(out[2]))
    after = model(X).logits
    handle.remove()
    assert chosen[0].shape == (20, 3)  # every token now picks 3 experts
    assert not torch.allclose(before, after)
    for bad in (0, 9):
        with pytest.raises(ValueError, match=f"top_k={bad} is impossible"):
            set_top_k(model, bad)

"""fedmoe.moe.lora: per-expert LoRA on fused experts, one expert's adapter at a time."""

import pytest
import torch

from fedmoe.moe import (
    SUPPORTED_FAMILIES,
    add_expert_lora,
    expert_lora_delta,
    get_expert_lora,
    load_lora_state_dict,
    lora_state_dict,
    moe_layers,
    record_routing,
    set_expert_lora,
)

X = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(4))
H, INTER, E, R = 64, 32, 8, 2


def _random_lora(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "gate_up_proj.lora_A": torch.randn(R, H, generator=g),
        "gate_up_proj.lora_B": torch.randn(2 * INTER, R, generator=g),
        "down_proj.lora_A": torch.randn(R, INTER, generator=g),
        "down_proj.lora_B": torch.randn(H, R, generator=g),
    }


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_expert_lora_slicing_matches_effective_weight(tiny_moe, family):
    model = tiny_moe(family, num_layers=3)
    base = [(m.gate_up_proj.detach().clone(), m.down_proj.detach().clone()) for m in moe_layers(model)]
    plain = model(X).logits
    peft_model = add_expert_lora(model, r=R, alpha=6)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    per_layer = E * R * (H + 2 * INTER) + E * R * (INTER + H)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == per_layer * len(base)
    before = peft_model(X).logits
    assert torch.allclose(before, plain, atol=1e-6)  # B starts at zero: LoRA is a no-op
    lora = _random_lora(0)
    set_expert_lora(peft_model, 1, 5, lora)
    got = get_expert_lora(peft_model, 1, 5)
    assert got.keys() == lora.keys() and all(torch.equal(got[k], lora[k]) for k in lora)
    for layer, e in [(1, 4), (1, 6), (0, 5)]:  # every other expert's B is still zero
        others = get_expert_lora(peft_model, layer, e)
        assert others["gate_up_proj.lora_B"].abs().sum() == 0 and others["down_proj.lora_B"].abs().sum() == 0
    scale = 6 / R
    delta = expert_lora_delta(peft_model, 1, 5)
    assert torch.allclose(
        delta["gate_up_proj"], scale * lora["gate_up_proj.lora_B"] @ lora["gate_up_proj.lora_A"]
    )
    assert not torch.equal(peft_model(X).logits, before)
    # peft's own merge: only expert 5 of MoE layer 1 changes, by W + scale * B_e A_e
    merged = peft_model.merge_and_unload()
    for layer, (gu, dp) in zip(moe_layers(merged), base, strict=True):
        for e in range(E):
            target = layer.index == 1 and e == 5
            want_gu = (
                gu[e] + scale * lora["gate_up_proj.lora_B"] @ lora["gate_up_proj.lora_A"] if target else gu[e]
            )
            want_dp = dp[e] + scale * lora["down_proj.lora_B"] @ lora["down_proj.lora_A"] if target else dp[e]
            assert torch.allclose(layer.gate_up_proj[e], want_gu, atol=1e-5)
            assert torch.allclose(layer.down_proj[e], want_dp, atol=1e-5)


def test_lora_state_dict_round_trip_and_errors(tiny_moe):
    source = add_expert_lora(tiny_moe("mixtral"), r=R, alpha=4)
    for e in range(E):
        set_expert_lora(source, 0, e, _random_lora(e))
    state = lora_state_dict(source)
    target = add_expert_lora(tiny_moe("mixtral"), r=R, alpha=4)
    load_lora_state_dict(target, state)
    assert torch.equal(target(X).logits, source(X).logits)
    with record_routing(target) as rec:  # routing works through the peft wrapper
        target(X)
    assert rec.counts.sum() == 2 * 20 * 2
    with pytest.raises(KeyError, match="exactly the keys"):
        set_expert_lora(target, 0, 1, {"gate_up_proj.lora_A": torch.zeros(R, H)})
    with pytest.raises(IndexError, match="Expert 8 out of range"):
        get_expert_lora(target, 0, 8)
    with pytest.raises(ValueError, match="no expert LoRA"):
        get_expert_lora(tiny_moe("mixtral"), 0, 0)
    with pytest.raises(ValueError, match="lora_dropout must be 0"):
        add_expert_lora(tiny_moe("mixtral"), r=R, lora_dropout=0.1)

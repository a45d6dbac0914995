"""fedmoe.moe.surgery: keep, merge (with save/reload), freeze under AdamW weight decay."""

import copy

import pytest
import torch
import transformers

from fedmoe.moe import (
    SUPPORTED_FAMILIES,
    add_expert_lora,
    compact,
    expand,
    family_spec,
    freeze_experts,
    keep_experts,
    merge_experts,
    moe_layers,
    record_routing,
    save_pretrained,
)
from fedmoe.moe.lora import expert_lora_wrappers

X = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_keep_experts_slices_and_round_trips(tiny_moe, family, tmp_path):
    model = tiny_moe(family, num_layers=3)
    old = [
        (m.gate_up_proj.detach().clone(), m.down_proj.detach().clone(), m.router_weight.detach().clone())
        for m in moe_layers(model)
    ]
    keep_experts(model, [[6, 1, 3], [0, 4, 7]] + ([[2, 3, 5]] if len(old) == 3 else []))
    for layer, (gu, dp, rw), kept in zip(
        moe_layers(model), old, model.config.fedmoe_kept_experts, strict=True
    ):
        assert kept == sorted(kept)
        assert torch.equal(layer.gate_up_proj, gu[kept]) and torch.equal(layer.down_proj, dp[kept])
        assert torch.equal(layer.router_weight, rw[kept])
        assert layer.num_experts == layer.gate.num_experts == layer.experts.num_experts == 3
    assert getattr(model.config, family_spec(family).experts_key) == 3
    assert getattr(model, "num_experts", 3) == 3  # the causal LM's aux-loss attribute, where it has one
    logits = model(X).logits
    with record_routing(model) as rec:
        model(X)
    assert rec.counts.shape[1] == 3 and rec.counts.sum() == 2 * rec.tokens.sum()
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(X).logits, logits)
    # keeping again composes the record of original indices; top_k is clipped to the expert count
    if family == "deepseek_v3":
        with pytest.raises(ValueError, match="at least 2 experts per group"):
            keep_experts(reloaded, [2])
        return
    keep_experts(reloaded, [2])
    assert reloaded.config.fedmoe_kept_experts[0] == [model.config.fedmoe_kept_experts[0][2]]
    assert reloaded.config.num_experts_per_tok == 1 and moe_layers(reloaded)[0].top_k == 1
    reloaded(X)


def test_keep_experts_rejects_bad_input(tiny_moe):
    model = tiny_moe("mixtral")
    with pytest.raises(ValueError, match="same number per layer"):
        keep_experts(model, [[0, 1], [0, 1, 2]])
    with pytest.raises(ValueError, match="distinct indices in 0..7"):
        keep_experts(model, [0, 8])
    with pytest.raises(ValueError, match="2 MoE layers"):
        keep_experts(model, [[0], [1], [2]])
    with pytest.raises(ValueError, match="peft-wrapped"):
        keep_experts(add_expert_lora(model, r=2), [0, 1])


def test_keep_respects_deepseek_expert_groups(tiny_moe):
    model = tiny_moe("deepseek_v3", n_group=2, topk_group=1)
    with pytest.raises(ValueError, match="per group"):
        keep_experts(model, [0, 1, 2, 4])  # 3 from group 0, 1 from group 1
    keep_experts(model, [0, 1, 4, 5])
    assert moe_layers(model)[0].gate.e_score_correction_bias.shape == (4,)
    model(X)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_merge_experts_formula_equivalence_and_reload(tiny_moe, family, tmp_path):
    model = tiny_moe(family, num_layers=3)
    layers = moe_layers(model)
    gu = layers[0].gate_up_proj.detach().clone()
    dp = layers[0].down_proj.detach().clone()
    alpha = torch.tensor([1.0, 2.0, 0.5, 4.0, 5.0, 6.0, 1.0, 3.0])
    groups = [[[7], [3, 4, 5], [0, 1], [2], [6]]] + [None] * (len(layers) - 1)
    merge_experts(model, groups, weights=[alpha] + [None] * (len(layers) - 1))
    layer = moe_layers(model)[0]
    # slots ordered by smallest member: [0,1], [2], [3,4,5], [6], [7]
    assert model.config.fedmoe_expert_map[0] == [0, 0, 1, 2, 2, 2, 3, 4]
    assert layer.num_experts == 5 and layer.num_router_experts == 8
    by_hand = (4 * gu[3] + 5 * gu[4] + 6 * gu[5]) / 15
    assert torch.allclose(layer.gate_up_proj[2], by_hand, atol=1e-7)
    assert torch.allclose(layer.down_proj[0], (1 * dp[0] + 2 * dp[1]) / 3, atol=1e-7)
    assert torch.equal(layer.gate_up_proj[4], gu[7]) and torch.equal(layer.down_proj[1], dp[2])
    assert moe_layers(model)[1].num_experts == 8  # untouched layer
    merged = model(X).logits

    expanded = expand(copy.deepcopy(model))
    assert moe_layers(expanded)[0].num_experts == 8
    assert torch.allclose(expanded(X).logits, merged, atol=1e-5)
    assert torch.allclose(copy.deepcopy(model)(X).logits, merged, atol=1e-6)  # the re-map survives deepcopy

    save_pretrained(model, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert moe_layers(reloaded)[0].num_experts == 8
    assert torch.allclose(reloaded(X).logits, merged, atol=1e-5)
    compact(reloaded)
    assert moe_layers(reloaded)[0].num_experts == 5
    assert torch.allclose(reloaded(X).logits, merged, atol=1e-6)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_singleton_groups_leave_the_model_unchanged(tiny_moe, family):
    model = tiny_moe(family)
    before = model(X).logits
    layers = moe_layers(model)
    merge_experts(model, [[[e] for e in reversed(range(8))]] * len(layers))
    assert torch.equal(model(X).logits, before)


def test_merge_rejects_bad_input(tiny_moe):
    model = tiny_moe("olmoe")
    with pytest.raises(ValueError, match="partition 0..7"):
        merge_experts(model, [[[0, 1], [2]], None])
    with pytest.raises(ValueError, match="non-negative"):
        merge_experts(model, [[[0, 1]] + [[e] for e in range(2, 8)], None], weights=[[-1.0] * 8, None])
    merge_experts(
        model, {0: [[0, 1, 2, 3], [4, 5, 6, 7]]}, weights={0: [0.0] * 8}
    )  # zero weights: plain mean
    with pytest.raises(ValueError, match="already merged"):
        merge_experts(model, {0: [list(range(8))]})
    expanded = expand(model)
    with torch.no_grad():
        moe_layers(expanded)[0].down_proj[1] += 1  # members of one merged slot now differ
    with pytest.raises(ValueError, match="share merged slot"):
        compact(expanded)


def _train(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    return opt, lambda: [
        (model(input_ids=X, labels=X).loss.backward(), opt.step(), opt.zero_grad()) for _ in range(steps)
    ]


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_freeze_experts_bit_identical_under_adamw(tiny_moe, family):
    model = tiny_moe(family, num_layers=3).train()
    layers = moe_layers(model)
    frozen = {0: [1, 5, 6], 1: [0]}
    before = [(m.gate_up_proj.detach().clone(), m.down_proj.detach().clone()) for m in layers]
    opt, run = _train(model)
    with freeze_experts(model, frozen, optimizer=opt):
        run()
    for layer, (gu, dp) in zip(layers, before, strict=True):
        for e in range(8):
            same = torch.equal(layer.gate_up_proj[e], gu[e]) and torch.equal(layer.down_proj[e], dp[e])
            assert same == (e in frozen.get(layer.index, [])), (layer.index, e)
    # without the handle, AdamW's weight decay alone moves a slice whose gradient is zero
    opt.zero_grad()
    handle = freeze_experts(model, frozen)
    snapshot = layers[0].gate_up_proj.detach()[1].clone()
    run()
    assert not torch.equal(layers[0].gate_up_proj[1], snapshot)
    handle.restore()
    assert torch.equal(layers[0].gate_up_proj[1], snapshot)
    handle.remove()


def test_freeze_experts_on_expert_lora(tiny_moe):
    peft_model = add_expert_lora(tiny_moe("qwen2_moe"), r=2, alpha=4).train()
    wrappers = [expert_lora_wrappers(m) for m in moe_layers(peft_model)]
    a = {n: w.lora_A["default"].weight for n, w in wrappers[0].items()}
    b = {n: w.lora_B["default"].weight for n, w in wrappers[0].items()}
    before = {n: (a[n].detach().clone(), b[n].detach().clone()) for n in a}
    opt, run = _train(peft_model)
    with freeze_experts(peft_model, [[2], []], optimizer=opt):
        run()
    for n, (a0, b0) in before.items():
        assert torch.equal(a[n][4:6], a0[4:6]) and torch.equal(b[n][:, 2::8], b0[:, 2::8])  # expert 2, r=2
        assert not torch.equal(a[n][:4], a0[:4]) and not torch.equal(b[n][:, 3::8], b0[:, 3::8])

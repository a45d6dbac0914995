"""FLUX's pieces on tiny models: profiling, merging, the layer-adaptive budget property, memory budgets."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from fedmoe.fl.cost import ClientWork, check_fits
from fedmoe.fl.devices import get_device
from fedmoe.methods.experts.priced import priced_model
from fedmoe.methods.flux.budget import (
    TRAIN_STATE_BYTES,
    expert_work,
    flux_budget,
    fmes_kept,
    layer_merge_budget,
    offload_resident,
)
from fedmoe.methods.flux.merging import apply_merge, cluster_experts, output_error, plan_merge
from fedmoe.methods.flux.profiling import Profile, profile_model
from fedmoe.moe.layers import moe_layers
from fedmoe.moe.memory import model_memory

CONSUMER = ("rtx-3060-12gb", "rtx-3090-24gb", "jetson-orin-nx-16gb")


def _batches(vocab=256, n=4, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (4, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[0, seq - 3:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_profile_counts_frequencies_and_attention(tiny_moe):
    model = tiny_moe("mixtral", num_experts=4, top_k=2)
    before = model.config._attn_implementation
    prof = profile_model(model, _batches())
    valid = sum(int(b["attention_mask"].sum()) for b in _batches())
    assert prof.n_tokens == valid
    assert prof.tokens.sum(1).tolist() == [2 * valid] * prof.tokens.shape[0]  # top-2 of every valid token
    assert torch.allclose(prof.freq.sum(1), torch.full((prof.freq.shape[0],), 2.0, dtype=prof.freq.dtype))
    used = prof.tokens > 0
    assert bool((prof.attention[used] > 0).all()) and bool((prof.attention <= 1).all())
    assert model.config._attn_implementation == before  # eager attention only while profiling


def test_merge_keeps_tuning_experts_and_weights_groups_by_alpha(tiny_moe):
    model = tiny_moe("mixtral", num_experts=4, top_k=2, num_layers=2)
    original = copy.deepcopy(model)
    freq = torch.tensor([[0.8, 0.6, 0.4, 0.2], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    attn = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.2, 0.2]], dtype=torch.float64)
    prof = Profile(freq, torch.zeros(2, 4, dtype=torch.long), attn, 10)
    plan = plan_merge(model, [[1], []], [1, 4], prof)  # layer 0: expert 1 tunes, 0/2/3 -> one slot
    assert plan.groups == [[[0, 2, 3], [1]], [[0], [1], [2], [3]]]
    apply_merge(model, plan)
    layer0, ref0 = moe_layers(model)[0], moe_layers(original)[0]
    alpha = {0: 0.8 * 0.1, 2: 0.4 * 0.3, 3: 0.2 * 0.4}
    total = sum(alpha.values())
    expected = sum(alpha[e] / total * ref0.gate_up_proj[e] for e in alpha)
    slot = int(layer0.expert_map[0])
    assert torch.allclose(layer0.gate_up_proj[slot], expected, atol=1e-6)
    assert torch.equal(layer0.gate_up_proj[int(layer0.expert_map[1])], ref0.gate_up_proj[1])
    assert layer0.num_experts == 2 and moe_layers(model)[1].num_experts == 4
    dropped = copy.deepcopy(original)
    plan = plan_merge(dropped, [[1], []], [2, 4], prof, drop=True)  # keep most frequent (0), drop 2, 3
    apply_merge(dropped, plan)
    layer = moe_layers(dropped)[0]
    assert plan.dropped[0] == [2, 3] and float(layer.down_proj.detach()[int(layer.expert_map[2])].abs().sum()) == 0.0
    assert torch.equal(layer.down_proj[int(layer.expert_map[0])], ref0.down_proj[0])


def test_cluster_experts_groups_nearby_weights():
    flat = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0], [-9.0, 5.0]]).numpy()
    assert cluster_experts(flat, 3, pca_dim=2) == [[0, 1], [2, 3], [4]]
    assert cluster_experts(flat, 1) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError):
        cluster_experts(flat, 6)


def _merged_error(model, batches, prof, total, mode):
    merged = copy.deepcopy(model)
    num = len(moe_layers(model))
    budget = layer_merge_budget(prof.freq, [8] * num, total, mode)
    apply_merge(merged, plan_merge(merged, [[] for _ in range(num)], budget, prof))
    return output_error(model, merged.eval(), batches), budget


def test_layer_adaptive_budget_beats_uniform_and_one_per_layer(tiny_moe):
    """The direction of b_l: on a model whose shallow layers matter more (expert outputs scaled 1, 1/2, 1/4
    with depth) and whose layers route similarly flat, giving shallow layers more merged slots lowers
    the output error for the same B_non."""
    model = tiny_moe("mixtral", num_experts=8, top_k=2, num_layers=3, hidden_size=32, intermediate_size=32)
    with torch.no_grad():
        for layer, scale in zip(moe_layers(model), (1.0, 0.5, 0.25), strict=True):
            layer.down_proj.mul_(4.0 * scale)
    batches = _batches(n=3, seq=16)
    prof = profile_model(model, batches)
    errors = {}
    for mode in ("layer_aware", "uniform", "one_per_layer"):
        errors[mode], budget = _merged_error(model, batches, prof, 9, mode)
        assert sum(budget) == (3 if mode == "one_per_layer" else 9)
    assert errors["layer_aware"] < errors["uniform"] < errors["one_per_layer"]


def _fed(projection="llama-moe-3.5b", batch_size=8, max_length=128, fleet="consumer", **cost_options):
    from fedmoe.config import CostConfig
    from fedmoe.fl.cost import CostModel

    cost = CostModel.build(fleet, mode="projection", arch=projection)
    cfg = SimpleNamespace(fed=SimpleNamespace(batch_size=batch_size, max_length=max_length),
                          cost=CostConfig(**cost_options))
    return SimpleNamespace(priced_config=cost.priced_config(None), cost=cost, cfg=cfg)


def test_budgets_by_hand_and_the_whole_model_does_not_fit_small_devices():
    fed = _fed()
    pm = priced_model(fed)
    assert (pm.num_layers, pm.num_experts, pm.expert_params) == (32, 16, 3 * 4096 * 688)
    full = model_memory(fed.priced_config, batch_tokens=8 * 128).total
    assert full > get_device("rtx-3060-12gb").memory_bytes  # the whole model does not even fit for inference
    for name in CONSUMER:
        dev = get_device(name)
        free = dev.memory_bytes - pm.shared_bytes[16] - pm.activation_bytes
        b = flux_budget(pm, dev, 0.5, 0.25)
        per_tune = pm.expert_params * (2 + TRAIN_STATE_BYTES)
        tune = min(math.floor(0.25 * 512), math.floor(0.5 * free / per_tune))
        assert b.tune_priced == tune
        assert b.slots_priced == min(512 - tune, (free - tune * per_tune) // (2 * pm.expert_params))
        assert offload_resident(pm, dev, 16) == free // (pm.expert_bytes[16] + pm.expert_params * TRAIN_STATE_BYTES)
        assert fmes_kept(pm, dev) == min(16, free // (per_tune * 32))
        assert offload_resident(pm, dev, 16) < pm.total_experts  # FMD must offload on every consumer device
    assert flux_budget(pm, get_device("rtx-3060-12gb"), 0.5, 0.25).slots < 1.0  # 12 GB: FLUX must merge


@pytest.mark.parametrize("projection", ["llama-moe-3.5b", "deepseek-moe-16b"])
def test_flux_priced_work_fits_every_consumer_device(projection):
    fed = _fed(projection)
    pm = priced_model(fed)
    stats = SimpleNamespace(tokens=4000, examples=80)
    for name in CONSUMER:
        dev = get_device(name)
        b = flux_budget(pm, dev, 0.5, 0.25)
        work = expert_work(fed, pm, stats, trainable=b.tune_priced, slots=b.tune_priced + b.slots_priced,
                           tuned_token_share=0.2, bytes_down=0, bytes_up=0)
        check_fits(ClientWork.from_dict(work), dev)
        assert work["memory_bytes"] > 0.9 * dev.memory_bytes or b.slots_priced + b.tune_priced == pm.total_experts


@pytest.mark.parametrize("device", ["rtx-3060-12gb", "rtx-3090-24gb"])
def test_layer_merge_budget_spends_exactly_the_consumer_budgets(device):
    """The default zoo model (4 layers x 8 experts) priced as LLaMA-MoE-3.5B: a 3090 gets 26 merged slots, a
    3060 gets 8. Old code clipped shares above a layer's non-tuning count away (3090: 9 of 26 used) and
    raised shares below 1 (3060: 10 of 8)."""
    from fedmoe.methods.flux.budget import spread, tiny_count

    pm = priced_model(_fed())
    layers, experts = 4, 8
    b = flux_budget(pm, get_device(device), 0.5, 0.25)
    tune = tiny_count(b.tune, layers * experts)
    slots = min(layers * experts - tune, tiny_count(b.slots, layers * experts, layers))
    assert (tune, slots) == {"rtx-3060-12gb": (1, 8), "rtx-3090-24gb": (5, 26)}[device]
    non_tuning = [experts - t for t in spread(tune, layers)]
    g = torch.Generator().manual_seed(0)
    for flat_first in (True, False):  # a flat first layer takes (almost) every share
        freq = 2 * torch.distributions.Dirichlet(torch.ones(experts)).sample((layers,))
        if flat_first:
            freq[0] = 0.25 + 1e-4 * torch.randn(experts, generator=g)
        for mode in ("layer_aware", "uniform"):
            budget = layer_merge_budget(freq, non_tuning, slots, mode)
            assert sum(budget) == slots
            assert all(1 <= x <= n for x, n in zip(budget, non_tuning, strict=True))

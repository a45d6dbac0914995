"""FLAME's and the heterogeneous-LoRA baselines' aggregation rules against hand-computed results.

Public implementations of HetLoRA / FlexLoRA / FLoRA have shipped aggregation bugs, so every rule here is
checked on small matrices whose result is worked out by hand in the comments.
"""

import warnings

import pytest
import torch

from fedmoe.fl.devices import get_device
from fedmoe.methods.flame.aggregate import (
    activation_frequencies,
    activation_weights,
    aggregation_report,
    effective_clients,
    floored_weights,
)
from fedmoe.methods.flame.rescaler import (
    Rescaler,
    calibrate_scales,
    initial_scale,
    renormalises_top_k,
    start_scales,
)
from fedmoe.methods.hetero.lowrank import (
    from_factors,
    pad,
    product_norms,
    products,
    stack_factors,
    svd_factors,
    to_factors,
    truncate,
    weighted_factor_average,
    weighted_product_average,
)
from fedmoe.methods.hetero.tiers import client_tiers, device_tier, ladder
from fedmoe.moe.layers import moe_layers, set_top_k
from fedmoe.moe.lora import add_expert_lora, get_expert_lora, lora_state_dict, set_expert_lora

T = torch.tensor
P = "m.layers.0.self_attn.q_proj"  # a one-group (non-expert) prefix for the pure algebra


def _f(a, b):
    return {P: (T(a, dtype=torch.float32)[None], T(b, dtype=torch.float32)[None])}


def test_factor_layout_matches_peft_expert_slices(tiny_moe):
    model = add_expert_lora(tiny_moe("olmoe", num_experts=3, top_k=2), r=2, alpha=4)
    for e in range(3):
        lora = get_expert_lora(model, 0, e)
        set_expert_lora(model, 0, e, {k: torch.full_like(v, 10 * e + i) for i, (k, v) in enumerate(sorted(lora.items()))})
    state = lora_state_dict(model)
    factors = to_factors(state, 3)
    for e in range(3):
        lora = get_expert_lora(model, 0, e)
        for prefix, (a, b) in factors.items():
            if ".layers.0." not in prefix:
                continue
            name = "down_proj" if prefix.endswith("experts") else "gate_up_proj"
            assert torch.equal(a[e], lora[f"{name}.lora_A"]) and torch.equal(b[e], lora[f"{name}.lora_B"])
    back = from_factors(factors)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_truncate_and_pad():
    f = _f([[1, 2], [3, 4]], [[5, 6], [7, 8]])  # A [r=2, in=2], B [out=2, r=2]
    t = truncate(f, 1)
    assert torch.equal(t[P][0][0], T([[1.0, 2]])) and torch.equal(t[P][1][0], T([[5.0], [7]]))
    p = pad(t, 3)
    assert torch.equal(p[P][0][0], T([[1.0, 2], [0, 0], [0, 0]]))
    assert torch.equal(p[P][1][0], T([[5.0, 0, 0], [7, 0, 0]]))
    with pytest.raises(ValueError, match="truncate"):
        pad(f, 1)


def test_hetlora_zero_padding_average():
    # client 1 rank 2 (|D|=1), client 2 rank 1 (|D|=3) padded with a zero component:
    # A = (1*[[1,2],[3,4]] + 3*[[5,6],[0,0]]) / 4 = [[4, 5], [0.75, 1]]
    # B = (1*[[1,0],[0,1]] + 3*[[2,0],[4,0]]) / 4 = [[1.75, 0], [3, 0.25]]
    c1 = _f([[1, 2], [3, 4]], [[1, 0], [0, 1]])
    c2 = _f([[5, 6]], [[2], [4]])
    avg = weighted_factor_average([c1, c2], [1, 3])
    assert torch.allclose(avg[P][0][0], T([[4.0, 5], [0.75, 1]]))
    assert torch.allclose(avg[P][1][0], T([[1.75, 0], [3, 0.25]]))


def test_hetlora_norm_weighted_average_by_hand():
    # the paper's sparsity weights ||B_i A_i||_F: client 1 (rank 1) B A = [[3, 0], [4, 0]] -> 5;
    # client 2 (rank 2) B A = [[0, 0], [0, 15]] -> 15; weights 5/20 = 0.25 and 0.75 (|D_i| plays no part)
    c1 = _f([[1, 0]], [[3], [4]])
    c2 = _f([[1, 0], [0, 1]], [[0, 0], [0, 15]])
    norms = product_norms([c1, c2])
    assert torch.allclose(norms[P], T([[5.0], [15.0]], dtype=torch.float64))
    avg = weighted_factor_average([c1, c2], norms)
    # A = 0.25 [[1, 0], [0, 0]] + 0.75 [[1, 0], [0, 1]];  B = 0.25 [[3, 0], [4, 0]] + 0.75 [[0, 0], [0, 15]]
    assert torch.allclose(avg[P][0][0], T([[1.0, 0], [0, 0.75]]))
    assert torch.allclose(avg[P][1][0], T([[0.75, 0], [1, 11.25]]))


def test_flexlora_product_average_and_svd_redistribution():
    # B1 A1 = [[1],[2]] [[1,2]] = [[1,2],[2,4]];  B2 A2 = [[3],[0]] [[0,1]] = [[0,3],[0,0]]
    # equal weights: Delta W = [[0.5, 2.5], [1, 2]]
    c1, c2 = _f([[1, 2]], [[1], [2]]), _f([[0, 1]], [[3], [0]])
    delta = weighted_product_average([c1, c2], [5, 5])
    assert torch.allclose(delta[P][0], T([[0.5, 2.5], [1, 2]], dtype=torch.float64))
    # SVD of diag(3, 1): rank 2 reproduces it, rank 1 keeps [[3, 0], [0, 0]] (Eckart-Young)
    d = {P: T([[3.0, 0], [0, 1]], dtype=torch.float64)[None]}
    assert torch.allclose(products(svd_factors(d, 2))[P][0], d[P][0].double(), atol=1e-6)
    assert torch.allclose(products(svd_factors(d, 1))[P][0], T([[3.0, 0], [0, 0]], dtype=torch.float64), atol=1e-6)
    # singular values go into B: A's rows are orthonormal, B's columns carry the values
    a, b = svd_factors(d, 2)[P]
    assert torch.allclose(a[0] @ a[0].T, torch.eye(2), atol=1e-6)
    assert torch.allclose(b[0].norm(dim=0), T([3.0, 1.0]), atol=1e-6)


def test_svd_of_zero_update_keeps_live_components():
    a, b = svd_factors({P: torch.zeros(1, 3, 4, dtype=torch.float64)}, 2)[P]
    assert torch.count_nonzero(b) == 0 and torch.allclose(a[0] @ a[0].T, torch.eye(2), atol=1e-6)


def test_flora_stacking_is_exact():
    # p = [1, 3] / 4:  0.25 * [[1,2],[2,4]] + 0.75 * [[0,3],[0,0]] = [[0.25, 2.75], [0.5, 1]]
    c1, c2 = _f([[1, 2]], [[1], [2]]), _f([[0, 1]], [[3], [0]])
    stacked = stack_factors([c1, c2], [1, 3])
    a, b = stacked[P]
    assert a.shape == (1, 2, 2) and b.shape == (1, 2, 2)  # rank 1 + 1
    assert torch.equal(a[0], T([[1.0, 2], [0, 1]])) and torch.allclose(b[0], T([[0.25, 2.25], [0.5, 0]]))
    assert torch.allclose(products(stacked)[P][0], T([[0.25, 2.75], [0.5, 1]], dtype=torch.float64))
    # heterogeneous ranks stack too: rank 2 + rank 1 -> rank 3, still the exact weighted sum of products
    c3 = _f([[1, 0], [0, 1]], [[1, 1], [1, 1]])
    want = 0.5 * products(c3)[P] + 0.5 * products(c1)[P]
    assert torch.allclose(products(stack_factors([c3, c1], [2, 2]))[P], want)


def test_activation_aware_weights_by_hand():
    # one MoE layer, 3 experts, 4 tokens each. client 1 routes [3, 1, 0] -> f1 = [0.75, 0.25, 0];
    # client 2 routes [0, 4, 0] -> f2 = [0, 1, 0]; |D| = [1, 2]
    counts = T([[[3, 1, 0]], [[0, 4, 0]]])
    f = activation_frequencies(counts, [4, 4], "per_token")
    assert torch.allclose(f[:, 0], T([[0.75, 0.25, 0], [0, 1, 0]], dtype=torch.float64))
    share = activation_frequencies(T([[[6, 2, 0]]]), [4], "share")  # 8 routed slots at top-2
    assert torch.allclose(share[0, 0], T([0.75, 0.25, 0], dtype=torch.float64))
    g1 = activation_weights(f, [1, 2], 1.0)[:, 0]
    assert torch.allclose(g1, T([[0.75, 0.25, 0], [0, 2, 0]], dtype=torch.float64))
    g2 = activation_weights(f, [1, 2], 2.0)[:, 0]
    assert torch.allclose(g2, T([[0.5625, 0.0625, 0], [0, 2, 0]], dtype=torch.float64))
    g0 = activation_weights(f, [1, 2], 0.0)[:, 0]  # t = 0: FedAvg, even for never-activated experts (0^0 = 1)
    assert torch.allclose(g0, T([[1.0, 1, 1], [2, 2, 2]], dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        activation_weights(f, [1, 2], -1.0)


def test_share_frequencies_remove_the_top_k_bias():
    # the same data share on each of 4 experts: a top-4 client routes 8 tokens to 32 slots, a top-1 client
    # 8 tokens to 8 slots. per_token: f = 1 vs 0.25, so at t = 8 the top-4 client weighs 4^8 = 65,536 times more
    counts, tokens, sizes = T([[[8, 8, 8, 8]], [[2, 2, 2, 2]]]), [8, 8], [1, 1]
    old = floored_weights(activation_weights(activation_frequencies(counts, tokens, "per_token"), sizes, 8.0),
                          sizes, 0.0)
    assert torch.allclose(old[1], torch.full((1, 4), 1 / 65537, dtype=torch.float64))
    # share (the default): f = 0.25 for both, whatever k_i -> equal weights
    f = activation_frequencies(counts, tokens)
    assert torch.allclose(f, torch.full((2, 1, 4), 0.25, dtype=torch.float64))
    new = floored_weights(activation_weights(f, sizes, 8.0), sizes, 0.0)
    assert torch.allclose(new, torch.full((2, 1, 4), 0.5, dtype=torch.float64))
    assert torch.allclose(effective_clients(new), torch.full((1, 4), 2.0, dtype=torch.float64))


def test_fedavg_floor_and_effective_clients_by_hand():
    # one MoE layer, 2 experts. share: f1 = [0.75, 0.25], f2 = [0.25, 0.75]; t = 2, |D| = [1, 3]
    # gamma1 = [0.5625, 0.0625], gamma2 = 3 * [0.0625, 0.5625]; normalised per expert: [0.75, 0.25], [1/28, 27/28]
    # FedAvg = [0.25, 0.75]; lambda = 0.5: expert 0 [0.5, 0.5], expert 1 [1/56 + 1/8, 27/56 + 3/8] = [1/7, 6/7]
    gamma = activation_weights(activation_frequencies(T([[[6, 2]], [[1, 3]]]), [8, 4]), [1, 3], 2.0)
    assert torch.allclose(floored_weights(gamma, [1, 3], 0.0)[:, 0], T([[0.75, 1 / 28], [0.25, 27 / 28]],
                                                                      dtype=torch.float64))
    w = floored_weights(gamma, [1, 3], 0.5)
    assert torch.allclose(w[:, 0], T([[0.5, 1 / 7], [0.5, 6 / 7]], dtype=torch.float64))
    assert torch.allclose(floored_weights(gamma, [1, 3], 1.0)[:, 0], T([[0.25, 0.25], [0.75, 0.75]],
                                                                      dtype=torch.float64))  # FedAvg
    # effective clients 1 / sum w^2: expert 0 -> 2, expert 1 -> 49 / 37; FedAvg's: 1 / (1/16 + 9/16) = 1.6.
    # 49/37 = 1.32 is not below 3/4 of FedAvg's 1.6 (1.2): no warning; without the floor expert 1 gets
    # 1 / (1/784 + 729/784) = 784/730 = 1.07 effective clients, which warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = aggregation_report(w, [1, 3], min_effective=2.0)
    with pytest.warns(UserWarning, match="expert 1 of MoE layer 0 is averaged from 1.07 effective clients"):
        aggregation_report(floored_weights(gamma, [1, 3], 0.0), [1, 3], min_effective=2.0)
    assert report == pytest.approx({"eff_clients_mean": (2 + 49 / 37) / 2, "eff_clients_min": 49 / 37,
                                    "eff_clients_fedavg": 1.6})
    # never-activated expert (t > 0): FedAvg's weights; one client: 1 effective client, as FedAvg, no warning
    zero = activation_weights(T([[[1.0, 0]], [[1.0, 0]]]), [1, 3], 2.0)
    assert torch.allclose(floored_weights(zero, [1, 3], 0.0)[:, 0, 1], T([0.25, 0.75], dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert aggregation_report(torch.ones(1, 2, 3, dtype=torch.float64), [5], 2.0)["eff_clients_min"] == 1.0
    with pytest.raises(ValueError, match="fedavg_floor"):
        floored_weights(gamma, [1, 3], 1.5)


def test_per_expert_weighted_average_by_hand():
    # 3 experts (groups); client 1's LoRA is all 1, client 2's all 8; gamma from the test above.
    def const(v):
        return {P: (torch.full((3, 1, 2), v), torch.full((3, 2, 1), v))}

    c1, c2 = const(1.0), const(8.0)
    t1 = {P: T([[0.75, 0.25, 0], [0, 2, 0]])}
    a = weighted_factor_average([c1, c2], t1)[P][0][:, 0, 0]
    # expert 0: only client 1 activated it -> 1; expert 1: (0.25*1 + 2*8) / 2.25 = 65/9;
    # expert 2: nobody activated it -> unweighted mean 4.5 (both returned it unchanged)
    assert torch.allclose(a, T([1.0, 65 / 9, 4.5]))
    t0 = {P: T([[1.0, 1, 1], [2, 2, 2]])}  # FedAvg: (1 + 2*8) / 3 = 17/3 for every expert
    assert torch.allclose(weighted_factor_average([c1, c2], t0)[P][1][:, 0, 0], torch.full((3,), 17 / 3))
    with pytest.raises(ValueError, match="per-group weights"):
        weighted_factor_average([c1, c2], {P: T([1.0, 2.0])})


def test_tiers_and_ladder():
    assert [device_tier(get_device(d)) for d in ("rtx-3090-24gb", "rtx-3060-12gb", "jetson-orin-nx-16gb")] == [0, 1, 2]
    assert [ladder(4, t) for t in range(4)] == [4, 2, 1, 1]
    assert [ladder(8, t) for t in range(4)] == [8, 4, 2, 1]
    assert client_tiers([get_device("rtx-3090-24gb")] * 2, [1, 0]) == [1, 0]
    with pytest.raises(ValueError, match="one tier"):
        client_tiers([get_device("rtx-3090-24gb")] * 2, [1])
    with pytest.raises(ValueError, match="descending"):
        device_tier(get_device("rtx-3090-24gb"), [20, 60])


def test_rescaler_scales_routed_output_only_inside_context(tiny_moe):
    model = tiny_moe("olmoe", num_experts=4, top_k=2)
    set_top_k(model, 1)
    block, block1 = moe_layers(model)[0].block, moe_layers(model)[1].block
    x = torch.randn(1, 5, model.config.hidden_size)
    plain, plain1 = block(x), block1(x)
    rescaler = Rescaler([initial_scale(2, 1), 3.0], trainable=True)
    assert torch.allclose(rescaler.values(), T([2.0, 3.0]))
    with rescaler.applied(model):
        assert torch.allclose(block(x), 2.0 * plain, atol=1e-6)
        assert torch.allclose(block1(x), 3.0 * plain1, atol=1e-6)
    assert torch.allclose(block(x), plain)  # hooks removed
    with torch.no_grad():
        rescaler.log_gain[0] = torch.log(torch.tensor(1.5))
    assert torch.allclose(rescaler.values()[0], torch.tensor(3.0))
    with pytest.raises(ValueError, match="top-k"):
        initial_scale(2, 3)
    assert Rescaler([2.0], trainable=False).param_groups(0.1) == []
    assert Rescaler([2.0], trainable=True).param_groups(0.1)[0]["lr"] == 0.1


def test_routers_that_renormalise_top_k(tiny_moe):
    assert renormalises_top_k(tiny_moe("mixtral"))  # always
    assert renormalises_top_k(tiny_moe("deepseek_v3"))  # norm_topk_prob=True, as released
    assert not renormalises_top_k(tiny_moe("olmoe"))  # norm_topk_prob=False, as released
    assert renormalises_top_k(tiny_moe("olmoe", norm_topk_prob=True))
    assert not renormalises_top_k(tiny_moe("qwen2_moe"))


def _batch(vocab, seed=0):
    ids = torch.randint(3, vocab, (3, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 5:] = mask[2, 3:] = 0  # right padding
    return {"input_ids": ids * mask, "attention_mask": mask}


def _routed_norms(model, batch):
    """Per MoE layer, the norm of the routed-experts output (after any rescaler hook) over non-padding tokens."""
    norms, valid = {}, batch["attention_mask"].reshape(-1).bool()
    hooks = [layer.block.experts.register_forward_hook(
        lambda _m, _i, out, i=layer.index: norms.__setitem__(i, float(out[valid].double().norm())))
        for layer in moe_layers(model)]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    return [norms[i] for i in sorted(norms)]


def test_calibrated_rescaler_restores_full_top_k_output_norms(tiny_moe):
    model = tiny_moe("olmoe", top_k=4).train()
    batch = _batch(model.config.vocab_size)
    scales = calibrate_scales(model, batch, full_top_k=4, top_k=1)
    assert model.config.num_experts_per_tok == 4 and model.training  # restored
    # layer 0 sees the same input at both top-k: its scale is the plain norm ratio, measured by hand
    seen = []
    block = moe_layers(model)[0].block
    handle = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    model.eval()
    with torch.no_grad():
        model(**batch)
    handle.remove()
    norms = {}
    for k in (4, 1):
        set_top_k(model, k)
        with torch.no_grad():
            norms[k] = block(seen[0])[batch["attention_mask"].bool()].double().norm()
    assert scales[0] == pytest.approx(float(norms[4] / norms[1]), rel=1e-5)
    assert all(abs(s - 4.0) > 0.5 for s in scales)  # not k / k_i: the top gate carries most of the mass
    # every layer: top-1 with the calibrated rescaler has the routed-output norms of top-4
    set_top_k(model, 4)
    full = _routed_norms(model, batch)
    set_top_k(model, 1)
    with Rescaler(scales, trainable=False).applied(model):
        assert _routed_norms(model, batch) == pytest.approx(full, rel=1e-4)


def test_rescaler_start_follows_the_router(tiny_moe):
    mixtral, olmoe = tiny_moe("mixtral", top_k=4), tiny_moe("olmoe", top_k=4)
    batch = _batch(256)
    assert start_scales(mixtral, "auto", 4, 1, batch) == [1.0, 1.0]  # renormalised gates: nothing lost
    assert start_scales(mixtral, "calibrated", 4, 1, batch) != [1.0, 1.0]
    calibrated = calibrate_scales(olmoe, batch, 4, 2)
    assert start_scales(olmoe, "auto", 4, 2, batch) == calibrated
    assert start_scales(olmoe, "auto", 4, 2, batch, per_layer=False) == [pytest.approx(sum(calibrated) / 2)]
    assert start_scales(olmoe, "ratio", 4, 2) == [2.0, 2.0] and start_scales(olmoe, "one", 4, 2) == [1.0, 1.0]
    assert start_scales(olmoe, "auto", 4, 4) == [1.0, 1.0]  # full top-k: nothing to compensate
    with pytest.raises(ValueError, match="needs a batch"):
        start_scales(olmoe, "calibrated", 4, 2)
    with pytest.raises(ValueError, match="rescaler_init"):
        start_scales(olmoe, "learned", 4, 2, batch)

"""FLUX's formulas against hand-computed values: aggregation, merge budget, roles, utility, ZO, attention."""

import math
import random

import pytest
import torch

from fedmoe.methods.experts.base import aggregate_experts, expert_key
from fedmoe.methods.flux.assignment import eps_at, init_utilities, select_roles, utility, zo_grad_sq
from fedmoe.methods.flux.budget import layer_merge_budget, spread, tiny_count
from fedmoe.methods.flux.profiling import Profile, profile_error, received_attention


def _state():
    # 2 MoE layers x 3 experts; each expert a [1, 1] tensor whose value is 10*layer + expert
    return {f"{layer}.{name}": torch.tensor([[[10.0 * layer + e]] for e in range(3)])
            for layer in range(2) for name in ("gate_up_proj", "down_proj")}


def _upload(pairs):
    return {expert_key(layer, e, name): torch.tensor([[v]]) for (layer, e), v in pairs.items()
            for name in ("gate_up_proj", "down_proj")}


def test_aggregate_experts_token_weighted_hand_example():
    state = _state()
    a = _upload({(0, 1): 1.0, (1, 2): 2.0})
    b = _upload({(0, 1): 5.0, (1, 0): 7.0})
    tokens_a = [[0, 3, 0], [0, 0, 0]]  # (1, 2) got no token from a
    tokens_b = [[0, 1, 0], [4, 0, 0]]
    new, info = aggregate_experts(state, [a, b], [tokens_a, tokens_b])
    for name in ("gate_up_proj", "down_proj"):
        assert new[f"0.{name}"][1].item() == pytest.approx((3 * 1.0 + 1 * 5.0) / 4)  # = 2.0
        assert new[f"1.{name}"][0].item() == pytest.approx(7.0)  # only b trained it
        assert new[f"1.{name}"][2].item() == 12.0  # trained by a with zero tokens: keeps its value
        assert new[f"0.{name}"][0].item() == 0.0 and new[f"0.{name}"][2].item() == 2.0  # nobody trained them
    assert info == {"experts_updated": 2, "experts_uploaded": 3}
    assert state["0.gate_up_proj"][1].item() == 1.0  # input untouched


def test_layer_merge_budget_formula_by_hand():
    freq = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 0.6, 0.3, 0.1], [1.4, 0.4, 0.1, 0.1]])
    var = [0.0, 0.1175, 0.2825]  # population variances of the rows
    # b_l = (L - l + 1) / v_l with v_0 = 0 clamped to 1e-12 -> layer 0 takes (almost) all of B_non
    budget = layer_merge_budget(freq, [4, 4, 4], 6)
    b = [3 / 1e-12, 2 / var[1], 1 / var[2]]
    expected = [min(4, max(1, math.floor(x / sum(b) * 6))) for x in b]
    assert budget == expected == [4, 1, 1]
    freq2 = freq.clone()
    freq2[0] = torch.tensor([0.8, 0.6, 0.4, 0.2])  # v_0 = 0.05
    b = [3 / 0.05, 2 / var[1], 1 / var[2]]
    assert layer_merge_budget(freq2, [4, 4, 4], 6) == [min(4, max(1, math.floor(x / sum(b) * 6))) for x in b]
    assert layer_merge_budget(freq2, [4, 4, 4], 6) == [4, 1, 1]  # 6*60/80.56=4.47, 6*17.0/80.56=1.27, 0.26->1
    # floor of the water-filled shares: layer 2 held at 1, 5 slots split 60 : 17.02 -> [3.90, 1.10, 1]
    assert layer_merge_budget(freq2, [4, 4, 4], 6, rounding="floor") == [3, 1, 1]
    # uniform: layer 2 has no non-tuning expert; 7 slots over layers 0 and 1 (3.5 each, layer 1 full at 3):
    # the half slot layer 1 cannot take goes to layer 0 (old code clipped it away: [3, 2, 0])
    assert layer_merge_budget(freq, [4, 3, 0], 7, "uniform") == [4, 3, 0]
    assert layer_merge_budget(freq, [4, 3, 0], 7, "uniform", rounding="floor") == [4, 3, 0]
    # shares 12 * [60, 17.02, 3.54] / 80.56 = [8.94, 2.54, 0.53]: layer 0 full at 8, layer 2 held at 1,
    # layer 1 takes the other 3
    assert layer_merge_budget(freq2, [8, 8, 8], 12) == [8, 3, 1]
    with pytest.raises(ValueError, match="below one slot per layer"):
        layer_merge_budget(freq, [4, 4, 4], 2)
    assert layer_merge_budget(freq, [4, 3, 2], 7, "one_per_layer") == [1, 1, 1]


def test_spread_and_tiny_count():
    assert spread(7, 3) == [3, 2, 2]
    assert tiny_count(0.037, 32) == 1 and tiny_count(0.0, 32) == 1 and tiny_count(0.25, 32) == 8


def test_eps_schedule_and_select_roles():
    assert eps_at(1, 11, "linear", 0.3, 0.9, 0.5) == pytest.approx(0.3)
    assert eps_at(6, 11, "linear", 0.3, 0.9, 0.5) == pytest.approx(0.6)
    assert eps_at(11, 11, "linear", 0.3, 0.9, 0.5) == pytest.approx(0.9)
    assert eps_at(4, 11, "fixed", 0.3, 0.9, 0.5) == 0.5
    u = torch.tensor([[5.0, float("nan"), 1.0], [4.0, 3.0, float("nan")]])
    roles = select_roles(u, 3, 1.0, random.Random(0))
    assert roles.exploit == [[0], [0, 1]] and roles.explore == [[], []]  # top-3 known utilities
    roles = select_roles(u, 4, 0.5, random.Random(0))  # 2 exploited (5.0, 4.0) + 2 explored
    assert roles.exploit == [[0], [0]] and sum(map(len, roles.explore)) == 2
    assert set(roles.pairs("explore")).isdisjoint(roles.pairs("exploit")) and len(roles.pairs("all")) == 4
    assert sum(map(len, select_roles(u, 6, 0.0, random.Random(1)).all)) == 6
    with pytest.raises(ValueError, match="tuning budget"):
        select_roles(u, 7, 0.5, random.Random(0))


def test_eps_ramp_is_the_papers_form():
    # eps_t = min(eps_max, eps_0 + d * t), t = round - 1 (old code: no "ramp" schedule, a ValueError)
    assert [eps_at(r, 50, "ramp", 0.3, 0.9, 0.5, step=0.2) for r in (1, 2, 3, 4, 10)] == pytest.approx(
        [0.3, 0.5, 0.7, 0.9, 0.9])


def test_first_round_utilities_come_from_activation_frequency():
    """Paper: before any gradient is known, utilities = normalised activation frequency, so exploitation picks
    the most-routed experts (old code: unknown utilities were NaN, never exploited)."""
    tokens = torch.tensor([[10, 40, 0, 30], [5, 5, 80, 0]])
    unknown = torch.full((2, 4), float("nan"), dtype=torch.float64)
    u = init_utilities(unknown, tokens)
    assert u.tolist() == [[10.0, 40.0, 0.0, 30.0], [5.0, 5.0, 80.0, 0.0]]  # g_bar = 1: |D_e| (ranks as f_e)
    assert select_roles(u, 3, 1.0, random.Random(0)).exploit == [[1, 3], [2]]
    # later: unknown entries on the known entries' scale, g_bar = sum u / sum |D_e| over known = (20 + 30) / (10 + 5)
    known = unknown.clone()
    known[0, 0], known[1, 0] = 20.0, 30.0
    u = init_utilities(known, tokens)
    assert u[0, 1].item() == pytest.approx(40 * 50 / 15) and u[0, 0].item() == 20.0
    assert torch.isnan(init_utilities(unknown, tokens, "none")).all()
    with pytest.raises(ValueError, match="utility init"):
        init_utilities(unknown, tokens, "oort")


def test_select_roles_keeps_one_trained_expert_when_exploration_is_only_scored():
    u = torch.full((2, 4), float("nan"), dtype=torch.float64)
    roles = select_roles(u, 2, 0.3, random.Random(0), min_exploit=1)  # round(0.6) = 1 anyway; budget 1 below
    assert len(roles.pairs("exploit")) == 1 and len(roles.pairs("explore")) == 1
    roles = select_roles(u, 1, 0.3, random.Random(0), min_exploit=1)  # round(0.3) = 0 -> 1 (nothing known)
    assert len(roles.pairs("exploit")) == 1 and roles.pairs("explore") == []


def test_utility_formula():
    tokens = torch.tensor([[4, 0], [9, 1]])
    grad_sq = torch.tensor([[0.25, 1.0], [4.0, 0.0]])
    assert utility(tokens, grad_sq).tolist() == [[2.0, 0.0], [18.0, 0.0]]


def test_zero_order_estimate_matches_gradient_norm():
    g = torch.tensor([3.0, -4.0, 1.0])  # linear loss L(w) = g.w has ||g||^2 = 26
    w = torch.zeros(3, dtype=torch.float64)
    est = zo_grad_sq(lambda: float(g.double() @ w), [w], 1e-3, 4000, torch.Generator().manual_seed(0))
    assert est == pytest.approx(26.0, rel=0.08)
    assert torch.equal(w, torch.zeros(3, dtype=torch.float64))  # restored


def test_received_attention_by_hand():
    attn = torch.tensor([[[[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.2, 0.3, 0.5]]]])  # B=1, H=1
    out = received_attention(attn, torch.tensor([[1, 1, 1]]))
    assert out[0].tolist() == pytest.approx([(1.0 + 0.6 + 0.2) / 3, (0.4 + 0.3) / 2, 0.5])
    out = received_attention(attn, torch.tensor([[1, 1, 0]]))  # last token is padding: not a query
    assert out[0, :2].tolist() == pytest.approx([(1.0 + 0.6) / 2, 0.4])


def test_profile_error_relative_l1():
    ref = Profile(torch.tensor([[1.0, 1.0]]), torch.tensor([[2, 2]]), torch.zeros(1, 2), 2)
    other = Profile(torch.tensor([[1.5, 0.5]]), torch.tensor([[3, 1]]), torch.zeros(1, 2), 2)
    assert profile_error(other, ref) == pytest.approx(0.5)
    assert Profile.from_dict(other.to_dict()).tokens.tolist() == [[3, 1]]

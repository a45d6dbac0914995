"""``expert_vectors``: the flattened expert weights FLUX clusters, which learn notebook 06 projects with PCA to
show the groups and the merged experts among them."""

import copy

import torch

from fedmoe.methods.flux.merging import apply_merge, cluster_experts, expert_vectors, plan_merge
from fedmoe.methods.flux.profiling import Profile
from fedmoe.moe.layers import moe_layers


def test_expert_vectors_rows_are_both_fused_tensors_of_each_slot(tiny_moe):
    layer = moe_layers(tiny_moe("mixtral", num_experts=4))[0]
    rows = expert_vectors(layer, [2, 0])
    for row, e in zip(rows, [2, 0], strict=True):
        w = layer.expert_weights(e)
        assert torch.equal(row, torch.cat([w["gate_up_proj"].flatten(), w["down_proj"].flatten()]))
    assert not rows.requires_grad


def test_plan_merge_clusters_the_expert_vectors_and_a_merged_slot_is_their_weighted_mean(tiny_moe):
    model = tiny_moe("mixtral", num_experts=4)
    layers = moe_layers(model)
    freq = torch.tensor([[0.5, 0.1, 0.9, 0.5]] * len(layers), dtype=torch.float64)
    profile = Profile(freq, (freq * 10).long(), torch.ones_like(freq), 10)
    tuning = [[0]] * len(layers)
    plan = plan_merge(model, tuning, [2] * len(layers), profile, weights="frequency")
    non = [1, 2, 3]
    groups = cluster_experts(expert_vectors(layers[0], non).double().numpy(), 2)
    assert plan.groups[0] == sorted([[0]] + [[non[i] for i in g] for g in groups], key=lambda g: g[0])
    merged = apply_merge(copy.deepcopy(model), plan)
    group = max(plan.groups[0], key=len)
    slot = int(moe_layers(merged)[0].expert_map[group[0]])
    alpha = freq[0, group] / freq[0, group].sum()
    expected = (alpha[:, None].float() * expert_vectors(layers[0], group)).sum(0)
    assert len(group) > 1 and torch.allclose(expert_vectors(moe_layers(merged)[0], [slot])[0], expected, atol=1e-6)

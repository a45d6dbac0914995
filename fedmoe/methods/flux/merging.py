"""FLUX's merging of non-tuning experts: PCA + K-Means groups per layer, frequency x attention weights,
router re-map (:func:`fedmoe.moe.surgery.merge_experts`), and the output error it causes.

Within layer l the non-tuning experts are clustered into B_non(l) groups (PCA of their flattened
weights, then K-Means); each group becomes ``W_c = sum_{e in c} alpha_e / sum_{e' in c} alpha_e' W_e``
with ``alpha_e = f_e * a_e`` (or ``f_e``). Tuning experts stay singleton slots. The *drop* ablation keeps
the B_non(l) - 1 most frequent non-tuning experts and routes the rest to one zeroed slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from torch import nn

from fedmoe.methods.flux.profiling import Profile
from fedmoe.moe.layers import MoELayer, moe_layers
from fedmoe.moe.surgery import EXPERT_PARAMS, merge_experts


def merge_alpha(profile: Profile, weights: str = "freq_attention") -> torch.Tensor:
    """alpha [L, E]: ``f * a`` (``freq_attention``) or ``f`` (``frequency``)."""
    if weights == "freq_attention":
        return profile.freq * profile.attention
    if weights == "frequency":
        return profile.freq.clone()
    raise ValueError(f"merge weights {weights!r}; choose freq_attention or frequency")


def expert_vectors(layer: MoELayer, experts: Sequence[int]) -> torch.Tensor:
    """[n, D]: the weights of ``layer``'s expert slots ``experts``, both fused tensors flattened into one row
    each: the points :func:`cluster_experts` groups (a merged slot's row lies among its members')."""
    return torch.cat([getattr(layer.experts, name).detach()[list(experts)].flatten(1) for name in EXPERT_PARAMS], 1)


def cluster_experts(flat: np.ndarray, k: int, *, pca_dim: int = 4, seed: int = 0) -> list[list[int]]:
    """Partition the rows of ``flat`` [n, D] (flattened expert weights) into ``k`` non-empty groups:
    PCA to ``min(pca_dim, n, D)`` dimensions, then K-Means. Groups list row indices, sorted."""
    n = flat.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot cluster {n} experts into {k} groups; need 1 <= k <= {n}")
    if k == n:
        return [[i] for i in range(n)]
    if k == 1:
        return [list(range(n))]
    reduced = PCA(n_components=min(pca_dim, n, flat.shape[1]), random_state=seed).fit_transform(flat)
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(reduced)
    groups = [sorted(np.flatnonzero(labels == c).tolist()) for c in range(k)]
    return sorted((g for g in groups if g), key=lambda g: g[0])


@dataclass
class MergePlan:
    """Per MoE layer: the partition of router experts into slots, alpha, and dropped (zeroed) groups."""

    groups: list[list[list[int]]]
    alpha: list[list[float]]
    dropped: list[list[int]]

    @property
    def slots(self) -> list[int]:
        """Expert slots stored per layer after merging."""
        return [len(g) for g in self.groups]


def plan_merge(model: nn.Module, tuning: Sequence[Sequence[int]], budget: Sequence[int], profile: Profile, *,
               weights: str = "freq_attention", drop: bool = False, pca_dim: int = 4, seed: int = 0) -> MergePlan:
    """The merge of ``model``'s non-tuning experts into ``budget[l]`` slots per layer (tuning experts
    ``tuning[l]`` stay alone); see the module docstring."""
    alpha = merge_alpha(profile, weights)
    groups, dropped = [], []
    for layer, tune, slots in zip(moe_layers(model), tuning, budget, strict=True):
        tune_set = {int(e) for e in tune}
        non = [e for e in range(layer.num_router_experts) if e not in tune_set]
        layer_groups = [[e] for e in sorted(tune_set)]
        layer_dropped: list[int] = []
        if non and slots >= len(non):
            layer_groups += [[e] for e in non]
        elif non and drop:
            order = sorted(non, key=lambda e: (-float(profile.freq[layer.index, e]), e))
            layer_groups += [[e] for e in order[: slots - 1]]
            layer_dropped = sorted(order[slots - 1:])
            layer_groups.append(layer_dropped)
        elif non:
            flat = expert_vectors(layer, non).double().numpy()
            for g in cluster_experts(flat, slots, pca_dim=pca_dim, seed=seed):
                layer_groups.append([non[i] for i in g])
        groups.append(sorted(layer_groups, key=lambda g: g[0]))
        dropped.append(layer_dropped)
    return MergePlan(groups, alpha.tolist(), dropped)


def apply_merge(model: nn.Module, plan: MergePlan) -> nn.Module:
    """Merge ``model`` in place by ``plan`` (router re-map included) and zero dropped groups' slots."""
    merge_experts(model, plan.groups, plan.alpha)
    with torch.no_grad():
        for layer, dropped in zip(moe_layers(model), plan.dropped, strict=True):
            if dropped:
                slot = int(layer.expert_map[dropped[0]])
                for name in EXPERT_PARAMS:
                    getattr(layer.experts, name)[slot].zero_()
    return model


@torch.no_grad()
def output_error(reference: nn.Module, model: nn.Module, batches: Sequence[dict]) -> float:
    """Relative output error ||logits - logits_ref||_F / ||logits_ref||_F over the non-padding tokens of
    ``batches`` (dicts with ``input_ids`` and ``attention_mask``; both models in eval mode)."""
    num = den = 0.0
    for batch in batches:
        mask = batch["attention_mask"].bool()
        ref = reference(**batch).logits[mask].double()
        out = model(**batch).logits[mask].double()
        num += float((out - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0

"""FFT-MoE's heterogeneity-aware auxiliary loss on a client's adapter routing (our formula; the paper's is
not public).

For one adapter layer over the client's N (non-padding) tokens of a step, with P(x) the full routing
distribution and T_K(x) the top-K set (:mod:`fedmoe.methods.fftmoe.adapter`)::

    f_j     = |{(x, k): T_K(x)_k = j}| / (N K)       share of the top-K assignments going to expert j
    Pbar_j  = (1/N) sum_x P_j(x)                     mean routing probability of expert j
    L_bal   = M sum_j f_j Pbar_j                     Switch-style load balance; = 1 when balanced, -> M collapsed
    L_div   = 1 - H(Pbar) / log M                    0 when the mean routing is uniform, 1 when one expert
    L_aux   = h_n (w_bal L_bal + w_div L_div)        averaged over the adapter layers

and the client's heterogeneity factor, computed once from its budget and local data::

    s_n = 1 - H(q_n) / log G      data skew: q_n = its histogram over the federation's G domains (0 if G = 1)
    h_n = 1 + lambda_K (1 - K_n / M) + lambda_s s_n

so clients that see fewer experts per token or more skewed data are pulled harder toward balanced,
diverse expert use. The training objective is ``LM loss + coef * L_aux``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedmoe.data.records import Example
from fedmoe.methods.fftmoe.adapter import pop_routing


def assignment_shares(top_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """f [M]: share of the top-K assignments ``top_idx`` [N, K] going to each expert (sums to 1)."""
    counts = torch.bincount(top_idx.reshape(-1), minlength=num_experts).double()
    return counts / counts.sum().clamp_min(1)


def balance_loss(probs: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
    """L_bal = M * sum_j f_j * Pbar_j (gradient through Pbar; f is a count)."""
    m = probs.shape[-1]
    f = assignment_shares(top_idx, m).to(probs.dtype)
    return m * (f * probs.mean(0)).sum()


def normalised_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) / log(len p) of a distribution (1: uniform, 0: one-hot; 0 for a single outcome)."""
    n = p.shape[-1]
    if n < 2:
        return p.new_zeros(())
    p = p / p.sum().clamp_min(1e-12)
    return -(p * p.clamp_min(1e-12).log()).sum() / math.log(n)


def diversity_loss(probs: torch.Tensor) -> torch.Tensor:
    """L_div = 1 - H(Pbar) / log M of the mean routing distribution."""
    return 1 - normalised_entropy(probs.mean(0))


def data_skew(examples: Sequence[Example], domains: Sequence[str]) -> float:
    """s_n = 1 - normalised entropy of the client's histogram over the federation's ``domains``."""
    index = {d: i for i, d in enumerate(domains)}
    hist = torch.zeros(len(domains), dtype=torch.float64)
    for ex in examples:
        hist[index[ex.domain]] += 1
    return float(1 - normalised_entropy(hist)) if len(domains) > 1 else 0.0


def heterogeneity_factor(top_k: int, num_experts: int, skew: float, *, budget_weight: float = 1.0,
                         skew_weight: float = 1.0) -> float:
    """h_n = 1 + lambda_K (1 - K_n / M) + lambda_s s_n (module docstring)."""
    if not 1 <= top_k <= num_experts or not 0.0 <= skew <= 1.0:
        raise ValueError(f"need 1 <= top_k <= num_experts and skew in [0, 1], got top_k={top_k}, "
                         f"num_experts={num_experts}, skew={skew}")
    return 1.0 + budget_weight * (1 - top_k / num_experts) + skew_weight * skew


def routing_aux_loss(routing: Sequence[tuple[torch.Tensor, torch.Tensor]], h: float, *,
                     balance_weight: float = 1.0, diversity_weight: float = 1.0) -> torch.Tensor:
    """L_aux = h * mean over layers of (w_bal L_bal + w_div L_div); ``routing`` as from ``pop_routing``."""
    terms = [balance_weight * balance_loss(p, i) + diversity_weight * diversity_loss(p) for p, i in routing]
    return h * torch.stack(terms).mean()


def load_cv(counts: torch.Tensor) -> float:
    """Coefficient of variation (population std / mean) of expert loads [L, M], averaged over layers."""
    c = counts.double()
    return float((c.std(-1, unbiased=False) / c.mean(-1).clamp_min(1e-12)).mean())


class RoutingRegulariser:
    """``finetune``'s ``extra_loss``: accumulates each step's adapter load counts [L, M] and, when
    ``coef > 0``, returns ``coef * L_aux`` (:func:`routing_aux_loss`) to add to the LM loss."""

    def __init__(self, num_layers: int, num_experts: int, h: float, *, coef: float, balance_weight: float = 1.0,
                 diversity_weight: float = 1.0):
        self.h, self.coef = h, coef
        self.weights = {"balance_weight": balance_weight, "diversity_weight": diversity_weight}
        self.counts = torch.zeros(num_layers, num_experts, dtype=torch.long)
        self.values: list[float] = []

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor | None:
        routing = pop_routing(model, batch.get("attention_mask"))
        for layer, (_, idx) in enumerate(routing):
            self.counts[layer] += torch.bincount(idx.reshape(-1).cpu(), minlength=self.counts.shape[1])
        with torch.enable_grad() if self.coef > 0 else torch.no_grad():
            loss = routing_aux_loss(routing, self.h, **self.weights)
        self.values.append(float(loss.detach()))
        return self.coef * loss if self.coef > 0 else None

    @property
    def mean_value(self) -> float:
        """Mean L_aux over the steps (computed also when switched off, for the ablation's diagnostics)."""
        return sum(self.values) / len(self.values) if self.values else float("nan")

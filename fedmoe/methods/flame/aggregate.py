"""FLAME's activation-aware aggregation, with a FedAvg floor and a collapse check.

Client i's LoRA of expert j (in each MoE layer) gets the paper's weight ``gamma_ij = f_ij^t * |D_i|``, where
``f_ij`` is how often client i activated expert j during its local steps and ``t`` a temperature. The
weights used are

    w_ij = (1 - lambda) * gamma_ij / sum_i' gamma_i'j  +  lambda * |D_i| / sum_i' |D_i'|

(``lambda`` = ``fedavg_floor``; 0 is the paper's rule, 1 is FedAvg) and the global expert LoRA is
``theta_j = sum_i w_ij theta_ij`` (A and B averaged separately). An expert no client activated
(``sum_i gamma_ij = 0``, possible at ``t > 0``) takes the FedAvg weights; every client returned it unchanged,
so the result is its previous global value.

Frequencies: ``share`` = tokens client i routed to j / all its routed slots (sums to 1 over experts for every
client whatever its top-k_i), or ``per_token`` = tokens routed to j / tokens trained (an activation rate,
summing to k_i). With ``per_token`` a top-k_i client's frequencies are ~k_i / k times a full-top-k client's on
the same data, so its weight on every expert shrinks as ``(k_i / k)^t``: at t = 8, a top-4 client outweighs a
top-1 client 4^8 = 65,536 to 1 and the aggregate collapses onto the strongest tier.

``1 / sum_i w_ij^2`` is the effective number of clients expert j is averaged from (N for equal weights, 1
when one client holds all the weight); :func:`aggregation_report` logs it and warns on a collapse.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

FREQUENCIES = ("share", "per_token")


def activation_frequencies(expert_tokens: torch.Tensor, tokens: Sequence[int], mode: str = "share") -> torch.Tensor:
    """``f`` [N, L, E] from routed-token counts [N, L, E] and each client's trained tokens [N] (see module doc)."""
    counts = torch.as_tensor(expert_tokens, dtype=torch.float64)
    if counts.dim() != 3:
        raise ValueError(f"expert_tokens must be [clients, MoE layers, experts], got shape {tuple(counts.shape)}")
    if mode == "per_token":
        denom = torch.as_tensor([float(t) for t in tokens], dtype=torch.float64)[:, None, None]
    elif mode == "share":
        denom = counts.sum(-1, keepdim=True)
    else:
        raise ValueError(f"frequency={mode!r}; use one of {FREQUENCIES}")
    return counts / denom.clamp_min(1.0)


def activation_weights(freq: torch.Tensor, num_examples: Sequence[int], temperature: float) -> torch.Tensor:
    """The paper's ``gamma`` [N, L, E] = ``f ** t * |D_i|`` (t = 0: ``|D_i|`` everywhere, i.e. FedAvg)."""
    if temperature < 0:
        raise ValueError(f"temperature t must be >= 0 (0 is FedAvg), got {temperature}")
    sizes = torch.as_tensor([float(n) for n in num_examples], dtype=torch.float64)[:, None, None]
    return freq.pow(temperature) * sizes


def fedavg_fractions(num_examples: Sequence[int]) -> torch.Tensor:
    """``|D_i| / sum |D|`` [N] (FedAvg's weights)."""
    sizes = torch.as_tensor([float(n) for n in num_examples], dtype=torch.float64)
    if sizes.numel() == 0 or (sizes < 0).any() or sizes.sum() <= 0:
        raise ValueError(f"client example counts must be >= 0 with a positive sum, got {sizes.tolist()}")
    return sizes / sizes.sum()


def floored_weights(gamma: torch.Tensor, num_examples: Sequence[int], fedavg_floor: float) -> torch.Tensor:
    """Normalised per-expert weights ``w`` [N, L, E] (each expert's column sums to 1): ``gamma`` normalised
    over clients, mixed with FedAvg's ``|D_i|`` fractions by ``fedavg_floor`` (module doc)."""
    if not 0.0 <= fedavg_floor <= 1.0:
        raise ValueError(f"fedavg_floor={fedavg_floor} must be in [0, 1] (0: the paper's weights, 1: FedAvg)")
    fedavg = fedavg_fractions(num_examples)[:, None, None].expand_as(gamma)
    total = gamma.sum(0, keepdim=True)
    aware = torch.where(total > 0, gamma / total.clamp_min(1e-300), fedavg)
    return (1.0 - fedavg_floor) * aware + fedavg_floor * fedavg


def effective_clients(weights: torch.Tensor) -> torch.Tensor:
    """``1 / sum_i w_ij^2`` over the client axis (dim 0) of normalised weights."""
    return 1.0 / weights.pow(2).sum(0)


def aggregation_report(weights: torch.Tensor, num_examples: Sequence[int], min_effective: float
                       ) -> dict[str, float]:
    """Effective clients per expert (mean and min over MoE layers and experts, and FedAvg's over the same
    clients) from normalised weights [N, L, E]; warns when the min is below both ``min_effective`` and three
    quarters of what FedAvg would give over the same clients (a round with one client, or two unequal ones,
    cannot reach the threshold at all, and small departures from FedAvg are the method working)."""
    eff = effective_clients(weights)
    fedavg = float(effective_clients(fedavg_fractions(num_examples)))
    out = {"eff_clients_mean": float(eff.mean()), "eff_clients_min": float(eff.min()), "eff_clients_fedavg": fedavg}
    if out["eff_clients_min"] < min(min_effective, 0.75 * fedavg) - 1e-9:
        layer, expert = divmod(int(eff.argmin()), eff.shape[1])
        warnings.warn(f"FLAME aggregation: expert {expert} of MoE layer {layer} is averaged from "
                      f"{out['eff_clients_min']:.2f} effective clients (FedAvg over these {weights.shape[0]} "
                      f"clients: {fedavg:.2f}); one client dominates it. Raise method_args.fedavg_floor, lower "
                      "method_args.temperature, or use frequency='share'.", stacklevel=2)
    return out

"""FLAME's activation-aware aggregation.

Client i's LoRA of expert j (in each MoE layer) gets the weight ``gamma_ij = f_ij^t * |D_i|`` and the global
expert LoRA is ``theta_j = sum_i gamma_ij theta_ij / sum_i gamma_ij`` (A and B averaged separately). ``f_ij``
is how often client i activated expert j during its local steps: ``per_token`` = tokens routed to j / tokens
trained (an activation rate in [0, 1]), or ``share`` = tokens routed to j / all its routed slots. ``t = 0``
gives ``gamma_ij = |D_i|``: FedAvg (``0^0 = 1``, so experts a client never activated count too). With
``t > 0`` an expert that no client activated has all-zero weights and falls back to the unweighted mean
(every client returned it unchanged, so that is the previous global value).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FREQUENCIES = ("per_token", "share")


def activation_frequencies(expert_tokens: torch.Tensor, tokens: Sequence[int], mode: str = "per_token"
                           ) -> torch.Tensor:
    """``f`` [N, L, E] from routed-token counts [N, L, E] and each client's trained tokens [N]."""
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
    """``gamma`` [N, L, E] = ``f ** t * |D_i|`` (t = 0: ``|D_i|`` everywhere, i.e. FedAvg)."""
    if temperature < 0:
        raise ValueError(f"temperature t must be >= 0 (0 is FedAvg), got {temperature}")
    sizes = torch.as_tensor([float(n) for n in num_examples], dtype=torch.float64)[:, None, None]
    return freq.pow(temperature) * sizes

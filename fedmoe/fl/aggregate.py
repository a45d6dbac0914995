"""Aggregation rules shared by methods: weighted averages of tensor dicts."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg: ``sum_i w_i * state_i / sum_i w_i`` for every key present in all states.

    Weights are usually the clients' example counts. Averages are computed in float64 (on the first state's
    device) and cast back to each tensor's dtype, whatever the training dtype (bfloat16 included), so the result
    does not depend on client order beyond rounding.
    """
    if not states:
        raise ValueError("weighted_average needs at least one state (no client returned an update)")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"states disagree on keys: {sorted(keys ^ set(s))[:5]}...")
    out = {}
    for key in states[0]:
        first = states[0][key]
        acc = sum(float(w) * s[key].to(first.device, torch.float64) for s, w in zip(states, weights, strict=True))
        out[key] = (acc / total).to(first.dtype)
    return out

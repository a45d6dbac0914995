"""FLUX's dynamic expert role assignment: Oort-style utility, budgeted selection with an
exploration/exploitation split eps, its schedule, and zeroth-order gradient-norm estimates."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch


def utility(tokens: torch.Tensor, grad_sq: torch.Tensor) -> torch.Tensor:
    """u_e = |D_e| * sqrt(mean ||g||^2) (elementwise over [L, E]); ``grad_sq`` is the mean squared gradient
    norm (open in the paper; here per optimizer step of local training, see README)."""
    return tokens.double() * grad_sq.double().clamp(min=0).sqrt()


def eps_at(round_: int, rounds: int, schedule: str, start: float, end: float, fixed: float) -> float:
    """Share of tuning slots given to exploitation in ``round_`` (1-based): ``fixed``, or linear from
    ``start`` (round 1, more exploration) to ``end`` (last round, more exploitation)."""
    if schedule == "fixed":
        return fixed
    if schedule != "linear":
        raise ValueError(f"eps schedule {schedule!r}; choose linear or fixed")
    progress = 0.0 if rounds <= 1 else min(1.0, max(0.0, (round_ - 1) / (rounds - 1)))
    return start + (end - start) * progress


def select_roles(utilities: torch.Tensor, budget: int, eps: float, rng: random.Random) -> list[list[int]]:
    """Tuning experts per layer: ``round(eps * budget)`` (layer, expert) pairs of highest known utility
    (exploitation; NaN = unknown), the rest drawn uniformly from the remaining pairs (exploration).

    Every expert costs the same memory, so the knapsack ``max sum u_e x_e s.t. sum x_e <= B_tune`` is solved
    by taking the top utilities. Returns sorted expert indices per layer.
    """
    num_layers, num_experts = utilities.shape
    total = num_layers * num_experts
    if not 1 <= budget <= total:
        raise ValueError(f"tuning budget {budget} must be in 1..{total}")
    flat = utilities.flatten().double()
    known = [i for i in range(total) if not math.isnan(float(flat[i]))]
    known.sort(key=lambda i: (-float(flat[i]), i))
    exploit = known[: min(len(known), round(eps * budget))]
    rest = [i for i in range(total) if i not in set(exploit)]
    chosen = exploit + rng.sample(rest, budget - len(exploit))
    roles: list[list[int]] = [[] for _ in range(num_layers)]
    for i in chosen:
        roles[i // num_experts].append(i % num_experts)
    return [sorted(r) for r in roles]


@torch.no_grad()
def zo_grad_sq(loss: Callable[[], float], tensors: list[torch.Tensor], sigma: float, probes: int,
               generator: torch.Generator) -> float:
    """Zeroth-order estimate of ||g||^2 of ``loss`` w.r.t. ``tensors``: mean over ``probes`` of
    ((L(W + sigma u) - L(W)) / sigma)^2 with u ~ N(0, I), since E[(g . u)^2] = ||g||^2. Forward passes only;
    ``tensors`` are restored exactly."""
    base = loss()
    saved = [t.clone() for t in tensors]
    total = 0.0
    for _ in range(probes):
        for t in tensors:
            t.add_(sigma * torch.randn(t.shape, generator=generator, dtype=t.dtype))
        total += ((loss() - base) / sigma) ** 2
        for t, s in zip(tensors, saved, strict=True):
            t.copy_(s)
    return total / max(probes, 1)

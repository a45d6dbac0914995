"""FLUX's dynamic expert role assignment: Oort-style utility, its frequency initialisation, budgeted
selection with an exploitation/exploration split eps, eps's schedule, and zeroth-order gradient-norm
estimates that score exploration experts without training them."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch


def utility(tokens: torch.Tensor, grad_sq: torch.Tensor) -> torch.Tensor:
    """u_e = |D_e| * sqrt(mean ||g||^2) (elementwise over [L, E]); ``grad_sq`` is the mean squared gradient
    norm (open in the paper; here per optimizer step of local training, see README)."""
    return tokens.double() * grad_sq.double().clamp(min=0).sqrt()


def eps_at(round_: int, rounds: int, schedule: str, start: float, end: float, fixed: float,
           step: float = 0.1) -> float:
    """Share of tuning slots given to exploitation in ``round_`` (1-based), growing over rounds:
    ``ramp`` (the paper's form): eps_t = min(eps_max, eps_0 + d * t) with t = round_ - 1, eps_0 = ``start``,
    eps_max = ``end``, d = ``step``; ``linear``: from ``start`` (round 1) to ``end`` (last round);
    ``fixed``: ``fixed``."""
    if schedule == "fixed":
        return fixed
    if schedule == "ramp":
        return min(end, start + step * (round_ - 1))
    if schedule != "linear":
        raise ValueError(f"eps schedule {schedule!r}; choose ramp, linear or fixed")
    progress = 0.0 if rounds <= 1 else min(1.0, max(0.0, (round_ - 1) / (rounds - 1)))
    return start + (end - start) * progress


def init_utilities(utilities: torch.Tensor, tokens: torch.Tensor, init: str = "frequency") -> torch.Tensor:
    """Utilities [L, E] with unknown (NaN) entries initialised from the profile.

    ``frequency`` (the paper's first-round rule): an unknown expert gets u_e = |D_e| * g_bar, the Oort utility
    with its unknown gradient norm replaced by the client's token-weighted mean known one,
    g_bar = sum_known u / sum_known |D_e| (1 while nothing is known). In the first round this ranks experts by
    normalised activation frequency f_e = |D_e| / tokens; later it keeps unknown entries on the scale of the
    known ones. ``none``: unknown entries stay NaN (never exploited, only explored).
    """
    if init == "none":
        return utilities.clone()
    if init != "frequency":
        raise ValueError(f"utility init {init!r}; choose frequency or none")
    u = utilities.double().clone()
    known = ~torch.isnan(u)
    known_tokens = float(tokens.double()[known].sum())
    g_bar = float(u[known].sum()) / known_tokens if known.any() and known_tokens > 0 else 1.0
    u[~known] = tokens.double()[~known] * g_bar
    return u


@dataclass
class Roles:
    """A client's expert roles per MoE layer: ``exploit`` (top utility) and ``explore`` (random) experts."""

    exploit: list[list[int]]
    explore: list[list[int]]

    @property
    def all(self) -> list[list[int]]:
        """Exploitation and exploration experts together, sorted per layer."""
        return [sorted(a + b) for a, b in zip(self.exploit, self.explore, strict=True)]

    def pairs(self, which: str) -> list[tuple[int, int]]:
        """(layer, expert) pairs of ``exploit``, ``explore`` or ``all``."""
        return [(layer, e) for layer, row in enumerate(getattr(self, which)) for e in row]


def select_roles(utilities: torch.Tensor, budget: int, eps: float, rng: random.Random,
                 min_exploit: int = 0) -> Roles:
    """``budget`` (layer, expert) pairs: ``max(min_exploit, round(eps * budget))`` exploitation pairs of highest
    known utility (NaN = unknown; if too few are known, the shortfall is drawn at random), the rest drawn
    uniformly from the remaining pairs (exploration).

    Every expert costs the same memory, so the knapsack ``max sum u_e x_e s.t. sum x_e <= B_tune`` is solved
    by taking the top utilities. Returns sorted expert indices per layer for each role.
    """
    num_layers, num_experts = utilities.shape
    total = num_layers * num_experts
    if not 1 <= budget <= total:
        raise ValueError(f"tuning budget {budget} must be in 1..{total}")
    flat = utilities.flatten().double()
    known = [i for i in range(total) if not math.isnan(float(flat[i]))]
    known.sort(key=lambda i: (-float(flat[i]), i))
    n_exploit = min(budget, max(min_exploit, round(eps * budget)))
    exploit = known[:n_exploit]
    unknown = [i for i in range(total) if i not in set(known)]
    exploit += rng.sample(unknown, n_exploit - len(exploit))
    taken = set(exploit)
    explore = rng.sample([i for i in range(total) if i not in taken], budget - n_exploit)

    def per_layer(chosen: list[int]) -> list[list[int]]:
        rows: list[list[int]] = [[] for _ in range(num_layers)]
        for i in chosen:
            rows[i // num_experts].append(i % num_experts)
        return [sorted(r) for r in rows]

    return Roles(per_layer(exploit), per_layer(explore))


@torch.no_grad()
def zo_grad_sq(loss: Callable[[], float], tensors: list[torch.Tensor], sigma: float, probes: int,
               generator: torch.Generator) -> float:
    """Zeroth-order estimate of ||g||^2 of ``loss`` w.r.t. ``tensors`` (forward passes only):
    ||g||^2 ~ (1/P) sum_p ((L(W + xi_p) - L(W)) / sigma)^2 with xi_p = sigma * u_p ~ N(0, sigma^2 I), P = ``probes``,
    since E[(g . u)^2] = ||g||^2 (a first-order expansion of L). FLUX's utility of a scored expert is then
    |D_e| * sqrt of this estimate (:func:`utility`). ``tensors`` are restored exactly."""
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

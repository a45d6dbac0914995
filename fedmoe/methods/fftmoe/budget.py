"""Trainable parameters and per-client FLOPs of FFT-MoE next to FedIT and HetLoRA, so "equal budget" is shown.

Every count is computed for ``fed.priced_config`` (the trained model, or the paper-scale architecture in
projection mode) with the same helpers the methods price their rounds with: :func:`adapter_params` here
for FFT-MoE, :func:`fedmoe.fl.pricing.lora_params` for the LoRA baselines, :func:`fedmoe.fl.cost.token_flops`
for the training FLOPs per token and :mod:`fedmoe.methods.hetero.tiers` for each client's budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedmoe.fl.cost import token_flops
from fedmoe.fl.pricing import lora_params
from fedmoe.methods.base import get_method
from fedmoe.methods.hetero.tiers import DEFAULT_TIER_TFLOPS, client_tiers, ladder
from fedmoe.moe.memory import as_config


@dataclass(frozen=True)
class AdapterParams:
    """FFT-MoE adapter parameters of a config: ``total`` stored and sent, ``active`` used per token."""

    total: int
    active: int


def adapter_params(config, num_experts: int, bottleneck: int, top_k: int) -> AdapterParams:
    """Adapter parameters on every decoder block of ``config`` (hidden size d): per block the router
    ``M*d`` plus M experts of ``2*d*b``; per token the router and the K chosen experts."""
    config = as_config(config)
    d, layers = int(config.hidden_size), int(config.num_hidden_layers)
    expert = 2 * d * bottleneck
    return AdapterParams(layers * num_experts * (d + expert), layers * (num_experts * d + top_k * expert))


def client_budget(fed, args, client_id: int) -> tuple[int, int]:
    """(tier, K_n) of a client under FFT-MoE options ``args`` (:class:`~fedmoe.methods.fftmoe.method.FFTMoEArgs`):
    its compute tier and ``K_n = max(1, top_k // 2**tier)``."""
    tier = client_tiers(fed.devices, args.tiers, args.tier_tflops)[client_id]
    return tier, ladder(args.top_k, tier)


def bottleneck_for_budget(config, num_experts: int, trainable_params: int) -> int:
    """The bottleneck b (>= 1) whose adapter's stored parameters come closest to ``trainable_params``
    (e.g. FedIT's LoRA total from :func:`budget_table`, to compare methods at matched budgets)."""
    config = as_config(config)
    d, layers = int(config.hidden_size), int(config.num_hidden_layers)
    return max(1, round((trainable_params / (layers * num_experts) - d) / (2 * d)))


def budget_table(fed, methods_args: dict[str, dict[str, Any] | None], *, seq_len: int | None = None
                 ) -> list[dict[str, Any]]:
    """One row per (method, client): its tier, budget (LoRA rank or adapter top-K), trainable parameters
    stored and sent (``trainable_params``) and used per token (``active_params``), and training FLOPs per
    token (``train_flops_per_token``, at ``seq_len``, default ``fed.cfg.fed.max_length``).

    ``methods_args``: ``{"fftmoe" | "fedit" | "hetlora": method_args}`` (``None``: the method's defaults).
    """
    config, n = fed.priced_config, fed.cfg.fed.num_clients
    s = seq_len or fed.cfg.fed.max_length
    rows = []
    for method, raw in methods_args.items():
        if method == "fftmoe":
            args = get_method(method).parse_args(raw)
            for c in range(n):
                tier, k = client_budget(fed, args, c)
                p = adapter_params(config, args.num_experts, args.bottleneck, k)
                rows.append(_row(method, c, tier, "top_k", k, p.total, p.active, config, s))
        elif method in ("fedit", "hetlora"):
            args = get_method(method).parse_args(raw)
            tiers = client_tiers(fed.devices, getattr(args, "tiers", None),
                                 getattr(args, "tier_tflops", DEFAULT_TIER_TFLOPS))
            for c in range(n):
                rank = args.rank if method == "fedit" else ladder(args.rank, tiers[c])
                p = lora_params(config, rank, attention=args.attention)
                rows.append(_row(method, c, tiers[c], "rank", rank, p.total, p.active, config, s))
        else:
            raise ValueError(f"budget_table knows fftmoe, fedit and hetlora, not {method!r}")
    return rows


def _row(method, client, tier, budget_name, budget, total, active, config, seq_len) -> dict[str, Any]:
    flops = token_flops(config, seq_len=seq_len, adapter_active_params=active, trainable_active_params=active)
    return {"method": method, "client": client, "tier": tier, "budget": f"{budget_name}={budget}",
            "trainable_params": total, "active_params": active, "train_flops_per_token": flops.train}


def format_budget_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`budget_table` as a fixed-width text table (one line per row)."""
    head = f"{'method':<8} {'client':>6} {'tier':>4} {'budget':<9} {'trainable':>10} {'active':>9} {'MFLOP/token':>11}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['method']:<8} {r['client']:>6} {r['tier']:>4} {r['budget']:<9} {r['trainable_params']:>10} "
                     f"{r['active_params']:>9} {r['train_flops_per_token'] / 1e6:>11.3f}")
    return "\n".join(lines)

"""Low-rank algebra on LoRA state dicts: per-expert factors, truncation, padding, products, SVD, stacking.

A peft LoRA state holds, for each adapted module ``prefix``, ``prefix.lora_A.weight`` and
``prefix.lora_B.weight``. On a fused expert tensor (``.mlp.experts`` in the name) of ``E`` experts and rank
``r``, ``A`` is [E*r, in] with expert e's rows at ``e*r:(e+1)*r`` and ``B`` is [out, E*r] with expert e's
rank-j column at ``j*E + e`` (see :mod:`fedmoe.moe.lora`); an ordinary linear (attention) is one group.
:func:`to_factors` turns that into ``{prefix: (A [G, r, in], B [G, out, r])}`` with G groups (experts),
where every operation below is plain batched linear algebra; :func:`from_factors` goes back.

All aggregation rules of FLAME and its baselines are written on factors:
``weighted_factor_average`` (FedAvg, HetLoRA's zero-padded average with ``product_norms`` weights, FLAME's
per-expert weights),
``weighted_product_average`` (FlexLoRA), ``svd_factors`` (FlexLoRA's redistribution) and
``stack_factors`` (FLoRA).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
EXPERT_MARK = ".mlp.experts"

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def is_expert_prefix(prefix: str) -> bool:
    """Whether a LoRA module prefix adapts a fused expert tensor (one LoRA per expert)."""
    return EXPERT_MARK in prefix


def prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """Adapted module prefixes of a LoRA state, sorted; every prefix must have both A and B."""
    a = {k[: -len(A_SUFFIX)] for k in state if k.endswith(A_SUFFIX)}
    b = {k[: -len(B_SUFFIX)] for k in state if k.endswith(B_SUFFIX)}
    if a != b or len(a) * 2 != len(state):
        raise KeyError(f"not a LoRA state of A/B pairs: unmatched {sorted(a ^ b)[:3]}, "
                       f"other keys {[k for k in state if not k.endswith((A_SUFFIX, B_SUFFIX))][:3]}")
    return sorted(a)


def to_factors(state: dict[str, torch.Tensor], num_experts: int) -> Factors:
    """``{prefix: (A [G, r, in], B [G, out, r])}`` from a peft LoRA state (G = ``num_experts`` on expert
    tensors, 1 elsewhere); the rank is read from the shapes, so truncated states convert too."""
    out = {}
    for p in prefixes(state):
        a, b = state[p + A_SUFFIX], state[p + B_SUFFIX]
        g = num_experts if is_expert_prefix(p) else 1
        if a.shape[0] % g or b.shape[1] != a.shape[0]:
            raise ValueError(f"{p}: A {tuple(a.shape)} and B {tuple(b.shape)} do not hold {g} rank-r groups")
        r = a.shape[0] // g
        out[p] = (a.reshape(g, r, a.shape[1]), b.reshape(b.shape[0], r, g).permute(2, 0, 1))
    return out


def from_factors(factors: Factors) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_factors`: the peft LoRA state (contiguous tensors)."""
    state = {}
    for p, (a, b) in factors.items():
        g, r, n_in = a.shape
        state[p + A_SUFFIX] = a.reshape(g * r, n_in).contiguous()
        state[p + B_SUFFIX] = b.permute(1, 2, 0).reshape(b.shape[1], r * g).contiguous()
    return state


def rank_of(factors: Factors) -> int:
    """The (common) rank of a factor dict."""
    ranks = {a.shape[1] for a, _ in factors.values()}
    if len(ranks) != 1:
        raise ValueError(f"factors mix ranks {sorted(ranks)}")
    return ranks.pop()


def truncate(factors: Factors, rank: int) -> Factors:
    """Keep the first ``rank`` components of every group (HetLoRA's and FlexLoRA's rank-r_i copy)."""
    if rank < 1 or rank > rank_of(factors):
        raise ValueError(f"cannot truncate rank-{rank_of(factors)} factors to rank {rank}; need 1 <= rank <= it")
    return {p: (a[:, :rank].clone(), b[:, :, :rank].clone()) for p, (a, b) in factors.items()}


def pad(factors: Factors, rank: int) -> Factors:
    """Zero-pad every group to ``rank`` components (the added rows of A and columns of B are zero)."""
    out = {}
    for p, (a, b) in factors.items():
        extra = rank - a.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad rank-{a.shape[1]} factors down to rank {rank}; use truncate")
        out[p] = (torch.cat([a, a.new_zeros(a.shape[0], extra, a.shape[2])], 1),
                  torch.cat([b, b.new_zeros(b.shape[0], b.shape[1], extra)], 2))
    return out


def products(factors: Factors) -> dict[str, torch.Tensor]:
    """``{prefix: B @ A}`` [G, out, in] (without LoRA's ``alpha / r`` scaling)."""
    return {p: b.double() @ a.double() for p, (a, b) in factors.items()}


def product_norms(all_factors: Sequence[Factors]) -> dict[str, torch.Tensor]:
    """``{prefix: [N, G]}``: the Frobenius norm ``||B_i A_i||_F`` of every client's LoRA of every group (HetLoRA's
    sparsity weights; zero padding does not change a product, so ranks may differ)."""
    prods = [products(f) for f in all_factors]
    return {p: torch.stack([pr[p].flatten(1).norm(dim=1) for pr in prods]) for p in prods[0]}


def _normalised(weights: Sequence[float]) -> torch.Tensor:
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64)
    if w.numel() == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum (e.g. example counts), got {w.tolist()}")
    return w / w.sum()


def weighted_factor_average(all_factors: Sequence[Factors], weights: Sequence[float] | dict[str, torch.Tensor]
                            ) -> Factors:
    """Average A and B separately over clients, padding lower ranks with zeros to the largest rank.

    ``weights``: one number per client (FedAvg / HetLoRA: ``|D_i|``), or ``{prefix: [N, G] tensor}`` giving
    each client's weight for each group (FLAME's per-expert ``gamma_ij``); a group whose weights sum to
    zero falls back to the average of the clients' values with equal weights.
    """
    if not all_factors:
        raise ValueError("no client factors to average (no client returned an update)")
    keys = set(all_factors[0])
    if any(set(f) != keys for f in all_factors):
        raise KeyError("clients' LoRA states adapt different modules; every client must send the same prefixes")
    rank = max(rank_of(f) for f in all_factors)
    padded = [pad(f, rank) for f in all_factors]
    out = {}
    for p in sorted(keys):
        a = torch.stack([f[p][0].double() for f in padded])  # [N, G, r, in]
        b = torch.stack([f[p][1].double() for f in padded])  # [N, G, out, r]
        if isinstance(weights, dict):
            w = torch.as_tensor(weights[p], dtype=torch.float64)
            if w.shape != a.shape[:2] or (w < 0).any():
                raise ValueError(f"{p}: per-group weights need shape {tuple(a.shape[:2])} and be >= 0, "
                                 f"got {tuple(w.shape)}")
            total = w.sum(0, keepdim=True)
            w = torch.where(total > 0, w / total.clamp_min(1e-300), torch.full_like(w, 1 / w.shape[0]))
        else:
            if len(weights) != len(all_factors):
                raise ValueError(f"{len(all_factors)} clients but {len(weights)} weights")
            w = _normalised(weights)[:, None].expand(a.shape[:2])
        dtype = all_factors[0][p][0].dtype
        out[p] = ((w[..., None, None] * a).sum(0).to(dtype), (w[..., None, None] * b).sum(0).to(dtype))
    return out


def weighted_product_average(all_factors: Sequence[Factors], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FlexLoRA's aggregate: ``sum_i w_i B_i A_i / sum_i w_i`` per group, full size [G, out, in] (float64)."""
    w = _normalised(weights)
    if len(w) != len(all_factors):
        raise ValueError(f"{len(all_factors)} clients but {len(w)} weights")
    prods = [products(f) for f in all_factors]
    return {p: sum(wi * pr[p] for wi, pr in zip(w.tolist(), prods, strict=True)) for p in prods[0]}


def svd_factors(deltas: dict[str, torch.Tensor], rank: int, dtype: torch.dtype = torch.float32) -> Factors:
    """Best rank-``rank`` factors of each ``[G, out, in]`` matrix (truncated SVD, Eckart-Young).

    ``B = U_r diag(S_r)`` and ``A = V_r^T``: the singular values go into B so that a direction with a zero
    singular value keeps a non-zero A row and a zero B column, a live LoRA component (as at LoRA init),
    where splitting ``sqrt(S)`` into both factors would leave it dead (zero A and B never train).
    """
    out = {}
    for p, d in deltas.items():
        u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
        if rank > s.shape[-1]:
            raise ValueError(f"{p}: rank {rank} exceeds min(out, in) = {s.shape[-1]}")
        out[p] = (vh[:, :rank].to(dtype).contiguous(), (u[:, :, :rank] * s[:, None, :rank]).to(dtype).contiguous())
    return out


def stack_factors(all_factors: Sequence[Factors], weights: Sequence[float]) -> Factors:
    """FLoRA's stacking: ``A = [A_1; ...; A_N]`` and ``B = [p_1 B_1, ..., p_N B_N]`` with ``p_i = w_i / sum w``,
    so ``B @ A = sum_i p_i B_i A_i`` exactly, with rank ``sum_i r_i``."""
    w = _normalised(weights)
    if len(w) != len(all_factors):
        raise ValueError(f"{len(all_factors)} clients but {len(w)} weights")
    out = {}
    for p in all_factors[0]:
        a = torch.cat([f[p][0] for f in all_factors], 1)
        b = torch.cat([(wi * f[p][1].double()).to(f[p][1].dtype) for wi, f in zip(w.tolist(), all_factors,
                                                                                   strict=True)], 2)
        out[p] = (a, b)
    return out

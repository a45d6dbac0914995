"""Memory budgets on the priced architecture, turned into fractions of experts for the trained model.

In ``cost.mode="projection"`` a device's memory is compared with a paper-scale architecture
(:attr:`Federation.priced_config`), so budgets are computed there, in experts, and applied to the tiny
model as *fractions* of its experts. Per routed expert of ``X`` parameters, training costs
``X * (w + 2 + 8)`` bytes (weights at ``w`` bytes per parameter, bf16 gradients, Adam's two fp32
moments); a frozen bf16 expert costs ``2X``. Shared weights (attention, embeddings, norms, routers,
shared experts) and the activations of one batch are always resident.

Also here: FLUX's layer-aware merge budget ``B_non(l) = floor(b_l / sum_k b_k * B_non)`` (water-filled so it spends
exactly B_non, see :func:`layer_merge_budget`) with
``b_l = (L - l + 1) / v_l`` (:func:`layer_merge_budget`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedmoe.fl.cost import DoesNotFitError
from fedmoe.fl.devices import DeviceProfile
from fedmoe.fl.pricing import training_work
from fedmoe.moe.memory import model_memory, param_counts, weight_bytes

TRAIN_STATE_BYTES = 2 + 8  # bf16 gradient + Adam moments (fp32 x2) per trainable parameter
BF16 = 2


@dataclass(frozen=True)
class PricedModel:
    """Sizes of the priced architecture: MoE layers, experts per layer, parameters per expert, top-k, and
    bytes of the always-resident shared weights at 16 and 4 bits and of one batch's activations."""

    num_layers: int
    num_experts: int
    expert_params: int
    top_k: int
    shared_bytes: dict[int, int]
    expert_bytes: dict[int, int]
    activation_bytes: int

    @property
    def total_experts(self) -> int:
        """Routed experts in the whole model."""
        return self.num_layers * self.num_experts


def priced_model(fed) -> PricedModel:
    """:class:`PricedModel` of ``fed.priced_config`` with ``fed``'s batch (batch_size * max_length tokens)."""
    config = fed.priced_config
    counts = param_counts(config)
    layers = counts.num_moe_layers
    shared, expert = {}, {}
    for bits in (16, 4):
        b = {"experts": bits, "linears": bits}
        one, two = weight_bytes(config, experts_per_layer=1, bits=b), weight_bytes(config, experts_per_layer=2, bits=b)
        expert[bits] = (two - one) // layers
        shared[bits] = one - layers * expert[bits]
    act = model_memory(config, batch_tokens=fed.cfg.fed.batch_size * fed.cfg.fed.max_length).activations
    return PricedModel(layers, counts.experts_per_layer[0], counts.expert, int(config.num_experts_per_tok),
                       shared, expert, act)


def spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible (earlier parts get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _free(pm: PricedModel, device: DeviceProfile, bits: int, what: str) -> int:
    free = device.memory_bytes - pm.shared_bytes[bits] - pm.activation_bytes
    if free < pm.expert_params * (pm.expert_bytes[bits] / pm.expert_params + TRAIN_STATE_BYTES):
        raise DoesNotFitError(f"{what}: {device.name} ({device.memory_bytes / 2**30:.1f} GiB) cannot hold the shared "
                              "weights, one batch's activations and one trainable expert of the priced model; "
                              "lower fed.batch_size / fed.max_length or price a smaller cost.projection.")
    return free


@dataclass(frozen=True)
class FluxBudget:
    """A client's FLUX budget as fractions of all routed experts: ``tune`` (trained at full precision)
    and ``slots`` (bf16 merged non-tuning experts), plus the expert counts on the priced model."""

    tune: float
    slots: float
    tune_priced: int
    slots_priced: int


def flux_budget(pm: PricedModel, device: DeviceProfile, tune_memory_share: float, max_tune_fraction: float
                ) -> FluxBudget:
    """Tuning experts get ``tune_memory_share`` of the free memory (capped at ``max_tune_fraction`` of all
    experts, at least one); merged bf16 slots fill the rest (at most the non-tuning experts, at least one per
    layer)."""
    free = _free(pm, device, 16, "FLUX")
    n = pm.total_experts
    per_tune = pm.expert_params * (BF16 + TRAIN_STATE_BYTES)
    tune = max(1, min(math.floor(max_tune_fraction * n), math.floor(tune_memory_share * free / per_tune)))
    slots = min(n - tune, math.floor((free - tune * per_tune) / (pm.expert_params * BF16)))
    if slots < pm.num_layers:
        raise DoesNotFitError(f"FLUX: {device.name} leaves room for {slots} merged experts, fewer than one per MoE "
                              f"layer ({pm.num_layers}); lower method_args.tune_memory_share.")
    return FluxBudget(tune / n, slots / n, tune, slots)


def offload_resident(pm: PricedModel, device: DeviceProfile, bits: int) -> int:
    """FMD/FMQ: trainable experts (weights at ``bits`` + training state) that fit on the device; the rest
    are offloaded to host memory."""
    free = _free(pm, device, bits, "FMD/FMQ")
    return min(pm.total_experts, free // (pm.expert_bytes[bits] + pm.expert_params * TRAIN_STATE_BYTES))


def fmes_kept(pm: PricedModel, device: DeviceProfile) -> int:
    """FMES: experts per layer (same in every layer) that fit on the device, all trained at bf16."""
    free = _free(pm, device, 16, "FMES")
    per_layer = free // (pm.expert_params * (BF16 + TRAIN_STATE_BYTES) * pm.num_layers)
    if per_layer < 1:
        raise DoesNotFitError(f"FMES: {device.name} cannot hold one trainable expert per MoE layer of the priced model.")
    return int(min(pm.num_experts, per_layer))


def tiny_count(fraction: float, total: int, minimum: int = 1) -> int:
    """``floor(fraction * total)`` experts of the trained model, at least ``minimum``."""
    return max(minimum, math.floor(fraction * total + 1e-9))


def expert_work(fed, pm: PricedModel, stats, *, trainable: int, slots: int, tuned_token_share: float,
                bits: int = 16, bytes_down: float, bytes_up: float, forward_tokens: int = 0,
                host_device_bytes: float = 0) -> dict[str, float]:
    """Cost-model inputs of a round that trains ``trainable`` routed experts of the priced model while
    ``slots`` expert slots are resident (at least one per layer is priced); ``tuned_token_share`` of routed
    tokens reach a trained expert."""
    cfg = fed.cfg.fed
    return training_work(
        fed, tokens=stats.tokens, seq_len=stats.tokens / max(stats.examples, 1),
        batch_tokens=cfg.batch_size * cfg.max_length, trainable_params=trainable * pm.expert_params,
        trainable_active=int(pm.num_layers * pm.top_k * pm.expert_params * tuned_token_share),
        bytes_down=int(bytes_down), bytes_up=int(bytes_up),
        experts_per_layer=[max(1, s) for s in spread(slots, pm.num_layers)],
        bits={"experts": bits, "linears": bits}, forward_tokens=forward_tokens,
        host_device_bytes=int(host_device_bytes),
    )


def layer_merge_budget(freq: torch.Tensor, non_tuning: list[int], total: int, mode: str = "layer_aware",
                       rounding: str = "largest_remainder") -> list[int]:
    """Merged-expert slots per MoE layer, summing exactly to ``total`` (``largest_remainder``).

    ``freq`` [L, E]: activation frequencies; ``non_tuning[l]``: non-tuning experts in layer l; ``total``:
    B_non. Layer weights: ``layer_aware``: b_l = (L - l + 1) / v_l with l = 1..L and v_l the variance of
    layer l's frequencies (shallow layers and flat layers get more slots); ``uniform``: b_l = 1;
    ``one_per_layer``: one slot per layer, whatever ``total``. The paper's B_non(l) = floor(b_l / sum_k b_k
    * B_non) can hand a layer more slots than it has non-tuning experts; here the shares are *water-filled*:
    x_l = clip(lambda * b_l, lo_l, hi_l) with lo_l = 1 (0 for a layer without non-tuning experts),
    hi_l = non_tuning[l] and lambda chosen so that sum_l x_l = B_non, i.e. what a full layer cannot use goes
    to the other layers in proportion to their b_l (never clipped away). ``rounding="largest_remainder"``
    then rounds the x_l to integers with exactly B_non in total; ``"floor"`` takes floor(x_l) (the paper's
    rounding: up to L - 1 slots stay unused). B_non is first clamped to [sum lo, sum hi]: never more slots
    than non-tuning experts; a total below one slot per layer is an error (it would overspend).
    """
    num = freq.shape[0]
    if len(non_tuning) != num:
        raise ValueError(f"non_tuning has {len(non_tuning)} layers but freq has {num}")
    lo = [1 if n > 0 else 0 for n in non_tuning]
    hi = [int(n) for n in non_tuning]
    if mode == "one_per_layer":
        return lo
    if mode == "layer_aware":
        var = freq.double().var(dim=1, unbiased=False).clamp(min=1e-12)
        b = (torch.tensor([num - i for i in range(num)], dtype=torch.float64) / var).tolist()  # L - l + 1
    elif mode == "uniform":
        b = [1.0] * num
    else:
        raise ValueError(f"merge budget mode {mode!r}; choose layer_aware, uniform or one_per_layer")
    if rounding not in ("largest_remainder", "floor"):
        raise ValueError(f"rounding {rounding!r}; choose floor or largest_remainder")
    if total < sum(lo):
        raise ValueError(f"merge budget {total} is below one slot per layer with non-tuning experts ({sum(lo)}); "
                         "give at least that many merged slots (lower tune_memory_share or max_tune_fraction)")
    target = min(total, sum(hi))
    shares = water_fill(b, lo, hi, target)
    alloc = [min(h, max(low, math.floor(x + 1e-9))) for x, low, h in zip(shares, lo, hi, strict=True)]
    if rounding == "floor":
        return alloc
    order = sorted(range(num), key=lambda i: (-(shares[i] - alloc[i]), -b[i], i))
    while sum(alloc) < target:  # each pass hands one slot to every layer with room, largest remainder first
        for i in order:
            if sum(alloc) < target and alloc[i] < hi[i]:
                alloc[i] += 1
    return alloc


def water_fill(weights: list[float], lo: list[int], hi: list[int], total: float) -> list[float]:
    """x_l = clip(lambda * w_l, lo_l, hi_l) with lambda such that sum x_l = ``total`` (bisection on log lambda;
    ``total`` must lie in [sum lo, sum hi]). Shares a bounded layer cannot take go to the others in
    proportion to their weights."""
    if not sum(lo) - 1e-9 <= total <= sum(hi) + 1e-9:
        raise ValueError(f"cannot water-fill {total} into bounds summing to [{sum(lo)}, {sum(hi)}]")

    def filled(lam: float) -> list[float]:
        return [min(h, max(low, lam * w)) for w, low, h in zip(weights, lo, hi, strict=True)]

    positive = [w for w in weights if w > 0] or [1.0]
    a, z = math.log(1e-300), math.log(max(max(hi), 1) / min(positive) * 2)
    for _ in range(200):
        mid = (a + z) / 2
        if sum(filled(math.exp(mid))) < total:
            a = mid
        else:
            z = mid
    return filled(math.exp(z))

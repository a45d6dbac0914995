"""Memory budgets on the priced architecture, turned into fractions of experts for the trained model.

In ``cost.mode="projection"`` a device's memory is compared with a paper-scale architecture
(:attr:`Federation.priced_config`), so budgets are computed there, in experts, and applied to the tiny
model as *fractions* of its experts. Per routed expert of ``X`` parameters, training costs
``X * (w + 2 + 8)`` bytes (weights at ``w`` bytes per parameter, bf16 gradients, Adam's two fp32
moments); a frozen bf16 expert costs ``2X``. Shared weights (attention, embeddings, norms, routers,
shared experts), the activations of one batch and the attention training state (``reserved``, see
:mod:`fedmoe.methods.experts.attention`) are always resident.

Offloading (FMD, FMQ; :func:`offload_work`): experts that do not fit stay in host RAM with their training
state and cross the host link each step; the host runs their optimizer step. FMQ keeps a bf16 master copy
of every 4-bit expert it trains and pays for dequantising (and re-quantising) 4-bit weights.

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
from fedmoe.methods.experts.attention import AttentionCost
from fedmoe.methods.experts.priced import PricedModel

TRAIN_STATE_BYTES = 2 + 8  # bf16 gradient + Adam moments (fp32 x2) per trainable parameter
BF16 = 2
HOST_ADAM_BYTES = 2 + 2 * 2 + 2 * 8
"""Host DRAM bytes one Adam step moves per parameter: read the bf16 gradient (2), read and write the bf16
weight (4), read and write both fp32 moments (16). Adam does ~10 FLOPs per parameter, far below what a CPU
does in the time these 22 bytes take, so the step is priced as memory-bound: traffic / host bandwidth."""
NO_ATTENTION = AttentionCost(0, 0, 0)


def spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible (earlier parts get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _free(pm: PricedModel, device: DeviceProfile, bits: int, what: str, reserved: int = 0) -> int:
    free = device.memory_bytes - pm.shared_bytes[bits] - pm.activation_bytes - reserved
    if free < pm.expert_params * (pm.expert_bytes[bits] / pm.expert_params + TRAIN_STATE_BYTES):
        raise DoesNotFitError(f"{what}: {device.name} ({device.memory_bytes / 2**30:.1f} GiB) cannot hold the shared "
                              "weights, one batch's activations, the attention training state and one trainable "
                              "expert of the priced model; lower fed.batch_size / fed.max_length, use "
                              "attention='lora', cost.gradient_checkpointing or a smaller cost.projection.")
    return free


@dataclass(frozen=True)
class FluxBudget:
    """A client's FLUX budget as fractions of all routed experts: ``tune`` (trained at full precision)
    and ``slots`` (bf16 merged non-tuning experts), plus the expert counts on the priced model."""

    tune: float
    slots: float
    tune_priced: int
    slots_priced: int


def flux_budget(pm: PricedModel, device: DeviceProfile, tune_memory_share: float, max_tune_fraction: float,
                reserved: int = 0) -> FluxBudget:
    """Tuning experts get ``tune_memory_share`` of the free memory (after ``reserved`` bytes, e.g. attention
    training; capped at ``max_tune_fraction`` of all experts, at least one); merged bf16 slots fill the rest
    (at most the non-tuning experts, at least one per layer)."""
    free = _free(pm, device, 16, "FLUX", reserved)
    n = pm.total_experts
    per_tune = pm.expert_params * (BF16 + TRAIN_STATE_BYTES)
    tune = max(1, min(math.floor(max_tune_fraction * n), math.floor(tune_memory_share * free / per_tune)))
    slots = min(n - tune, math.floor((free - tune * per_tune) / (pm.expert_params * BF16)))
    if slots < pm.num_layers:
        raise DoesNotFitError(f"FLUX: {device.name} leaves room for {slots} merged experts, fewer than one per MoE "
                              f"layer ({pm.num_layers}); lower method_args.tune_memory_share.")
    return FluxBudget(tune / n, slots / n, tune, slots)


def master_bytes(bits: int) -> int:
    """Bytes per parameter of the bf16 master copy a trained expert stored at ``bits`` < 16 needs (0 at 16)."""
    return BF16 if bits < 16 else 0


def offload_resident(pm: PricedModel, device: DeviceProfile, bits: int, reserved: int = 0) -> int:
    """FMD/FMQ: trainable experts (weights at ``bits``, a bf16 master copy when ``bits`` < 16, training
    state) that fit on the device after ``reserved`` bytes; the rest are offloaded to host memory."""
    free = _free(pm, device, bits, "FMD/FMQ", reserved)
    per_expert = pm.expert_bytes[bits] + pm.expert_params * (master_bytes(bits) + TRAIN_STATE_BYTES)
    return min(pm.total_experts, free // per_expert)


def offload_work(pm: PricedModel, resident: int, bits: int, steps: int, transfers_per_step: int) -> dict[str, int]:
    """Cost-model inputs of FMD (``bits`` = 16) / FMQ (4) offloading, for ``steps`` optimizer steps.

    With ``n_off`` = experts offloaded, X parameters each, weights of ``w_b`` bytes at ``bits`` and
    ``q`` = NF4 bytes per parameter:

    - host link, per step: ``n_off * ((transfers_per_step - 1) * w_b + 2X)`` (weights in for the forward and
      the backward pass, bf16 gradients out);
    - host RAM: ``n_off * (w_b + X * (master + 10))`` (weights, FMQ's bf16 master, gradient, Adam moments);
    - host DRAM traffic, per step: ``n_off * X * 22`` (the host Adam step, :data:`HOST_ADAM_BYTES`), plus for
      FMQ ``n_off * X * (2 + q)`` (re-quantising the updated master to 4 bits before sending it);
    - device DRAM traffic, per step (FMQ only): every expert dequantised for the forward and the backward pass
      and each resident one re-quantised after its update: ``(2 * all + resident) * X * (q + 2)``.
    """
    x, offloaded = pm.expert_params, pm.total_experts - resident
    quant = pm.expert_bytes[4] / x + BF16  # read 4-bit + write bf16 (or the reverse) per parameter
    link = offloaded * ((transfers_per_step - 1) * pm.expert_bytes[bits] + pm.expert_bytes[16])
    host_traffic = offloaded * x * (HOST_ADAM_BYTES + (quant if bits < 16 else 0))
    device_traffic = (2 * pm.total_experts + resident) * x * quant if bits < 16 else 0
    return {"host_device_bytes": int(link * steps),
            "host_memory_bytes": int(offloaded * (pm.expert_bytes[bits] + x * (master_bytes(bits) + TRAIN_STATE_BYTES))),
            "host_memory_traffic": int(host_traffic * steps), "device_memory_traffic": int(device_traffic * steps)}


def fmes_kept(pm: PricedModel, device: DeviceProfile, reserved: int = 0) -> int:
    """FMES: experts per layer (same in every layer) that fit on the device after ``reserved`` bytes, all
    trained at bf16."""
    free = _free(pm, device, 16, "FMES", reserved)
    per_layer = free // (pm.expert_params * (BF16 + TRAIN_STATE_BYTES) * pm.num_layers)
    if per_layer < 1:
        raise DoesNotFitError(f"FMES: {device.name} cannot hold one trainable expert per MoE layer of the priced model.")
    return int(min(pm.num_experts, per_layer))


def tiny_count(fraction: float, total: int, minimum: int = 1) -> int:
    """``floor(fraction * total)`` experts of the trained model, at least ``minimum``."""
    return max(minimum, math.floor(fraction * total + 1e-9))


def expert_work(fed, pm: PricedModel, stats, *, trainable: int, slots: int, tuned_token_share: float,
                bits: int = 16, bytes_down: float, bytes_up: float, forward_tokens: int = 0,
                attention: AttentionCost = NO_ATTENTION, offload: dict[str, int] | None = None) -> dict[str, float]:
    """Cost-model inputs of a round that trains ``trainable`` routed experts of the priced model while
    ``slots`` expert slots are resident (at least one per layer is priced); ``tuned_token_share`` of routed
    tokens reach a trained expert. ``attention``: the attention training priced on top (memory, FLOPs, and its
    tensors added to ``bytes_down`` and ``bytes_up``); ``offload``: :func:`offload_work`'s quantities.
    With ``bits`` < 16 the trained experts' bf16 master copies are resident too."""
    cfg = fed.cfg.fed
    trained_attention = attention.params if attention.adapter_active == 0 else attention.adapter_active
    return training_work(
        fed, tokens=stats.tokens, seq_len=stats.tokens / max(stats.examples, 1),
        batch_tokens=cfg.batch_size * cfg.max_length, trainable_params=trainable * pm.expert_params,
        trainable_active=int(pm.num_layers * pm.top_k * pm.expert_params * tuned_token_share) + trained_attention,
        adapter_active=attention.adapter_active,
        bytes_down=int(bytes_down) + attention.wire_bytes, bytes_up=int(bytes_up) + attention.wire_bytes,
        experts_per_layer=[max(1, s) for s in spread(slots, pm.num_layers)],
        bits={"experts": bits, "linears": bits}, forward_tokens=forward_tokens,
        extra_memory_bytes=attention.memory_bytes + trainable * pm.expert_params * master_bytes(bits),
        compute_experts_per_layer=None if offload is None else pm.num_experts,  # offloaded experts compute too
        **(offload or {}),
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

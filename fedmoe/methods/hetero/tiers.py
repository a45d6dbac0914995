"""Compute tiers: which clients are strong or weak, and the budget (LoRA rank or top-k) each tier gets.

A client's tier comes from its device profile (:mod:`fedmoe.fl.devices`): tier 0 if its dense bf16 FLOP/s
reach the first threshold, tier 1 if they reach the second, and so on (defaults 60 and 20 TFLOP/s: an
RTX 3090/4090 or a data-centre GPU is tier 0, an RTX 3060 or a Jetson AGX Orin tier 1, a Jetson Orin NX
tier 2). A run may instead list every client's tier. Tier ``t`` gets ``max(1, full // 2**t)`` of a
budget: the heterogeneous-rank literature's halving ladder r, r/2, r/4 for LoRA ranks, and FLAME's
``k in {8, 4, 2, 1}`` steps scaled to the model's top-k for activated experts (top-4: 4, 2, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedmoe.fl.devices import DeviceProfile

DEFAULT_TIER_TFLOPS = (60.0, 20.0)


def device_tier(device: DeviceProfile, thresholds_tflops: Sequence[float] = DEFAULT_TIER_TFLOPS) -> int:
    """Tier of a device: how many of the (descending) TFLOP/s thresholds its dense bf16 throughput misses."""
    thresholds = [float(t) for t in thresholds_tflops]
    if thresholds != sorted(thresholds, reverse=True):
        raise ValueError(f"tier thresholds must be in descending order (strongest first), got {thresholds}")
    return sum(device.bf16_flops < t * 1e12 for t in thresholds)


def ladder(full: int, tier: int) -> int:
    """Budget of tier ``tier`` when tier 0 gets ``full``: ``max(1, full // 2**tier)``."""
    if full < 1 or tier < 0:
        raise ValueError(f"need full >= 1 and tier >= 0, got full={full}, tier={tier}")
    return max(1, full >> tier)


def client_tiers(devices: Sequence[DeviceProfile], explicit: Sequence[int] | None = None,
                 thresholds_tflops: Sequence[float] = DEFAULT_TIER_TFLOPS) -> list[int]:
    """Every client's tier: ``explicit`` (one per client) when given, else from its device."""
    if explicit is None:
        return [device_tier(d, thresholds_tflops) for d in devices]
    tiers = [int(t) for t in explicit]
    if len(tiers) != len(devices) or any(t < 0 for t in tiers):
        raise ValueError(f"method_args.tiers needs one tier >= 0 per client ({len(devices)} clients), got {tiers}; "
                         "or leave it unset to derive tiers from the device fleet (cost.fleet)")
    return tiers

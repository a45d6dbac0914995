"""Helpers FLAME and the heterogeneous-LoRA baselines share (not a method): compute tiers, low-rank algebra
on LoRA states, base-weight merging and the common client plumbing."""

from fedmoe.methods.hetero.base import HeteroArgs, HeteroLoRA
from fedmoe.methods.hetero.tiers import client_tiers, device_tier, ladder

__all__ = ["HeteroArgs", "HeteroLoRA", "client_tiers", "device_tier", "ladder"]

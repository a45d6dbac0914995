"""The kit of LoRA methods (not a method): the LoRA server and client bases FedIT, FLAME and the
heterogeneous-LoRA baselines share, compute tiers, low-rank algebra on LoRA states and base-weight merging."""

from fedmoe.methods.hetero.base import (
    HeteroArgs,
    HeteroClient,
    HeteroServer,
    LoRAArgs,
    LoRAClient,
    LoRAServer,
    TierBudget,
)
from fedmoe.methods.hetero.tiers import client_tiers, device_tier, ladder

__all__ = ["HeteroArgs", "HeteroClient", "HeteroServer", "LoRAArgs", "LoRAClient", "LoRAServer", "TierBudget",
           "client_tiers", "device_tier", "ladder"]

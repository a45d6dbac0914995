"""HetLoRA: heterogeneous LoRA ranks by compute tier, zero-padding aggregation."""

from fedmoe.methods.hetlora.method import HETLORA, HetLoRAClient, HetLoRAServer

__all__ = ["HETLORA", "HetLoRAClient", "HetLoRAServer"]

"""HetLoRA: heterogeneous LoRA ranks by compute tier, zero-padding aggregation."""

from fedmoe.methods.hetlora.method import HetLoRA

__all__ = ["HetLoRA"]

"""FLoRA: heterogeneous ranks aggregated exactly by stacking; the base model absorbs every round's update."""

from fedmoe.methods.flora.method import FLORA, FLoRAClient, FLoRAServer

__all__ = ["FLORA", "FLoRAClient", "FLoRAServer"]

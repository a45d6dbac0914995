"""FlexLoRA: heterogeneous ranks; the server averages full-size LoRA products and redistributes by SVD."""

from fedmoe.methods.flexlora.method import FLEXLORA, FlexLoRAServer

__all__ = ["FLEXLORA", "FlexLoRAServer"]

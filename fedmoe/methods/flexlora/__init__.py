"""FlexLoRA: heterogeneous ranks; the server averages full-size LoRA products and redistributes by SVD."""

from fedmoe.methods.flexlora.method import FlexLoRA

__all__ = ["FlexLoRA"]

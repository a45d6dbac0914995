"""Uniform access to MoE layers across transformers families, and the expert operations built on it."""

from fedmoe.moe.families import SUPPORTED_FAMILIES, tiny_config

__all__ = ["SUPPORTED_FAMILIES", "tiny_config"]

"""FLAME: federated fine-tuning through an adaptive sparse MoE (client top-k, rescaler, activation-aware FedAvg)."""

from fedmoe.methods.flame.method import FLAME, FlameArgs, FlameClient, FlameServer

__all__ = ["FLAME", "FlameArgs", "FlameClient", "FlameServer"]

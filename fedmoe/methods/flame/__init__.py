"""FLAME: federated fine-tuning through an adaptive sparse MoE (client top-k, rescaler, activation-aware FedAvg)."""

from fedmoe.methods.flame.method import Flame, FlameArgs

__all__ = ["Flame", "FlameArgs"]

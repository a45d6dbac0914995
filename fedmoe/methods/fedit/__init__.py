"""FedIT: homogeneous LoRA + FedAvg, with centralised and local-only reference lines."""

from fedmoe.methods.fedit.method import Central, FedIT, FedITArgs, LocalOnly

__all__ = ["Central", "FedIT", "FedITArgs", "LocalOnly"]

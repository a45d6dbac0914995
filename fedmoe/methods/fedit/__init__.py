"""FedIT: homogeneous LoRA + FedAvg, with centralised and local-only reference lines."""

from fedmoe.methods.fedit.method import (
    CENTRAL,
    FEDIT,
    LOCAL,
    CentralClient,
    CentralServer,
    FedITArgs,
    FedITClient,
    FedITServer,
    LocalOnlyServer,
)

__all__ = ["CENTRAL", "FEDIT", "LOCAL", "CentralClient", "CentralServer", "FedITArgs", "FedITClient", "FedITServer",
           "LocalOnlyServer"]

"""FLUX's baselines (Chen et al., 2026): FMD (whole model, experts offloaded), FMQ (whole model on INT4 base
weights) and FMES (most frequent experts kept, the rest dropped) and FedIT on an NF4 base model (``fedit-nf4``)."""

from fedmoe.methods.flux_baselines.fedit_nf4 import FedITNF4
from fedmoe.methods.flux_baselines.fmd import FMD, FMDArgs
from fedmoe.methods.flux_baselines.fmes import FMES, FMESArgs
from fedmoe.methods.flux_baselines.fmq import FMQ, FMQArgs

__all__ = ["FedITNF4", "FMD", "FMDArgs", "FMES", "FMESArgs", "FMQ", "FMQArgs"]

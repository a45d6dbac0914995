"""FLUX's baselines (Chen et al., 2026): FMD (whole model, experts offloaded), FMQ (whole model on INT4 base
weights) and FMES (most frequent experts kept, the rest dropped). FedIT is ``fedmoe.methods.fedit``."""

from fedmoe.methods.flux_baselines.fmd import FMD, FMDArgs
from fedmoe.methods.flux_baselines.fmes import FMES, FMESArgs
from fedmoe.methods.flux_baselines.fmq import FMQ, FMQArgs

__all__ = ["FMD", "FMDArgs", "FMES", "FMESArgs", "FMQ", "FMQArgs"]

"""FLUX's baselines (Chen et al., 2026): FMD (whole model, experts offloaded), FMQ (whole model on INT4 base
weights) and FMES (most frequent experts kept, the rest dropped) and FedIT on an NF4 base model (``fedit-nf4``)."""

from fedmoe.methods.flux_baselines.fedit_nf4 import FEDIT_NF4, FedITNF4Client, FedITNF4Server
from fedmoe.methods.flux_baselines.fmd import FMD, FMDArgs, FMDClient, FMDServer
from fedmoe.methods.flux_baselines.fmes import FMES, FMESArgs, FMESClient, FMESServer
from fedmoe.methods.flux_baselines.fmq import FMQ, FMQArgs, FMQClient, FMQServer

__all__ = ["FEDIT_NF4", "FMD", "FMES", "FMQ", "FMDArgs", "FMDClient", "FMDServer", "FMESArgs", "FMESClient",
           "FMESServer", "FMQArgs", "FMQClient", "FMQServer", "FedITNF4Client", "FedITNF4Server"]

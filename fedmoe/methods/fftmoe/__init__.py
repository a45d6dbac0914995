"""FFT-MoE: sparse MoE adapters with per-client top-K, a heterogeneity-aware auxiliary loss, |D_n|-weighted FedAvg."""

from fedmoe.methods.fftmoe.adapter import attach_moe_adapters
from fedmoe.methods.fftmoe.budget import budget_table, format_budget_table
from fedmoe.methods.fftmoe.method import FFTMOE, FFTMoEArgs, FFTMoEClient, FFTMoEServer

__all__ = ["FFTMOE", "FFTMoEArgs", "FFTMoEClient", "FFTMoEServer", "attach_moe_adapters", "budget_table",
           "format_budget_table"]

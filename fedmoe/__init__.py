"""fedmoe: federated fine-tuning of Mixture-of-Experts LLMs (FLUX, FFT-MoE, FLAME and baselines)."""

__version__ = "0.1.0"

"""fedmoe: federated fine-tuning of Mixture-of-Experts LLMs (FLUX, FFT-MoE, FLAME and baselines)."""

import logging

__version__ = "0.1.0"


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


# On AVX512-BF16 CPUs bitsandbytes probes the Hub, at import, for an inference kernel the kit switches off
# (fedmoe.moe.quant); offline that probe logs two warnings into every run and notebook. Only those are dropped.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community"))
logging.getLogger("kernels._internals.hf_hub").addFilter(
    _DropMessages("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"))

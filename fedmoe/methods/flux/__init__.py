"""FLUX: quantized profiling, layer-aware merging of non-tuning experts, dynamic expert role assignment."""

from fedmoe.methods.flux.args import FluxArgs
from fedmoe.methods.flux.method import FLUX, FluxClient, FluxServer

__all__ = ["FLUX", "FluxArgs", "FluxClient", "FluxServer"]

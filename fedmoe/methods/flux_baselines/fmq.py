"""FMQ: the whole model fine-tuned on INT4 (NF4) base weights. Each client trains all routed experts starting
from the NF4-quantized global model (fake-quant: dequantized values in full precision); decoder linears
(attention) run as bitsandbytes 4-bit layers. Lower memory and traffic than FMD, but quantization error."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.contract import ClientTask
from fedmoe.methods.base import register
from fedmoe.methods.flux.experts import load_fused_state
from fedmoe.methods.flux_baselines.fmd import FMD
from fedmoe.moe.quant import SCHEMES, quantize_model


@dataclass
class FMQArgs:
    """``scheme``: 4-bit format; ``quantize_linears``: also run attention in 4 bits; ``eval_quantized``:
    score the global model as FMQ deploys it (quantized); ``transfers_per_step`` as in FMD."""

    scheme: str = "nf4"
    quantize_linears: bool = True
    eval_quantized: bool = True
    transfers_per_step: int = 3

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES or self.transfers_per_step < 1:
            raise ValueError(f"scheme={self.scheme!r} must be one of {SCHEMES} and transfers_per_step="
                             f"{self.transfers_per_step} >= 1")


@register("fmq")
class FMQ(FMD):
    """FMD on a 4-bit base model (see module docstring)."""

    Args = FMQArgs
    bits = 4

    def _quantized(self, model):
        return quantize_model(model, self.args.scheme, linears=self.args.quantize_linears, copy_model=False).model

    def client_model(self, task: ClientTask):
        return self._quantized(load_fused_state(self.fed.base_model(), task.tensors))

    def eval_model(self):
        model = super().eval_model()
        if not self.args.eval_quantized:
            return model
        return self._quantized(load_fused_state(self.fed.base_model(), self.global_state)).eval()

"""FMQ: the whole model fine-tuned on INT4 (NF4) base weights. Each client trains all routed experts starting
from the NF4-quantized global model (fake-quant: dequantized values in full precision); decoder linears
(attention) run as bitsandbytes 4-bit layers. Lower memory and traffic than FMD, but quantization error, a
bf16 master copy per trained expert and the cost of (de)quantising weights every step (priced in
:func:`fedmoe.methods.flux.budget.offload_work`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.contract import ClientTask
from fedmoe.methods.base import register
from fedmoe.methods.experts import attention as attn
from fedmoe.methods.experts.attention import AttentionArgs
from fedmoe.methods.experts.base import load_fused_state
from fedmoe.methods.flux_baselines.fmd import FMDClient, FMDServer
from fedmoe.moe.quant import SCHEMES, quantize_model


@dataclass
class FMQArgs(AttentionArgs):
    """``scheme``: 4-bit format; ``quantize_linears``: also run attention in 4 bits; ``eval_quantized``:
    score the global model as FMQ deploys it (quantized); ``transfers_per_step`` as in FMD. Attention options:
    :class:`AttentionArgs` (``full`` needs ``quantize_linears=False``: 4-bit linears cannot be trained)."""

    scheme: str = "nf4"
    quantize_linears: bool = True
    eval_quantized: bool = True
    transfers_per_step: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scheme not in SCHEMES or self.transfers_per_step < 1:
            raise ValueError(f"scheme={self.scheme!r} must be one of {SCHEMES} and transfers_per_step="
                             f"{self.transfers_per_step} >= 1")
        if self.attention == "full" and self.quantize_linears:
            raise ValueError("FMQ: attention='full' trains the attention weights, which 4-bit linears cannot hold; "
                             "set quantize_linears=False or use attention='lora'")


class FMQHalf:
    """What both halves of FMQ share: 4-bit base weights and how a model is quantized."""

    bits = 4

    def quantized(self, model):
        """``model`` with 4-bit (fake-quant) experts and optionally 4-bit attention linears, in place."""
        return quantize_model(model, self.args.scheme, linears=self.args.quantize_linears, copy_model=False).model


class FMQServer(FMQHalf, FMDServer):
    """FMD's server; scores the global model quantized, as FMQ deploys it (``eval_quantized``)."""

    def eval_model(self):
        if not self.args.eval_quantized:
            return super().eval_model()
        model = attn.load_attention(load_fused_state(self.fed.base_model(), self.global_state), self.args,
                                    self.global_state)
        return attn.attach(self.quantized(model), self.args, self.global_state).eval()


class FMQClient(FMQHalf, FMDClient):
    """FMD's client on the NF4-quantized global model."""

    def client_model(self, task: ClientTask):
        return self.quantized(self.global_model(task))


FMQ = register("fmq", FMQArgs, FMQServer, FMQClient)

"""FedIT on an NF4 base model (QLoRA-style, as Flower's FlowerTune LLM template): the FedIT baseline of the
FLUX experiments. On the priced LLaMA-MoE-3.5B the bf16 base model does not fit the 12 GB and 16 GB
consumer devices (the runner refuses the work), so the base weights (routed experts and decoder linears) are
NF4 fake-quantized (bitsandbytes, dequantized values) and priced at 4 bits; the LoRA adapter trains as in
FedIT and the server averages it (FedAvg)."""

from __future__ import annotations

import torch
from torch import nn

from fedmoe.methods.base import register
from fedmoe.methods.fedit.method import FedITArgs, FedITClient, FedITServer
from fedmoe.moe.layers import decoder_of
from fedmoe.moe.quant import quantize_model, quantize_tensor


def fake_quantize_base(model: nn.Module, scheme: str = "nf4") -> nn.Module:
    """NF4 fake-quantize ``model`` in place: fused experts (:func:`quantize_model`) and every plain
    ``nn.Linear`` weight of the decoder layers (kept as ``nn.Linear`` so peft LoRA attaches as usual)."""
    quantize_model(model, scheme, linears=False, copy_model=False)
    with torch.no_grad():
        for layer in decoder_of(model).layers:
            for module in layer.modules():
                if type(module) is nn.Linear:
                    module.weight.copy_(quantize_tensor(module.weight, scheme)[0])
    return model


class NF4Base:
    """Both halves of FedIT-NF4 put the LoRA on an NF4 fake-quantized base model."""

    def base_model(self) -> nn.Module:
        return fake_quantize_base(super().base_model())


class FedITNF4Server(NF4Base, FedITServer):
    """FedIT's server; its evaluation model has the NF4 base (see module docstring)."""


class FedITNF4Client(NF4Base, FedITClient):
    """FedIT's client on an NF4 base, priced with the base weights (experts and decoder linears) at 4 bits."""

    bits = {"experts": 4, "linears": 4}


FEDIT_NF4 = register("fedit-nf4", FedITArgs, FedITNF4Server, FedITNF4Client)

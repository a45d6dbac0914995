"""FedIT on an NF4 base model (QLoRA-style, as Flower's FlowerTune LLM template): the FedIT baseline of the
FLUX experiments. On the priced LLaMA-MoE-3.5B the bf16 base model does not fit the 12 GB and 16 GB
consumer devices (the runner refuses the work), so the base weights (routed experts and decoder linears) are
NF4 fake-quantized (bitsandbytes, dequantized values) and priced at 4 bits; the LoRA adapter trains as in
FedIT and the server averages it (FedAvg)."""

from __future__ import annotations

import torch
from torch import nn

from fedmoe.fl.pricing import lora_params, payload_bytes, training_work
from fedmoe.methods.base import register
from fedmoe.methods.fedit.method import FedIT
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


@register("fedit-nf4")
class FedITNF4(FedIT):
    """FedIT with an NF4 base model (see module docstring)."""

    def _with_lora(self, model):
        return super()._with_lora(fake_quantize_base(model))

    def price(self, task, update, stats) -> dict[str, float]:
        """FedIT's pricing with the base weights (experts and decoder linears) at 4 bits."""
        lora = lora_params(self.fed.priced_config, self.args.rank, attention=self.args.attention)
        cfg = self.fed.cfg.fed
        return training_work(
            self.fed, tokens=stats.tokens, seq_len=stats.tokens / max(stats.examples, 1),
            batch_tokens=cfg.batch_size * cfg.max_length, trainable_params=lora.total,
            trainable_active=lora.active, adapter_active=lora.active, bits={"experts": 4, "linears": 4},
            bytes_down=payload_bytes(self.fed, task.bytes_down, lora.total),
            bytes_up=payload_bytes(self.fed, update.bytes_up, lora.total),
        )

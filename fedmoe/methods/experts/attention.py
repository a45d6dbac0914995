"""Trainable attention for the expert methods (FLUX, FMD, FMQ, FMES): LoRA on q/v, full q/k/v/o, or frozen.

``attention="lora"``: every client trains a rank-``attention_rank`` LoRA (peft) on the q and v projections
of every decoder layer; ``"full"``: every client trains the q/k/v/o projection weights themselves;
``"none"``: attention stays frozen (experts only). Either way the server averages the attention tensors over
the round's clients weighted by their example counts (FedAvg, :func:`fedmoe.fl.aggregate.weighted_average`).

Attention tensors travel beside the expert tensors in the same dicts, under keys prefixed ``"attention/"``
(:func:`split_attention`). Because expert surgery (merging, dropping) refuses peft-wrapped models, a client
(1) holds the plain model with the global experts (and, for ``full``, the global attention weights:
:func:`load_attention`), (2) profiles a :func:`folded` view (the global LoRA merged into a copy), (3) merges
or drops experts, then (4) :func:`attach`\\ es the LoRA with the global adapter state and trains.

Pricing (:func:`priced_attention`): LoRA adds its parameters to every token's matmuls (``adapter_active``),
trains them (gradients + Adam state in memory, their weight gradients in the backward pass) and sends them
both ways in bf16; ``full`` trains every attention weight already in the base model (no extra forward FLOPs,
their weight gradients in the backward pass, gradients + Adam state in memory) and sends them both ways.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import peft
import torch
from torch import nn

from fedmoe.fl.pricing import BF16_BYTES, lora_params
from fedmoe.moe.layers import decoder_of
from fedmoe.moe.lora import peft_model
from fedmoe.moe.memory import as_config, param_counts

ATTENTION_MODES = ("lora", "full", "none")
LORA_TARGETS = ["q_proj", "v_proj"]
FULL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
PREFIX = "attention/"
TRAIN_STATE_BYTES = 2 + 8  # bf16 gradient + Adam moments (fp32 x2) per trainable parameter


@dataclass
class AttentionArgs:
    """Attention training of an expert method: ``attention`` (lora | full | none), and the LoRA's
    ``attention_rank`` and ``attention_alpha`` (scaling alpha / rank)."""

    attention: str = "lora"
    attention_rank: int = 8
    attention_alpha: float = 16.0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention={self.attention!r}; choose one of {ATTENTION_MODES}")
        if self.attention_rank < 1:
            raise ValueError(f"attention_rank={self.attention_rank!r} must be >= 1")


def _lora_config(args: AttentionArgs) -> peft.LoraConfig:
    return peft.LoraConfig(r=args.attention_rank, lora_alpha=args.attention_alpha, lora_dropout=0.0,
                           target_modules=list(LORA_TARGETS))


def _full_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The q/k/v/o projections of every decoder layer, keyed ``"{layer}.{name}"``."""
    out = {}
    for i, layer in enumerate(decoder_of(model).layers):
        for name in FULL_TARGETS:
            out[f"{i}.{name}"] = getattr(layer.self_attn, name)
    return out


def split_attention(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(expert tensors, attention tensors) of an upload or server state (attention keys keep their prefix)."""
    experts = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
    return experts, {k: v for k, v in tensors.items() if k.startswith(PREFIX)}


def initial_state(model: nn.Module, args: AttentionArgs, seed: int) -> dict[str, torch.Tensor]:
    """The global attention state before round 1: a seeded fresh LoRA (B = 0, so the model is unchanged), the
    base q/k/v/o weights (``full``) or nothing (``none``)."""
    if args.attention == "none":
        return {}
    if args.attention == "full":
        return {PREFIX + k: m.weight.detach().clone() for k, m in _full_linears(model).items()}
    torch.manual_seed(seed)
    wrapped = peft_model(copy.deepcopy(model), _lora_config(args))
    return {PREFIX + k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(wrapped).items()}


def load_attention(model: nn.Module, args: AttentionArgs, state: dict[str, torch.Tensor]) -> nn.Module:
    """Write ``full`` global attention weights into a plain model (a no-op for ``lora`` and ``none``)."""
    if args.attention == "full":
        with torch.no_grad():
            for key, module in _full_linears(model).items():
                module.weight.copy_(state[PREFIX + key])
    return model


def attach(model: nn.Module, args: AttentionArgs, state: dict[str, torch.Tensor]) -> nn.Module:
    """``lora``: wrap ``model`` in peft with the global adapter of ``state`` (returns the ``PeftModel``);
    ``full``/``none``: ``model`` unchanged (after :func:`load_attention`)."""
    if args.attention != "lora":
        return model
    wrapped = peft_model(model, _lora_config(args))
    adapter = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    result = peft.set_peft_model_state_dict(wrapped, adapter)
    if [k for k in result.missing_keys if "lora_" in k] or result.unexpected_keys:
        raise KeyError("attention LoRA state does not match the model; was it built with another attention_rank?")
    return wrapped


def folded(model: nn.Module, args: AttentionArgs, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain model computing what the global model computes (``lora``: a copy with the adapter merged into
    q/v), for forward-only work before :func:`attach` (profiling, reference outputs)."""
    if args.attention != "lora":
        return model
    return attach(copy.deepcopy(model), args, state).merge_and_unload()


def trainable(model: nn.Module, args: AttentionArgs) -> list[nn.Parameter]:
    """The attention parameters a client trains (LoRA A/B, or q/k/v/o weights; none for ``none``)."""
    if args.attention == "lora":
        return [p for n, p in model.named_parameters() if "lora_" in n]
    if args.attention == "full":
        return [m.weight for m in _full_linears(model).values()]
    return []


def attention_state(model: nn.Module, args: AttentionArgs) -> dict[str, torch.Tensor]:
    """Copies of the client's attention tensors under :data:`PREFIX` keys (what it uploads)."""
    if args.attention == "lora":
        return {PREFIX + k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()}
    if args.attention == "full":
        return {PREFIX + k: m.weight.detach().clone() for k, m in _full_linears(model).items()}
    return {}


@dataclass(frozen=True)
class AttentionCost:
    """Attention training on the priced architecture: ``params`` trained (and sent each way in bf16),
    ``adapter_active`` parameters added to every token's matmuls (LoRA), ``memory_bytes`` resident for
    training (adapter weights + gradients + Adam state)."""

    params: int
    adapter_active: int
    memory_bytes: int

    @property
    def wire_bytes(self) -> int:
        """Bytes of the attention tensors in bf16 (download and upload each)."""
        return self.params * BF16_BYTES


def priced_attention(config, args: AttentionArgs) -> AttentionCost:
    """:class:`AttentionCost` of ``args`` on ``config`` (module docstring)."""
    if args.attention == "none":
        return AttentionCost(0, 0, 0)
    if args.attention == "lora":
        lora = lora_params(config, args.attention_rank, attention=True, experts=False)
        return AttentionCost(lora.total, lora.active, lora.total * (BF16_BYTES + TRAIN_STATE_BYTES))
    params = param_counts(as_config(config)).attention  # q/k/v/o (and OLMoE's small q/k norms)
    return AttentionCost(params, 0, params * TRAIN_STATE_BYTES)


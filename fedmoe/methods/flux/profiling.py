"""FLUX's local profiling: per MoE layer and expert, activation frequency f_e, routed tokens |D_e| and the
mean attention score a_e those tokens receive; on the INT4/NF4-quantized global model (forward only).

The attention a token j receives in decoder layer l is the mean over heads and over the (non-padding)
queries i >= j that can attend to it of A[h, i, j], read from eager attention (``output_attentions``)
of the decoder layer holding MoE layer l. a_e is its mean over the tokens routed to e (0 if none).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedmoe.data.collate import collate_train
from fedmoe.moe.layers import moe_layers, unwrap
from fedmoe.moe.quant import quantize_model
from fedmoe.moe.routing import record_routing


@dataclass
class Profile:
    """One client's profile: ``freq`` [L, E] (tokens routed to e / tokens, rows sum to top_k), ``tokens``
    [L, E] (|D_e|), ``attention`` [L, E] (a_e), ``n_tokens`` (tokens profiled)."""

    freq: torch.Tensor
    tokens: torch.Tensor
    attention: torch.Tensor
    n_tokens: int

    def to_dict(self) -> dict:
        """JSON-serialisable form (travels in ``ClientUpdate.payload`` and task plans)."""
        return {"freq": self.freq.tolist(), "tokens": self.tokens.tolist(), "attention": self.attention.tolist(),
                "n_tokens": self.n_tokens}

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        """Inverse of :meth:`to_dict`."""
        return cls(torch.tensor(data["freq"], dtype=torch.float64), torch.tensor(data["tokens"], dtype=torch.long),
                   torch.tensor(data["attention"], dtype=torch.float64), int(data["n_tokens"]))


def received_attention(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, S] attention each key token receives: mean over heads and valid queries i >= j of ``attn``
    [B, H, S, S] (``mask`` [B, S] marks non-padding tokens)."""
    a = attn.float().mean(1)  # [B, S(query), S(key)]
    seq = a.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=a.device).tril()  # [i, j]: i >= j
    valid = causal[None] & mask.bool()[:, :, None]
    total = (a * valid).sum(1)
    count = valid.sum(1).clamp(min=1)
    return total / count


def profile_subset(examples: Sequence, n: int | None, seed: int) -> list:
    """The local examples a client profiles: all of them (``n`` None), or a seeded sample of ``n`` (the same
    every round)."""
    if n is None or len(examples) <= n:
        return list(examples)
    return random.Random(seed).sample(list(examples), n)


def example_batches(tokenizer, examples: Sequence, *, max_length: int = 128, batch_size: int = 8) -> list[dict]:
    """Right-padded batches (``input_ids``, ``attention_mask``) of ``examples`` as in training."""
    if not examples:
        raise ValueError("need at least one example to profile")
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collate_train(tokenizer, examples[start:start + batch_size], max_length)
        out.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    return out


@torch.no_grad()
def profile_model(model: nn.Module, batches: Sequence[dict]) -> Profile:
    """Forward ``batches`` (:func:`example_batches`) through ``model`` and return its :class:`Profile`."""
    layers = moe_layers(model)
    base = unwrap(model)
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    was_training = model.training
    model.eval()
    received: list[torch.Tensor] = []  # per batch [L_moe, B, S]
    try:
        with record_routing(model, positions=True) as rec:
            for batch in batches:
                out = model(**batch, output_attentions=True)
                received.append(torch.stack([received_attention(out.attentions[layer.layer_idx],
                                                                 batch["attention_mask"]) for layer in layers]))
    finally:
        base.set_attn_implementation(previous)
        model.train(was_training)
    rows = [r[:, b] for r in received for b in range(r.shape[1])]  # per sequence [L, S_batch]
    num_layers, num_experts = rec.counts.shape
    attention = torch.zeros(num_layers, num_experts, dtype=torch.float64)
    for layer in range(num_layers):
        for expert in range(num_experts):
            where = rec.positions(layer, expert)
            if len(where):
                values = torch.stack([rows[int(s)][layer, int(p)] for s, p in where.tolist()])
                attention[layer, expert] = float(values.double().mean())
    return Profile(rec.frequencies(), rec.counts.clone(), attention, int(rec.tokens[0]))


def quantized_profile(model: nn.Module, batches: Sequence[dict], *, scheme: str = "nf4") -> Profile:
    """:func:`profile_model` on a ``scheme``-quantized deep copy of ``model`` (experts and decoder linears)."""
    quantized = quantize_model(copy.deepcopy(model), scheme, copy_model=False).model
    return profile_model(quantized, batches)


def profile_error(profile: Profile, reference: Profile) -> float:
    """Relative L1 error of activation frequencies: sum |f - f_ref| / sum f_ref (FLUX reports ~11% at 4 bits)."""
    denom = float(reference.freq.abs().sum())
    return float((profile.freq - reference.freq).abs().sum()) / denom if denom else 0.0

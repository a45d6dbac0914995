"""Quantize an MoE model to 4 or 8 bits on CPU with bitsandbytes, reporting storage and error per tensor.

transformers' ``BitsAndBytesConfig`` does not quantize fused experts, so two paths are used:

* expert tensors (``gate_up_proj``/``down_proj``): bitsandbytes functional ``quantize_4bit`` (nf4/fp4,
  block 64) or blockwise 8-bit (block 256), then **fake-quant**: the parameter keeps its dtype but holds the
  dequantized values, so the model runs anywhere while ``bytes_after`` reports the quantized storage;
* ordinary ``nn.Linear`` weights inside the decoder layers (attention, shared experts, dense MLPs):
  replaced by real ``bnb.nn.Linear4bit`` (nf4/fp4, block 64) or ``bnb.nn.Linear8bitLt`` (int8, one
  absmax per output row), which run on CPU. Routers, norms, embeddings and ``lm_head`` stay as they are.

4-bit blocks run over the flattened tensor. bitsandbytes 0.50's native CPU ``dequantize_4bit`` mis-decodes a
tensor whose last dimension is not a whole number of blocks (relative error 0.19-0.28 instead of 0.09 on a
[64, 32] or [64, 96] weight, on this kit's AVX-512 test machine), so every 4-bit tensor is decoded as the flat
vector it was quantized as (:func:`dequantize_4bit_flat`, identical to bitsandbytes' generic decoder), and a
``Linear4bit`` whose own decoding disagrees with it is replaced by an ``nn.Linear`` holding the decoded weight
(fake-quant, same storage reported), so the model runs with the error that is reported on every CPU.

Storage counts the packed data plus the float32 absmax statistics (no nested/double quantization);
the fixed code tables (16 or 256 constants per format, shared by every tensor) are not counted.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import torch
from torch import nn

from fedmoe.moe.layers import decoder_of, moe_layers, unwrap

SCHEMES = ("nf4", "fp4", "int8")
BLOCK_4BIT = 64
BLOCK_8BIT = 256
ABSMAX_BYTES = 4


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(
            f"Unknown quantization scheme {scheme!r}; choose one of {SCHEMES} "
            "(use 'nf4' for the papers' INT4)."
        )


def quantized_nbytes(shape: tuple[int, ...], scheme: str, kind: str = "experts") -> int:
    """Storage in bytes of one tensor of ``shape`` quantized with ``scheme`` as this module does it.

    ``kind="experts"`` (functional blockwise) or ``"linear"`` (bnb linear weight [out, in]). 4-bit:
    ceil(n/2) packed bytes + 4 bytes per block of 64; 8-bit experts: n + 4 per block of 256; 8-bit
    linear: n + 4 per output row.
    """
    _check_scheme(scheme)
    n = math.prod(shape)
    if scheme in ("nf4", "fp4"):
        return math.ceil(n / 2) + ABSMAX_BYTES * math.ceil(n / BLOCK_4BIT)
    if kind == "linear":
        return n + ABSMAX_BYTES * shape[0]
    return n + ABSMAX_BYTES * math.ceil(n / BLOCK_8BIT)


@dataclass
class TensorQuant:
    """One quantized tensor: where it is, its storage before/after, and the quantization error."""

    name: str
    kind: str  # "experts" or "linear"
    shape: tuple[int, ...]
    bytes_before: int
    bytes_after: int
    sq_error: float  # ||W - Q(W)||_F^2
    sq_norm: float  # ||W||_F^2
    max_abs_error: float

    @property
    def rel_error(self) -> float:
        """Relative Frobenius error ||W - Q(W)||_F / ||W||_F."""
        return math.sqrt(self.sq_error / self.sq_norm) if self.sq_norm else 0.0


@dataclass
class QuantReport:
    """What :func:`quantize_model` did: per-tensor entries, totals, and the quantized model.

    ``model_bytes``: storage of the whole quantized model (quantized tensors at their quantized size,
    every other parameter and persistent buffer at its dtype size).
    """

    scheme: str
    model: nn.Module
    tensors: list[TensorQuant] = field(default_factory=list)
    model_bytes: int = 0

    @property
    def bytes_before(self) -> int:
        """Bytes of the quantized tensors before quantization."""
        return sum(t.bytes_before for t in self.tensors)

    @property
    def bytes_after(self) -> int:
        """Bytes of the quantized tensors after quantization (data + statistics)."""
        return sum(t.bytes_after for t in self.tensors)

    @property
    def rel_error(self) -> float:
        """Relative Frobenius error over all quantized tensors together."""
        norm = sum(t.sq_norm for t in self.tensors)
        return math.sqrt(sum(t.sq_error for t in self.tensors) / norm) if norm else 0.0

    @property
    def max_abs_error(self) -> float:
        """Largest absolute weight error over all quantized tensors."""
        return max((t.max_abs_error for t in self.tensors), default=0.0)


def dequantize_4bit_flat(data: torch.Tensor, state) -> torch.Tensor:
    """The 4-bit ``data`` with its bitsandbytes ``state`` decoded as the flat vector its blocks cover, reshaped to
    the state's shape (see the module docstring for why not ``dequantize_4bit(data, state)`` directly)."""
    flat = copy.copy(state)
    flat.shape = torch.Size([math.prod(state.shape)])
    return bnbf.dequantize_4bit(data, flat).reshape(state.shape)


def quantize_tensor(weight: torch.Tensor, scheme: str) -> tuple[torch.Tensor, int]:
    """(dequantized copy of ``weight`` in its dtype, bytes of the quantized storage) with bitsandbytes'
    functional blockwise quantizers."""
    _check_scheme(scheme)
    w = weight.detach().float().contiguous()
    if scheme == "int8":
        data, state = bnbf.quantize_blockwise(w, blocksize=BLOCK_8BIT)
        deq = bnbf.dequantize_blockwise(data, state)
    else:
        data, state = bnbf.quantize_4bit(
            w, blocksize=BLOCK_4BIT, quant_type=scheme, compress_statistics=False
        )
        deq = dequantize_4bit_flat(data, state)
    stored = data.numel() * data.element_size() + state.absmax.numel() * state.absmax.element_size()
    return deq.reshape(weight.shape).to(weight.dtype), stored


def _entry(name: str, kind: str, weight: torch.Tensor, deq: torch.Tensor, stored: int) -> TensorQuant:
    diff = weight.detach().double() - deq.double()
    return TensorQuant(
        name,
        kind,
        tuple(weight.shape),
        weight.numel() * weight.element_size(),
        stored,
        float(diff.pow(2).sum()),
        float(weight.detach().double().pow(2).sum()),
        float(diff.abs().max()) if diff.numel() else 0.0,
    )


def _quantized_linear(linear: nn.Linear, scheme: str) -> tuple[nn.Module, torch.Tensor, int]:
    """(bnb replacement of ``linear``, its dequantized weight, its weight storage in bytes)."""
    args = (linear.in_features, linear.out_features, linear.bias is not None)
    if scheme == "int8":
        new = bnb.nn.Linear8bitLt(*args, has_fp16_weights=False, threshold=0.0)
    else:
        new = bnb.nn.Linear4bit(
            *args, compute_dtype=linear.weight.dtype, compress_statistics=False, quant_type=scheme
        )
        # On CPUs with AVX512-BF16, bitsandbytes (>= 0.48) repacks the weight for another inference kernel the
        # first time the layer runs in eval mode without grad: other numbers than on any other CPU, and a crash
        # when in_features is below the quantization block (64). One path on every CPU keeps runs reproducible.
        new.support_avx512bf16_for_cpu = False
    new.load_state_dict(linear.state_dict())
    new = new.to(linear.weight.device)  # bitsandbytes quantizes when the weight is moved to a device
    weight = new.weight
    if scheme == "int8":
        deq = weight.data.float() * weight.SCB.float()[:, None] / 127.0
        stored = (
            weight.data.numel() * weight.data.element_size() + weight.SCB.numel() * weight.SCB.element_size()
        )
    else:
        state = weight.quant_state
        deq = dequantize_4bit_flat(weight.data, state)
        stored = (
            weight.data.numel() * weight.data.element_size()
            + state.absmax.numel() * state.absmax.element_size()
        )
        if not torch.equal(bnbf.dequantize_4bit(weight.data, state), deq):  # the module would run another weight
            new = nn.Linear(*args, device=linear.weight.device, dtype=linear.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(deq)
                if linear.bias is not None:
                    new.bias.copy_(linear.bias)
    return new, deq.reshape(linear.weight.shape).to(linear.weight.dtype), stored


def quantize_model(
    model: nn.Module,
    scheme: str = "nf4",
    *,
    experts: bool = True,
    linears: bool = True,
    copy_model: bool = True,
) -> QuantReport:
    """Quantize ``model`` (a deep copy unless ``copy_model=False``): expert tensors by fake-quant, decoder
    ``nn.Linear`` layers by bitsandbytes modules (see the module docstring). Used by FLUX's INT4
    profiling of the global model and the FMQ baseline. Returns the :class:`QuantReport`."""
    _check_scheme(scheme)
    if copy_model:
        model = copy.deepcopy(model)
    report, quantized = QuantReport(scheme, model), set()
    if experts:
        for layer in moe_layers(model):
            for name in ("gate_up_proj", "down_proj"):
                param = getattr(layer.experts, name)
                deq, stored = quantize_tensor(param, scheme)
                report.tensors.append(
                    _entry(f"layers.{layer.layer_idx}.mlp.experts.{name}", "experts", param, deq, stored)
                )
                with torch.no_grad():
                    param.copy_(deq)
                quantized.add(id(param))
    if linears:
        for layer_idx, layer in enumerate(decoder_of(model).layers):
            targets = [(n, m) for n, m in layer.named_modules() if type(m) is nn.Linear]
            for name, linear in targets:
                new, deq, stored = _quantized_linear(linear, scheme)
                report.tensors.append(
                    _entry(f"layers.{layer_idx}.{name}.weight", "linear", linear.weight, deq, stored)
                )
                parent_name, _, child = name.rpartition(".")
                setattr(layer.get_submodule(parent_name) if parent_name else layer, child, new)
                quantized.add(id(new.weight))
    report.model_bytes = _model_bytes(model, report, quantized)
    return report


def _model_bytes(model: nn.Module, report: QuantReport, quantized: set[int]) -> int:
    """Storage of the quantized model: quantized tensors (ids in ``quantized``) at their reported size,
    every other parameter and persistent buffer at its dtype size."""
    total = report.bytes_after
    for module in unwrap(model).modules():
        for param in module.parameters(recurse=False):
            total += 0 if id(param) in quantized else param.numel() * param.element_size()
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                total += buf.numel() * buf.element_size()
    return total

"""Where a run computes and in which precision: the one place a device and a dtype are resolved and applied.

A run's ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) and ``dtype`` (``float32`` | ``bfloat16``)
are resolved here; the federation places its base model with :func:`place_model`, so every method's client
and server model (built from copies of it) lands on that device in that dtype. Training and evaluation move
their batches to the model's device (:func:`to_device`) and run the forward pass under :func:`autocast_for`,
which mixes precision when the model holds bfloat16 weights (LoRA adapters stay float32) and does nothing
for a float32 model, so the CPU float32 path is exactly the plain PyTorch one. :func:`measure` records a
CUDA client's real peak memory and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedmoe.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class DeviceError(ConfigError):
    """A device or dtype that is unknown or not available on this machine; the message names the fix."""


def check_device_name(name: str) -> None:
    """Raise :class:`DeviceError` unless ``name`` spells a device (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    if name in ("auto", "cpu", "cuda"):
        return
    if name.startswith("cuda:") and name[5:].isdigit():
        return
    raise DeviceError(f"device={name!r} is not a device: expected one of {DEVICES} (fix: e.g. --set device=auto)")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device ``name`` means here: ``auto`` is CUDA when available, else the CPU; a CUDA device that
    this machine lacks is a :class:`DeviceError` naming the fix."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device={name!r} but CUDA is not available on this machine "
                          "(fix: --set device=cpu, or device=auto to use CUDA only where present)")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(fix: --set device=cuda:0)")
    return device


def resolve_dtype(name: str = "float32") -> torch.dtype:
    """The torch dtype a run's ``dtype`` names (``float32`` or ``bfloat16``)."""
    if name not in DTYPES:
        raise DeviceError(f"dtype={name!r} is not supported: expected one of {sorted(DTYPES)} "
                          "(fix: e.g. --set dtype=bfloat16)")
    return DTYPES[name]


def place_model(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move ``model`` to ``device`` and cast its floating weights to ``dtype``, in place; a CPU float32 model
    already there is returned untouched (bit-identical to never calling this)."""
    params = list(model.parameters())
    if params and all(p.device == device and (p.dtype == dtype or not p.is_floating_point()) for p in params):
        return model
    return model.to(device=device, dtype=dtype)


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's (first) parameter."""
    return next(model.parameters()).device


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch (a mapping of names to tensors and other values) with its tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def compute_dtype(model: nn.Module) -> torch.dtype:
    """bfloat16 when any of the model's floating weights is bfloat16 (a bf16 base under float32 adapters),
    else float32."""
    if any(p.dtype == torch.bfloat16 for p in model.parameters()):
        return torch.bfloat16
    return torch.float32


def autocast_for(model: nn.Module):
    """The forward-pass context of ``model``: bfloat16 autocast on its device when it holds bfloat16 weights,
    nothing for a float32 model."""
    if compute_dtype(model) != torch.bfloat16:
        return nullcontext()
    return torch.autocast(device_type=model_device(model).type, dtype=torch.bfloat16)


@dataclass
class Measurement:
    """What :func:`measure` saw: wall seconds and, on CUDA, the peak allocated bytes (None elsewhere) and the
    bytes already allocated when it started (other models resident on the device, the work's own weights)."""

    seconds: float = 0.0
    peak_memory: int | None = None
    start_memory: int | None = None


@contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Measure the enclosed work on ``device``: CUDA's peak-memory counter is reset before and read after, and
    the clock is read after a synchronize so asynchronous kernels are counted."""
    out = Measurement()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out.start_memory = int(torch.cuda.memory_allocated(device))
    start = time.perf_counter()
    yield out
    if cuda:
        torch.cuda.synchronize(device)
        out.peak_memory = int(torch.cuda.max_memory_allocated(device))
    out.seconds = time.perf_counter() - start

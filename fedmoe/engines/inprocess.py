"""The in-process engine: the fast, deterministic default for notebooks, studies and tests.

One client half per process serves every task in turn (clients are virtual: a task names its client).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedmoe.config import RunConfig
from fedmoe.device import measure, model_bytes, resolve_device
from fedmoe.experiment import Executor
from fedmoe.experiment import run as run_rounds
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation
from fedmoe.fl.robust import answer_or_failure
from fedmoe.methods.base import Client, MethodSpec


def in_process_executor(spec: MethodSpec, fed: Federation) -> Executor:
    """Build the method's client half once and run each task on it sequentially, in this process; a task whose
    client raises is answered by a :class:`~fedmoe.fl.contract.ClientFailure` naming the error, and on CUDA each
    update's measured peak memory and seconds join its diagnostics (see :func:`measured_update`)."""
    client = spec.client(fed, fed.cfg.method_args)
    device = resolve_device(fed.cfg.device)
    return lambda tasks: [answer_or_failure(lambda t: measured_update(client, t, device), task) for task in tasks]


def measured_update(client: Client, task: ClientTask, device: torch.device) -> ClientUpdate:
    """``client.update(task)``; on a CUDA device its real peak memory and wall seconds are stored in the update's
    diagnostics beside the cost model's prediction (``rounds.jsonl``: ``peak_memory``, ``client_time_parts``):
    ``measured_peak_memory`` is the client's own peak, i.e. the rise of ``torch.cuda.max_memory_allocated``
    (reset before the update) over what was allocated before it, plus the bytes of the client's model (so the
    federation's and the server's models resident on the same GPU do not count); ``measured_device_peak`` is the
    raw peak. On the CPU nothing is added (no allocator counter; the records stay as they were)."""
    with measure(device) as seen:
        update = client.update(task)
    if seen.peak_memory is not None:
        own = model_bytes(client.model) if isinstance(getattr(client, "model", None), torch.nn.Module) else 0
        update.diagnostics = {**update.diagnostics, "measured_peak_memory": seen.peak_memory - seen.start_memory + own,
                              "measured_device_peak": seen.peak_memory, "measured_seconds": seen.seconds}
    return update


def run(cfg: RunConfig, *, out_dir: str | Path = "results", run_name: str | None = None, resume: bool = True,
        stop_after: int | None = None, progress: bool = True) -> Path:
    """Run (or resume) ``cfg`` in this process and return its results folder (see :func:`fedmoe.experiment.run`)."""
    return run_rounds(cfg, in_process_executor, out_dir=out_dir, run_name=run_name, resume=resume,
                      stop_after=stop_after, progress=progress)

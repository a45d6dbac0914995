"""The in-process engine: the fast, deterministic default for notebooks, studies and tests.

One client half per process serves every task in turn (clients are virtual: a task names its client).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedmoe.config import RunConfig
from fedmoe.device import measure, resolve_device
from fedmoe.experiment import Executor
from fedmoe.experiment import run as run_rounds
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation
from fedmoe.methods.base import Client, MethodSpec


def in_process_executor(spec: MethodSpec, fed: Federation) -> Executor:
    """Build the method's client half once and run each task on it sequentially, in this process (on CUDA each
    update's measured peak memory and seconds join its diagnostics: see :func:`measured_update`)."""
    client = spec.client(fed, fed.cfg.method_args)
    device = resolve_device(fed.cfg.device)
    return lambda tasks: [measured_update(client, task, device) for task in tasks]


def measured_update(client: Client, task: ClientTask, device: torch.device) -> ClientUpdate:
    """``client.update(task)``; on a CUDA device its real peak memory (``torch.cuda.max_memory_allocated``, reset
    before the update) and wall seconds are stored in the update's diagnostics as ``measured_peak_memory`` and
    ``measured_seconds``, beside the cost model's prediction (``rounds.jsonl``: ``peak_memory``,
    ``client_time_parts``). On the CPU nothing is added (no allocator counter; the records stay as they were)."""
    with measure(device) as seen:
        update = client.update(task)
    if seen.peak_memory is not None:
        update.diagnostics = {**update.diagnostics, "measured_peak_memory": seen.peak_memory,
                              "measured_seconds": seen.seconds}
    return update


def run(cfg: RunConfig, *, out_dir: str | Path = "results", run_name: str | None = None, resume: bool = True,
        stop_after: int | None = None, progress: bool = True) -> Path:
    """Run (or resume) ``cfg`` in this process and return its results folder (see :func:`fedmoe.experiment.run`)."""
    return run_rounds(cfg, in_process_executor, out_dir=out_dir, run_name=run_name, resume=resume,
                      stop_after=stop_after, progress=progress)

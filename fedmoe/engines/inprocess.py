"""The in-process engine: the fast, deterministic default for notebooks, studies and tests.

One client half per process serves every task in turn (clients are virtual: a task names its client).
"""

from __future__ import annotations

from pathlib import Path

from fedmoe.config import RunConfig
from fedmoe.experiment import Executor
from fedmoe.experiment import run as run_rounds
from fedmoe.fl.federation import Federation
from fedmoe.fl.robust import answer_or_failure
from fedmoe.methods.base import MethodSpec


def in_process_executor(spec: MethodSpec, fed: Federation) -> Executor:
    """Build the method's client half once and run each task on it sequentially, in this process; a task
    whose client raises is answered by a :class:`~fedmoe.fl.contract.ClientFailure` naming the error."""
    client = spec.client(fed, fed.cfg.method_args)
    return lambda tasks: [answer_or_failure(client.update, task) for task in tasks]


def run(cfg: RunConfig, *, out_dir: str | Path = "results", run_name: str | None = None, resume: bool = True,
        stop_after: int | None = None, progress: bool = True) -> Path:
    """Run (or resume) ``cfg`` in this process and return its results folder (see :func:`fedmoe.experiment.run`)."""
    return run_rounds(cfg, in_process_executor, out_dir=out_dir, run_name=run_name, resume=resume,
                      stop_after=stop_after, progress=progress)

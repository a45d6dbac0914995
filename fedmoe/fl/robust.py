"""Unreliable clients: seeded drop-outs, failing clients, update validation and round retries.

A round (:func:`run_round`) samples clients, lets each drop out with probability ``fed.dropout`` (seeded per
seed, round, attempt and client, so runs reproduce), hands the others' tasks to the engine, and screens every
answer with :func:`validate_update` before the server sees it. It goes on with the accepted updates when at
least ``ceil(fed.min_fit_fraction * sampled)`` arrived; otherwise the round is retried with a fresh seeded
sample (:func:`fedmoe.fl.federation.sample_clients` with ``attempt``), at most ``fed.max_round_retries`` times,
then a :class:`RoundFailedError`. Every client left out is named with its reason in the round's ``failures``.

Simulated time: the server waits ``fed.timeout_seconds`` for a client that never answers (a drop-out, no
reply), so such a round lasts at least that long; each failed attempt costs ``fed.timeout_seconds`` too.
"""

from __future__ import annotations

import math
import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmoe.errors import FedmoeError
from fedmoe.fl.contract import ClientFailure, ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation, sample_clients

Answer = ClientUpdate | ClientFailure
NO_REPLY = "no reply"
DROPPED = "dropped out"


class RoundFailedError(FedmoeError):
    """Too few clients answered a round in every allowed attempt."""


@dataclass
class RoundResult:
    """The attempt of a round that went through: its sampled ``clients``, their ``tasks``, the accepted
    ``updates`` (by client id), the ``failures`` {client: reason} of that attempt, and the failures of each
    earlier attempt that was retried."""

    clients: list[int]
    tasks: list[ClientTask]
    updates: list[ClientUpdate]
    failures: dict[int, str] = field(default_factory=dict)
    retried: list[dict[int, str]] = field(default_factory=list)
    timed_out: bool = False

    def log(self) -> dict[str, Any]:
        """The round record's ``failures`` and ``retries`` (left out of a round where nothing failed, so a
        failure-free run's log is what it always was)."""
        out: dict[str, Any] = {}
        if self.failures:
            out["failures"] = {str(c): r for c, r in sorted(self.failures.items())}
        if self.retried:
            out["retries"] = len(self.retried)
            out["retried_failures"] = [{str(c): r for c, r in sorted(f.items())} for f in self.retried]
        return out

    def wait_seconds(self, timeout: float) -> float:
        """Simulated seconds the server waited for clients that never answered in the attempt that went on."""
        return timeout if self.timed_out else 0.0


def drops_out(seed: int, round_: int, attempt: int, client: int, probability: float) -> bool:
    """Whether ``client`` drops out of this attempt of the round (a seeded draw, independent of the engine)."""
    return probability > 0 and random.Random(f"dropout:{seed}:{round_}:{attempt}:{client}").random() < probability


def answer_or_failure(update: Callable[[ClientTask], ClientUpdate], task: ClientTask) -> Answer:
    """``update(task)``, or a :class:`ClientFailure` naming the exception and where it was raised (one failing
    client must not end the run)."""
    try:
        return update(task)
    except Exception as exc:  # any client error is that client's failure, reported in the round's log
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return ClientFailure(task.client_id, f"{type(exc).__name__}: {exc} (at {frame.filename}:{frame.lineno})")


def assigned_examples(fed: Federation, client: int) -> int:
    """The number of training examples the server knows ``client`` holds (the reference ``central`` pools
    every client's data; where each SuperNode owns its data, the count its node described)."""
    return len(fed.train_set) if fed.cfg.method == "central" else fed.num_examples(client)


def validate_update(task: ClientTask, update: ClientUpdate, *, global_state: dict[str, torch.Tensor] | None = None,
                    num_examples: int | None = None, max_norm: float | None = None) -> str | None:
    """Why ``update`` must not be aggregated, or ``None`` when it may.

    Rejected: an update for another client or round; ``num_examples`` other than the count the server
    assigned; a tensor whose name the client was not sent, or whose shape or dtype differs from what it was
    sent (the task's tensor, else the server's ``global_state`` tensor or a leading block of it, as a
    lower-rank LoRA factor is, else one expert's slice ``"{layer}.{expert}.{param}"`` of a fused
    ``"{layer}.{param}"`` tensor; a subset is fine: FLUX uploads only the experts it tuned); non-finite tensors, payload or routed-token counts; and, when ``max_norm`` is set, a change
    to what the client was sent with an L2 norm above it.
    """
    if (update.client_id, update.round) != (task.client_id, task.round):
        return f"update is for client {update.client_id}, round {update.round}; the task was for " \
               f"client {task.client_id}, round {task.round}"
    if num_examples is not None and update.num_examples != num_examples:
        return f"claims num_examples={update.num_examples}, but the client holds {num_examples}"
    if not update.tensors:
        return "update carries no tensors"
    square_norm = 0.0
    for key, value in update.tensors.items():
        if not isinstance(value, torch.Tensor):
            return f"tensor {key!r} is a {type(value).__name__}, not a tensor"
        sent = _reference(key, task.tensors, global_state or {})
        if sent is None:
            return f"unexpected tensor {key!r} (the client was sent no tensor of that name)"
        if key not in task.tensors and _truncates(value, sent):
            sent = sent[tuple(slice(0, n) for n in value.shape)]  # a lower-rank upload of a global LoRA factor
        if value.shape != sent.shape or value.dtype != sent.dtype:
            return f"tensor {key!r} has shape {tuple(value.shape)} and dtype {value.dtype}; expected " \
                   f"{tuple(sent.shape)} and {sent.dtype}"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"tensor {key!r} has non-finite values (NaN or Inf)"
        square_norm += float((value.double() - sent.double()).square().sum())
    if not _finite(update.payload) or not _finite(update.expert_tokens):
        return "payload or routed-token counts hold non-finite numbers"
    if max_norm is not None and math.sqrt(square_norm) > max_norm:
        return f"update norm {math.sqrt(square_norm):.3g} exceeds fed.max_update_norm={max_norm:g}"
    return None


def _reference(key: str, sent: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """What the client was sent for ``key``: the task's tensor, the global tensor, or one expert's slice of a
    fused expert tensor."""
    for state in (sent, global_state):
        if key in state:
            return state[key]
    fused = _fused_name(key)
    if fused is not None:
        expert = int(key.split(".")[1])
        for state in (sent, global_state):
            if fused in state and expert < state[fused].shape[0]:
                return state[fused][expert]
    return None


def _fused_name(key: str) -> str | None:
    """The fused ``"{layer}.{param}"`` name of an expert slice ``"{layer}.{expert}.{param}"``, else None."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[1].isdigit():
        return f"{parts[0]}.{'.'.join(parts[2:])}"
    return None


def _truncates(value: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether ``value`` has the shape of a leading block of ``full`` (a rank-r_i factor of a global LoRA)."""
    return value.dim() == full.dim() and all(n <= m for n, m in zip(value.shape, full.shape, strict=True))


def _finite(value: Any) -> bool:
    """Whether every number in a JSON-like ``value`` is finite."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def screen(fed: Federation, server: Any, tasks: Sequence[ClientTask], answers: Sequence[Answer]
           ) -> tuple[list[ClientUpdate], dict[int, str]]:
    """The accepted updates (by client id) and the failures {client: reason} among ``answers`` to ``tasks``
    (a task with no answer is a failure too)."""
    cfg = fed.cfg.fed
    by_client = {a.client_id: a for a in answers}
    updates, failures = [], {}
    for task in tasks:
        answer = by_client.get(task.client_id)
        if answer is None:
            failures[task.client_id] = NO_REPLY
            continue
        if isinstance(answer, ClientFailure):
            failures[task.client_id] = answer.reason
            continue
        reason = validate_update(task, answer, global_state=getattr(server, "global_state", None),
                                 num_examples=assigned_examples(fed, task.client_id), max_norm=cfg.max_update_norm)
        if reason is None:
            updates.append(answer)
        else:
            failures[task.client_id] = f"rejected: {reason}"
    return sorted(updates, key=lambda u: u.client_id), failures


def run_round(fed: Federation, server: Any, execute: Callable[[list[ClientTask]], list[Answer]],
              round_: int) -> RoundResult:
    """Sample, drop out, execute and screen one round, retrying it as the module docstring says."""
    cfg, seed = fed.cfg.fed, fed.cfg.seed
    retried: list[dict[int, str]] = []
    for attempt in range(cfg.max_round_retries + 1):
        clients = sample_clients(seed, round_, cfg.num_clients, cfg.clients_per_round, attempt)
        tasks = server.plan(round_, clients)
        dropped = {t.client_id: f"{DROPPED} (fed.dropout={cfg.dropout:g})" for t in tasks
                   if drops_out(seed, round_, attempt, t.client_id, cfg.dropout)}
        live = [t for t in tasks if t.client_id not in dropped]
        updates, failures = screen(fed, server, live, execute(live) if live else [])
        failures.update(dropped)
        needed = math.ceil(cfg.min_fit_fraction * len(tasks))
        if len(updates) >= needed:
            timed_out = any(r == NO_REPLY or r.startswith(DROPPED) for r in failures.values())
            return RoundResult(clients, tasks, updates, failures, retried, timed_out)
        retried.append(failures)
    raise RoundFailedError(
        f"round {round_}: fewer than {needed} of {len(tasks)} sampled clients delivered a usable update in "
        f"{cfg.max_round_retries + 1} attempts (last failures: {failures}); fix the failing clients, or lower "
        "fed.min_fit_fraction / fed.dropout, or raise fed.max_round_retries")

"""The federation contract: what a server sends a client each round and what the client returns.

Methods speak only in these two types; engines only move them. A :class:`ClientTask` carries the
tensors a client receives (its sub-model, adapter or experts) and a JSON-serialisable plan (which
experts to tune, its top-k, its learning rate...); the server's own ``notes`` on the task (a client's tier,
the seconds spent planning it) stay with the server and go to the round's log, never to the client. A
:class:`ClientUpdate` separates what the server aggregates (``tensors`` and the JSON ``payload``) from
what is only logged (``diagnostics``), beside the example count, training metrics, routed-token counts and
the cost-model inputs (``work``). A client that fails is reported as a :class:`ClientFailure` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ClientTask:
    """Work for one client in one round.

    Attributes:
        tensors: the parameters sent down.
        plan: JSON-serialisable instructions the client needs (its experts to tune, top-k, rank...).
        notes: the server's JSON notes on this task for the round's log; engines never send them.
    """

    client_id: int
    round: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_down(self) -> int:
        """Bytes the client downloads: the payload tensors as stored."""
        return tensor_bytes(self.tensors)


@dataclass
class ClientUpdate:
    """A client's answer to a :class:`ClientTask`.

    Attributes:
        tensors: the parameters sent up (the method decides which).
        num_examples: local training examples (FedAvg weights).
        metrics: scalar training metrics (train loss, steps, tokens).
        expert_tokens: tokens routed to each expert during local training, per MoE layer.
        work: the cost-model inputs measured or computed by the client (FLOPs, bytes, memory).
        payload: method-specific JSON values the server aggregates (FLUX's profile and gradient norms,
            FLAME's trained rescaler).
        diagnostics: method-specific JSON values only logged (errors, timings, FLOPs per token).
    """

    client_id: int
    round: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    expert_tokens: list[list[int]] = field(default_factory=list)
    work: dict[str, float] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_up(self) -> int:
        """Bytes the client uploads: the payload tensors as stored."""
        return tensor_bytes(self.tensors)


@dataclass
class ClientFailure:
    """A client that did not deliver a usable update in a round, and why (an exception, a drop-out, no reply,
    or an update the server rejected); engines return it in place of that client's :class:`ClientUpdate`."""

    client_id: int
    reason: str


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Total storage of a tensor dict in bytes."""
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def task_to_json(task: ClientTask) -> str:
    """The part of a task a client receives, less its tensors, as JSON (the server's notes stay behind)."""
    return json.dumps({"client_id": task.client_id, "round": task.round, "plan": task.plan})


def task_from_json(text: str, tensors: dict[str, torch.Tensor]) -> ClientTask:
    """Inverse of :func:`task_to_json`, given the tensors that travelled beside it."""
    meta = json.loads(text)
    return ClientTask(meta["client_id"], meta["round"], tensors, meta["plan"])


def update_to_json(update: ClientUpdate) -> str:
    """The non-tensor part of an update as JSON."""
    return json.dumps(
        {
            "client_id": update.client_id,
            "round": update.round,
            "num_examples": update.num_examples,
            "metrics": update.metrics,
            "expert_tokens": update.expert_tokens,
            "work": update.work,
            "payload": update.payload,
            "diagnostics": update.diagnostics,
        }
    )


def update_from_json(text: str, tensors: dict[str, torch.Tensor]) -> ClientUpdate:
    """Inverse of :func:`update_to_json`."""
    meta = json.loads(text)
    return ClientUpdate(tensors=tensors, **meta)

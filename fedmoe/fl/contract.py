"""The federation contract: what a server sends a client each round and what the client returns.

Methods speak only in these two types; engines only move them. A :class:`ClientTask` carries the
tensors a client receives (its sub-model, adapter or experts) and a JSON-serialisable plan (which
experts to tune, its top-k, its learning rate...). A :class:`ClientUpdate` carries the tensors
sent back, the number of examples, and diagnostics the cost model and the plots need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ClientTask:
    """Work for one client in one round."""

    client_id: int
    round: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)

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
        metrics: scalar diagnostics (train loss, steps, tokens...).
        expert_tokens: tokens routed to each expert during local training, per MoE layer.
        work: the cost-model inputs measured or computed by the client (FLOPs, bytes, memory).
        extra: method-specific JSON-serialisable diagnostics.
    """

    client_id: int
    round: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    expert_tokens: list[list[int]] = field(default_factory=list)
    work: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_up(self) -> int:
        """Bytes the client uploads: the payload tensors as stored."""
        return tensor_bytes(self.tensors)


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Total storage of a tensor dict in bytes."""
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def task_to_json(task: ClientTask) -> str:
    """The non-tensor part of a task as JSON (for transports that carry strings)."""
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
            "extra": update.extra,
        }
    )


def update_from_json(text: str, tensors: dict[str, torch.Tensor]) -> ClientUpdate:
    """Inverse of :func:`update_to_json`."""
    meta = json.loads(text)
    return ClientUpdate(tensors=tensors, **meta)

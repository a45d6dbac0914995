"""The small interface every federated method implements, and the registry that names methods.

A method owns the server state and four steps: ``plan`` (one :class:`ClientTask` per sampled
client), ``client_update`` (run on the client from the task alone plus the shared
:class:`Federation`), ``aggregate`` (fold the updates into the server state) and ``eval_model``
(the global model to score). It never imports an engine: engines call these steps, so one method
runs unchanged in-process, in Flower's simulation and in a Flower deployment.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from fedmoe.config import ConfigError, coerce_fields
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator adding a method to the registry under ``name``."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (importing the built-in methods first)."""
    import fedmoe.methods  # noqa: F401  (registers the built-in methods)

    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    """Names of every registered method."""
    import fedmoe.methods  # noqa: F401

    return sorted(_REGISTRY)


def parse_args(args_cls: type, args: dict[str, Any] | None, method: str):
    """Build a method's options dataclass from ``method_args``: unknown keys, wrong types and out-of-range
    values (the dataclass's own checks) are a :class:`~fedmoe.config.ConfigError` naming the option."""
    if not dataclasses.is_dataclass(args_cls):
        if args:
            raise ConfigError(f"method {method!r} takes no options, got method_args {sorted(args)} "
                              "(fix: drop them)")
        return args_cls()
    values = coerce_fields(args_cls, args, "method_args.", f"the options of method {method!r}")
    try:
        return args_cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method_args of method {method!r}: {err}") from None


def check_method_args(name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``method_args`` for the method registered as ``name`` without constructing the method; returns
    the given options with numbers spelled as strings converted (what the config then stores)."""
    parsed = parse_args(get_method(name).Args, args, name)
    return {key: getattr(parsed, key) for key in (args or {})}


class Method(ABC):
    """Base class of a federated method (see the module docstring)."""

    name: ClassVar[str] = "method"
    Args: ClassVar[type] = object

    def __init__(self, fed: Federation, args: dict[str, Any] | None = None):
        self.fed = fed
        self.args = parse_args(self.Args, args, self.name)

    @abstractmethod
    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        """One task per sampled client for this round."""

    @abstractmethod
    def client_update(self, task: ClientTask) -> ClientUpdate:
        """Train on the client from ``task`` alone (never from server state) and return its update."""

    @abstractmethod
    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        """Fold the round's updates into the server state; return server diagnostics."""

    @abstractmethod
    def eval_model(self) -> torch.nn.Module:
        """The current global model, ready for evaluation."""

    def eval_models(self):
        """Models whose scores are averaged into the round's score: by default the one global model."""
        yield self.eval_model()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the server; by default the ``global_state`` tensor dict.

        Methods with more server state (utilities, rescalers, per-client adapters) override both this
        and :meth:`load_state_dict`.
        """
        return {"global": self.global_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.global_state = state["global"]

    def overlap(self, round_: int) -> float:
        """Fraction of clients' forward-only work hidden behind the server phase (FLUX's stale profiling).

        See :func:`fedmoe.fl.cost.round_time`; 0 means a synchronous round.
        """
        return 0.0

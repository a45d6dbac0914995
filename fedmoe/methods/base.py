"""What every federated method is: an options dataclass, a server half and a client half, named in a registry.

A method's **server** (:class:`Server`) owns the global state and its steps: ``plan`` (one
:class:`ClientTask` per sampled client), ``aggregate`` (fold the clients' updates into the state), the
models to evaluate, what each client deploys (:meth:`Server.deployed_models`) and ``state_dict`` /
``load_state_dict`` (resume). Its **client** (:class:`Client`) owns a local model and one step,
``update(task) -> ClientUpdate``, computed from the task and the shared :class:`Federation` alone. Both halves
sit side by side in the method's file (as in FedLab); a :class:`MethodSpec` names them with the options
dataclass. A client process builds only client halves.

Methods never import an engine: engines (``fedmoe.engines``) look a method up here by name, so one method
runs unchanged in-process, in Flower's simulation and in a Flower deployment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fedmoe.config import ConfigError, coerce_fields
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation


@dataclass
class NoArgs:
    """Options of a method that has none."""


@dataclass(frozen=True)
class Deployed:
    """A group of ``clients`` that deploy the same ``model`` (what each of them would run after the final round);
    ``same_as_global``: the model is the one :meth:`Server.eval_model` gives (the global model)."""

    clients: tuple[int, ...]
    model: torch.nn.Module
    same_as_global: bool


class Server(ABC):
    """The server half of a method (see the module docstring); ``args`` is the method's options dataclass."""

    def __init__(self, fed: Federation, args: Any):
        self.fed = fed
        self.args = args

    @abstractmethod
    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        """One task per sampled client for this round."""

    @abstractmethod
    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        """Fold the round's updates into the server state; return server metrics for the round's log."""

    @abstractmethod
    def eval_model(self) -> torch.nn.Module:
        """The current global model, ready for evaluation."""

    def eval_models(self) -> Iterator[torch.nn.Module]:
        """Models whose scores are averaged into the round's score: by default the one global model."""
        yield self.eval_model()

    def deployed_models(self) -> Iterator[Deployed]:
        """What each client deploys, grouped: every client in exactly one group, one group per distinct model (a
        method with three tiers gives three evaluations, not one per client), groups ordered by first client.

        By default every client deploys the global model (FedIT, FedIT-NF4, central, FLoRA, FLUX, FMD, FMQ,
        FMES); HetLoRA, FlexLoRA, FLAME, FFT-MoE and local-only training override it. As with
        :meth:`eval_model`, the same model object may be reloaded for the next group: score each group's model
        before taking the next.
        """
        yield Deployed(tuple(range(self.fed.cfg.fed.num_clients)), self.eval_model(), same_as_global=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the server, as tensors, numbers, strings, lists and dicts (loadable
        with ``torch.load(weights_only=True)``); by default the ``global_state`` tensor dict.

        Servers with more state (utilities, rescalers, per-client adapters) override both this and
        :meth:`load_state_dict`.
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


class Client(ABC):
    """The client half of a method: one per process, serving any client id a task names."""

    def __init__(self, fed: Federation, args: Any):
        self.fed = fed
        self.args = args

    @abstractmethod
    def update(self, task: ClientTask) -> ClientUpdate:
        """Train on the client from ``task`` alone (never from server state) and return its update."""


class DeviceBudgets:
    """Mixin for both halves of a method whose clients' work is sized by their devices.

    :meth:`budget` is the one notion of a client's budget: computed from ``fed.devices[client]`` (or the
    run's explicit settings) by :meth:`make_budget`, cached, and the same on the server (to plan) and on the
    client (to train and price).
    """

    fed: Federation

    def budget(self, client: int):
        """The budget of ``client`` (see :meth:`make_budget`)."""
        cache = self.__dict__.setdefault("_budgets", {})
        if client not in cache:
            cache[client] = self.make_budget(client)
        return cache[client]

    def make_budget(self, client: int):
        """Compute the budget of ``client`` from its device."""
        raise NotImplementedError


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, options dataclass, server class and client class."""

    name: str
    Args: type
    Server: type[Server]
    Client: type[Client]

    def parse_args(self, args: dict[str, Any] | None) -> Any:
        """The options dataclass from ``method_args``: unknown keys, wrong types and out-of-range values (the
        dataclass's own checks) are a :class:`~fedmoe.config.ConfigError` naming the option."""
        values = coerce_fields(self.Args, args or {}, "method_args.", f"the options of method {self.name!r}")
        try:
            return self.Args(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"method_args of method {self.name!r}: {err}") from None

    def server(self, fed: Federation, args: dict[str, Any] | None = None) -> Server:
        """Build the server half from the federation and ``method_args``."""
        return self.Server(fed, self.parse_args(args))

    def client(self, fed: Federation, args: dict[str, Any] | None = None) -> Client:
        """Build the client half from the federation and ``method_args``."""
        return self.Client(fed, self.parse_args(args))


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, args: type, server: type[Server], client: type[Client]) -> MethodSpec:
    """Add a method to the registry under ``name``; returns its spec."""
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is registered twice")
    spec = MethodSpec(name, args, server, client)
    _REGISTRY[name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The method registered as ``name`` (importing the built-in methods first)."""
    import fedmoe.methods  # noqa: F401  (registers the built-in methods)

    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def check_method_args(name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``method_args`` for the method registered as ``name`` without constructing either half; returns
    the given options with numbers spelled as strings converted (what the config then stores)."""
    parsed = get_method(name).parse_args(args)
    return {key: getattr(parsed, key) for key in (args or {})}


def available_methods() -> list[str]:
    """Names of every registered method."""
    import fedmoe.methods  # noqa: F401

    return sorted(_REGISTRY)

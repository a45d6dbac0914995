"""The federation's shared world, rebuilt identically from a config in every process.

A :class:`Federation` holds what both sides need and can derive from the run config alone: the
base model and tokenizer, every client's data partition, the held-out set it is scored on, each client's
device profile and the local-training settings. The base model, the data, the partition and the devices
derive from ``cfg.data_seed`` (the world runs are compared on); ``cfg.seed`` drives the run itself
(initialisation, client sampling, batch order). Because it is a pure function of the config,
a Flower client in another process rebuilds exactly the same world as the in-process engine.

In a deployment where each SuperNode owns its data (Flower run config ``client-data=node``) no process holds every client's
data: the server's federation (:meth:`Federation.for_nodes`) knows each client's example count and device from
the nodes' own descriptions, and a node's federation (:meth:`Federation.for_node`) holds that node's examples
only. Both share the base model and test set this module builds from the config.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedmoe.config import RunConfig
from fedmoe.data.records import Example

if TYPE_CHECKING:
    from fedmoe.fl.cost import CostModel
    from fedmoe.fl.devices import DeviceProfile


def client_seed(seed: int, round_: int, client_id: int) -> int:
    """The seed a client uses in a round: independent of engine, process and execution order."""
    return (seed * 1_000_003 + round_ * 10_007 + client_id) % (2**31 - 1)


def sample_clients(seed: int, round_: int, num_clients: int, per_round: int, attempt: int = 0) -> list[int]:
    """Clients sampled in a round, a deterministic function of (seed, round) so resumed runs match; a retried
    round (``attempt`` >= 1, see :mod:`fedmoe.fl.robust`) draws a fresh sample, as deterministically."""
    if not 0 < per_round <= num_clients:
        raise ValueError(
            f"clients_per_round={per_round} must be between 1 and num_clients={num_clients}; "
            "lower fed.clients_per_round or raise fed.num_clients"
        )
    return sorted(random.Random(client_seed(seed, round_, -1 - attempt)).sample(range(num_clients), per_round))


@dataclass
class Federation:
    """Base model, data and devices of one run (see module docstring). ``train_parts[c]`` is ``None`` for a
    client whose data this process does not hold; ``sizes`` then gives its example count. ``test_set`` is what
    the run is scored on: the test set, or with ``fed.eval_split=val`` the validation items carved from the
    training pool (:func:`fedmoe.data.task_data.load_task_data`)."""

    cfg: RunConfig
    tokenizer: object
    _base_model: torch.nn.Module
    train_parts: list[list[Example] | None]
    test_set: list[Example]
    devices: list[DeviceProfile]
    cost: CostModel
    sizes: list[int] | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, progress: bool = False) -> Federation:
        """The world a config describes, holding that config: its data, partition and base model come from this
        process's cache, keyed by what they derive from alone (see :func:`_world_data` and :func:`_world_model`),
        so runs of several methods, seeds or learning rates on one world build it once."""
        # data first, so a bad dataset fails before the model loads
        parts, test = _world_data(cfg)
        model, tokenizer = _world_model(cfg, progress)
        cost = _cost_model(cfg)
        return cls(cfg, tokenizer, model, parts, test, cost.devices(cfg.fed.num_clients), cost)

    @classmethod
    def for_nodes(cls, cfg: RunConfig, sizes: list[int], devices: list[DeviceProfile], progress: bool = False
                  ) -> Federation:
        """The server's world when each SuperNode owns its data: the base model and the (public) test set, each
        client's example count and device as its node described them, and no client data."""
        from fedmoe.data.task_data import load_task_data

        _, test = load_task_data(cfg.data, seed=cfg.data_seed, split=cfg.fed.eval_split)
        model, tokenizer = _world_model(cfg, progress)
        return cls(cfg, tokenizer, model, [None] * len(sizes), test, list(devices), _cost_model(cfg),
                   sizes=list(sizes))

    @classmethod
    def for_node(cls, cfg: RunConfig, client_id: int, examples: list[Example], devices: list[DeviceProfile]
                 ) -> Federation:
        """A SuperNode's world: the base model and client ``client_id``'s own ``examples`` (no other client's
        data, no test set); ``devices`` is every client's profile, as the server sent them."""
        model, tokenizer = _world_model(cfg, False)
        parts: list[list[Example] | None] = [None] * len(devices)
        parts[client_id] = examples
        return cls(cfg, tokenizer, model, parts, [], list(devices), _cost_model(cfg))

    def base_model(self) -> torch.nn.Module:
        """A fresh, trainable copy of the pretrained base model (the cached original is never touched), on the
        run's device in its dtype (:mod:`fedmoe.device`)."""
        model = copy.deepcopy(self._base_model)
        model.train()
        return model

    @property
    def priced_config(self):
        """The architecture the cost model prices: the base model's, or a paper-scale one in projection."""
        return self.cost.priced_config(self._base_model.config)

    def client_data(self, client_id: int) -> list[Example]:
        """Client ``client_id``'s local training examples (an error where another process holds them)."""
        part = self.train_parts[client_id]
        if part is None:
            raise LookupError(f"client {client_id}'s data lives on its own SuperNode (client-data=node); this "
                              "process does not hold it")
        return part

    def num_examples(self, client_id: int) -> int:
        """How many training examples client ``client_id`` holds (its node's count where its data is elsewhere)."""
        part = self.train_parts[client_id]
        return len(part) if part is not None else self.sizes[client_id]

    def client_test_data(self, client_id: int) -> list[Example]:
        """Client ``client_id``'s local test split: the test set divided among clients with each client's
        training domain mix (:func:`fedmoe.data.partition.partition_like`, seeded by the run seed), for
        scoring personalised models; may be empty for a client when the test set is small."""
        return self._test_parts[client_id]

    @functools.cached_property
    def _test_parts(self) -> list[list[Example]]:
        from fedmoe.data.partition import partition_like

        return partition_like(self.test_set, self.train_parts, seed=self.cfg.seed)

    @property
    def train_set(self) -> list[Example]:
        """All clients' training data this process holds, together (for the centralised reference)."""
        return [ex for part in self.train_parts if part is not None for ex in part]

    def train_config(self, client_id: int, round_: int, **overrides):
        """Local-training settings of one client in one round (seeded per client and round)."""
        from fedmoe.train import TrainConfig

        fed = self.cfg.fed
        kwargs = dict(
            lr=fed.lr,
            batch_size=fed.batch_size,
            steps=fed.local_steps,
            max_length=fed.max_length,
            seed=client_seed(self.cfg.seed, round_, client_id),
        )
        kwargs.update(overrides)
        return TrainConfig(**kwargs)


#: How many worlds' data and base models a process keeps (least recently used dropped first).
WORLDS_KEPT = 2
_DATA: OrderedDict[tuple, tuple[list[list[Example]], list[Example]]] = OrderedDict()
_MODELS: OrderedDict[tuple, tuple[torch.nn.Module, object]] = OrderedDict()


def _cached(cache: OrderedDict, key: tuple, build: Callable[[], Any]) -> Any:
    """``cache[key]``, built on a miss, keeping the :data:`WORLDS_KEPT` most recently used entries."""
    if key not in cache:
        cache[key] = build()
        while len(cache) > WORLDS_KEPT:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def _data_key(cfg: RunConfig) -> tuple:
    """What the clients' data and the scored set derive from: the data section, ``data_seed``, the number of
    clients (the partition) and the scored split; not the method, its options, the run seed or local training."""
    return dataclasses.astuple(cfg.data), cfg.data_seed, cfg.fed.num_clients, cfg.fed.eval_split


def _model_key(cfg: RunConfig) -> tuple:
    """What the placed base model derives from: the model section, ``data_seed`` (the zoo's pretraining seed), and
    the run's device and dtype."""
    return dataclasses.astuple(cfg.model), cfg.data_seed, cfg.device, cfg.dtype


def _world_data(cfg: RunConfig) -> tuple[list[list[Example]], list[Example]]:
    """Every client's training examples and the scored set, cached per process by :func:`_data_key`."""
    from fedmoe.data.partition import partition
    from fedmoe.data.task_data import load_task_data

    def build():
        data = cfg.data
        train, test = load_task_data(data, seed=cfg.data_seed, split=cfg.fed.eval_split)
        return partition(train, cfg.fed.num_clients, scheme=data.partition, alpha=data.alpha,
                         domains_per_client=data.domains_per_client, seed=cfg.data_seed), test

    return _cached(_DATA, _data_key(cfg), build)


def _world_model(cfg: RunConfig, progress: bool) -> tuple[torch.nn.Module, object]:
    """The frozen base model on the run's device in its dtype (every method's model copies it) and its tokenizer,
    cached per process by :func:`_model_key` (``progress`` only shows the first load)."""
    from fedmoe.device import place_model, resolve_device, resolve_dtype
    from fedmoe.moe.loading import load_base_model

    def build():
        model, tokenizer = load_base_model(cfg.model, seed=cfg.data_seed, progress=progress)
        model.requires_grad_(False)
        return place_model(model, resolve_device(cfg.device), resolve_dtype(cfg.dtype)), tokenizer

    return _cached(_MODELS, _model_key(cfg), build)


def client_devices(cfg: RunConfig, num_clients: int | None = None) -> list[DeviceProfile]:
    """Each client's device profile as a run of ``cfg`` assigns it (its fleet, seeded by ``data_seed``), for
    ``num_clients`` clients (default ``fed.num_clients``): what :attr:`Federation.devices` holds."""
    return _cost_model(cfg).devices(cfg.fed.num_clients if num_clients is None else num_clients)


def _cost_model(cfg: RunConfig) -> CostModel:
    """The run's cost model (cheap to build; its device assignment is seeded by ``data_seed``)."""
    from fedmoe.fl.cost import CostModel

    return CostModel.build(cfg.cost.fleet, mode=cfg.cost.mode, arch=cfg.cost.projection, seed=cfg.data_seed)

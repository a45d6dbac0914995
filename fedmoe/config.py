"""One config tree for every run: dataclasses, YAML files and ``key=value`` overrides.

A run is fully described by a :class:`RunConfig`. YAML files under ``reproduce/configs/`` hold
named configs; the CLI (``--set a.b=c``) and papermill parameters override single fields. A
*scale* preset (``smoke``, ``default``, ``paper``) fills sizes first, so only parameters differ
between a CI smoke run and a paper-scale run, never the code path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCALES = ("smoke", "default", "paper")


@dataclass
class ModelConfig:
    """Which base MoE model: a zoo name (pretrained offline by the kit) or a local HF checkpoint path."""

    name: str = "tiny-mixtral"
    path: str | None = None
    scale: str = "default"


@dataclass
class DataConfig:
    """Which task suite or dataset, its sizes, and how it is split over clients."""

    suite: str = "gsm"
    source: str | None = None
    n_train: int = 1200
    n_test: int = 200
    partition: str = "dirichlet"
    alpha: float = 0.5
    domains_per_client: int = 2


@dataclass
class FedConfig:
    """The federation: clients, rounds, local work and evaluation cadence."""

    num_clients: int = 10
    clients_per_round: int = 5
    rounds: int = 10
    local_steps: int = 10
    batch_size: int = 8
    lr: float = 3e-3
    max_length: int = 128
    eval_every: int = 1
    eval_batch_size: int = 32


@dataclass
class CostConfig:
    """How simulated time is priced: a device fleet, and which architecture (trained or a paper-scale one).

    ``gradient_checkpointing``: price training with activation checkpointing (one extra forward pass,
    activations of one layer plus each layer's input kept; see :mod:`fedmoe.fl.pricing`)."""

    fleet: str = "consumer"
    mode: str = "trained"
    projection: str | None = None
    server_seconds: float = 1.0
    tokens_scale: float = 1.0
    gradient_checkpointing: bool = False


@dataclass
class RunConfig:
    """Everything one federated run needs; ``method_args`` holds the method's own options.

    ``threads``: torch intra-op threads (1 is fastest for the tiny models on a small CPU; raise it
    for paper-scale models on a CPU).
    """

    name: str = "run"
    method: str = "fedit"
    seed: int = 0
    scale: str = "default"
    threads: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    method_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-serialisable dict."""
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the resolved config (what makes two runs the same run)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


SCALE_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "model.scale": "smoke",
        "data.n_train": 160,
        "data.n_test": 32,
        "fed.num_clients": 4,
        "fed.clients_per_round": 2,
        "fed.rounds": 2,
        "fed.local_steps": 2,
        "fed.batch_size": 4,
        "fed.max_length": 96,
    },
    "default": {},
    "paper": {
        "model.scale": "paper",
        "data.n_train": 15000,
        "data.n_test": 1000,
        "fed.num_clients": 20,
        "fed.clients_per_round": 10,
        "fed.rounds": 50,
        "fed.local_steps": 50,
        "fed.batch_size": 16,
        "fed.lr": 1e-4,
        "fed.max_length": 512,
        "cost.fleet": "datacenter",
    },
}


def _parse_value(text: str) -> Any:
    """Read a CLI override value with YAML rules (numbers, booleans, null, lists, dicts)."""
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any] | list[str] | None) -> RunConfig:
    """Return a copy of ``cfg`` with dotted-key overrides applied.

    ``overrides`` is a dict (``{"fed.rounds": 5}``) or a list of ``"fed.rounds=5"`` strings.
    Unknown keys raise a ``KeyError`` that lists the valid ones; ``method_args.*`` keys are free-form.
    """
    if not overrides:
        return cfg
    if isinstance(overrides, list):
        overrides = dict(_split_override(item) for item in overrides)
    data = cfg.to_dict()
    for key, value in overrides.items():
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            free_form = parts[0] == "method_args"
            if not isinstance(node, dict) or (part not in node and not (free_form and i > 0)):
                valid = sorted(node) if isinstance(node, dict) else []
                raise KeyError(f"unknown config key {key!r}: {part!r} is not one of {valid}")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from a (possibly partial) nested dict; unknown keys are an error."""
    data = dict(data)
    sections = {"model": ModelConfig, "data": DataConfig, "fed": FedConfig, "cost": CostConfig}
    kwargs: dict[str, Any] = {}
    valid = {f.name for f in dataclasses.fields(RunConfig)}
    for key, value in data.items():
        if key not in valid:
            raise KeyError(f"unknown config key {key!r}; valid top-level keys: {sorted(valid)}")
        if key in sections:
            cls = sections[key]
            names = {f.name for f in dataclasses.fields(cls)}
            bad = set(value or {}) - names
            if bad:
                raise KeyError(f"unknown key(s) {sorted(bad)} in section {key!r}; valid: {sorted(names)}")
            kwargs[key] = cls(**(value or {}))
        else:
            kwargs[key] = value
    cfg = RunConfig(**kwargs)
    if cfg.scale not in SCALES:
        raise ValueError(f"unknown scale {cfg.scale!r}; use one of {SCALES}")
    return cfg


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    scale: str | None = None,
) -> RunConfig:
    """Load a run config: defaults <- YAML file <- scale preset <- overrides.

    A YAML file describes an experiment at the default scale; the ``smoke`` and ``paper`` presets then
    resize it (clients, rounds, data sizes), and explicit overrides win over everything. The scale is
    taken from ``scale=``, else a ``scale`` override, else the file, else ``default``.
    """
    file_data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist (configs live in reproduce/configs/)")
        file_data = yaml.safe_load(path.read_text()) or {}
    if isinstance(overrides, list):
        overrides = dict(_split_override(item) for item in overrides)
    overrides = dict(overrides or {})
    chosen = scale or overrides.pop("scale", None) or file_data.get("scale") or "default"
    overrides.pop("scale", None)
    if chosen not in SCALES:
        raise ValueError(f"unknown scale {chosen!r}; use one of {SCALES}")
    cfg = from_dict({**file_data, "scale": chosen})
    cfg = apply_overrides(cfg, SCALE_PRESETS[chosen])
    return apply_overrides(cfg, overrides)


def _split_override(item: str) -> tuple[str, Any]:
    """``"fed.rounds=5"`` -> ``("fed.rounds", 5)``."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value (e.g. fed.rounds=5)")
    key, value = item.split("=", 1)
    return key.strip(), _parse_value(value)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

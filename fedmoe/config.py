"""One config tree for every run: dataclasses, YAML files and ``key=value`` overrides, checked up front.

A run is fully described by a :class:`RunConfig`. YAML files under ``reproduce/configs/`` hold named
configs; the CLI (``--set a.b=c``) and papermill parameters override single fields. Sizes are data: a
file's ``scales:`` block holds the sizes of each scale (:data:`SCALES`: ``smoke``, ``classroom``, ``default``,
``paper``); a scale the file gives no block for takes the generic :data:`SCALE_PRESETS`. Precedence, lowest
first::

    dataclass defaults < file top level < the file's block for the scale (else the generic preset) < overrides

A value written in a file either applies or is an error: a top-level value that a scale block or the
generic preset would replace by another value is a :class:`ConfigError`, never silently overridden.

Every value is type-checked and range-checked (and every name looked up: method, fleet, suite, zoo
model, ...) when the config is built, before any model or data loads and before a results folder is
made. Numbers may be written in any YAML/CLI spelling (``1e-4``, which YAML reads as a string, too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedmoe.errors import ConfigError

#: The size presets, smallest first: ``smoke`` checks the plumbing in seconds (its scores teach nothing),
#: ``classroom`` shows a study learning in a few CPU minutes, ``default`` is what ``make reproduce`` runs,
#: ``paper`` runs a real checkpoint. Every ``--scale`` choice of the CLI and the scripts reads this tuple.
SCALES = ("smoke", "classroom", "default", "paper")
#: What a verdict measured at a scale is worth, for the scales whose verdicts are not evidence: report rows
#: label their verdicts with it (:class:`fedmoe.report.TargetRow`; in notebooks also
#: :func:`fedmoe.studies.grid.print_scale_banner`).
SCALE_CAVEATS = {"smoke": "smoke: plumbing check", "classroom": "classroom scale"}


@dataclass
class ModelConfig:
    """Which base MoE model: a zoo name (pretrained offline by the kit) or a local HF checkpoint path."""

    name: str = "tiny-mixtral"
    path: str | None = None
    scale: str = "default"


@dataclass
class DataConfig:
    """Which task suite or dataset, its sizes, and how it is split over clients.

    ``source``: a real dataset (Hub name, local file, or a folder or glob of files, e.g. MMLU's per-subject
    CSVs) instead of the offline ``suite``; alone it is shuffled and cut 80/20. ``test_source``: the dataset's
    published test split, scored as is (``n_test`` of its rows, every row when it holds exactly that many; more
    than it holds is an error) while training uses ``source`` alone (likewise ``n_train`` of its rows).
    ``kind``: the dataset kind (:data:`fedmoe.data.loaders.KINDS`) of both sources, ``None`` to infer it from
    the columns. ``n_val``: examples carved out of the training pool (``source``'s rows, never the test file)
    before it is split over clients, seeded by ``data_seed`` so every method and seed shares them; a run with
    ``fed.eval_split=val`` is scored on them (tuning, :mod:`fedmoe.studies.tuning`). See
    :func:`fedmoe.data.task_data.load_task_data`."""

    suite: str = "gsm"
    source: str | None = None
    test_source: str | None = None
    kind: str | None = None
    n_train: int = 1200
    n_test: int = 200
    n_val: int = 0
    partition: str = "dirichlet"
    alpha: float = 0.5
    domains_per_client: int = 2


@dataclass
class FedConfig:
    """The federation: clients, rounds, local work and evaluation cadence, and how it treats unreliable clients.

    ``dropout``: probability that a sampled client drops out of a round (seeded per seed, round and client, so
    runs reproduce). A round goes on with the clients that answered when at least
    ``ceil(min_fit_fraction * sampled)`` did; else it is retried with a fresh seeded sample, at most
    ``max_round_retries`` times. The server waits ``timeout_seconds`` (simulated) for clients that never
    answer. ``max_update_norm``: updates whose change to what the client was sent has a larger L2 norm are
    rejected (``None``: no bound). See :mod:`fedmoe.fl.robust`.
    ``sim_time_budget``: simulated seconds a run may use; it ends after the first round whose cumulative
    ``sim_time`` reaches the budget (``rounds`` then only caps the count; ``None``: run all ``rounds``). Methods
    compared on time (FLUX's time-to-accuracy) get one budget, so a method with cheap rounds runs more of them.
    ``eval_split``: what the run is scored on, ``test`` (the held-out test set) or ``val`` (the ``data.n_val``
    validation items carved from the training pool, for tuning without reading the test items).
    """

    num_clients: int = 10
    clients_per_round: int = 5
    rounds: int = 10
    local_steps: int = 10
    batch_size: int = 8
    lr: float = 3e-3
    max_length: int = 128
    eval_every: int = 1
    eval_batch_size: int = 32
    min_fit_fraction: float = 0.5
    dropout: float = 0.0
    max_round_retries: int = 3
    timeout_seconds: float = 300.0
    max_update_norm: float | None = None
    sim_time_budget: float | None = None
    eval_split: str = "test"


@dataclass
class CostConfig:
    """How simulated time is priced: a device fleet, and which architecture (trained or a paper-scale one).

    ``gradient_checkpointing``: price training with activation checkpointing (one extra forward pass,
    activations of one layer plus each layer's input kept; see :mod:`fedmoe.fl.pricing`).
    ``base_bits``: in projection only, price every method's frozen base weights at this many bits (4: a
    QLoRA-style NF4 base, so a paper-scale model can be priced on devices that cannot hold it in bf16);
    ``None`` keeps each method's own storage."""

    fleet: str = "consumer"
    mode: str = "trained"
    projection: str | None = None
    server_seconds: float = 1.0
    tokens_scale: float = 1.0
    gradient_checkpointing: bool = False
    base_bits: int | None = None


@dataclass
class RunConfig:
    """Everything one federated run needs; ``method_args`` holds the method's own options.

    ``seed`` drives everything of a run (initialisation, client sampling, batch order); ``data_seed`` fixes
    the world methods are compared on (the zoo base model, the task data, the partition and which device
    each client has), so runs of several seeds share their data unless asked otherwise.
    ``threads``: torch intra-op threads (1 is fastest for the tiny models on a small CPU; raise it
    for paper-scale models on a CPU). ``device``: ``auto`` (CUDA when available, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``; ``dtype``: ``float32`` or ``bfloat16`` (the base model's weights, with bf16
    autocast; adapters train and the server aggregates in float32/float64 either way). See
    :mod:`fedmoe.device`.
    """

    name: str = "run"
    method: str = "fedit"
    seed: int = 0
    data_seed: int = 0
    scale: str = "default"
    threads: int = 1
    device: str = "auto"
    dtype: str = "float32"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    method_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-serialisable dict."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run: :meth:`to_dict` without the :data:`NEUTRAL_ADDITIONS` that hold
        their neutral default (the written ``config.yaml`` and the digest are made from it)."""
        out = self.to_dict()
        for key, neutral in NEUTRAL_ADDITIONS.items():
            section, name = key.split(".")
            if out[section][name] == neutral:
                del out[section][name]
        return out

    def digest(self) -> str:
        """A short hash of the resolved config (what makes two runs the same run)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]


#: Fields added after run folders were published, with the default that leaves a run exactly as before: while
#: at it they are left out of a run's identity, so adding them renames no existing run (a new field goes here
#: only when its default changes nothing a run computes).
NEUTRAL_ADDITIONS: dict[str, Any] = {"fed.sim_time_budget": None, "cost.base_bits": None, "data.test_source": None,
                                     "data.kind": None, "data.n_val": 0, "fed.eval_split": "test"}


# The generic sizes of a scale, used where a config file gives no ``scales:`` block for it (and for runs
# without a file): the study configs in reproduce/configs/ write their own blocks.
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
    "classroom": {
        "model.scale": "classroom",
        "data.n_train": 480,
        "data.n_test": 200,
        "fed.num_clients": 6,
        "fed.clients_per_round": 3,
        "fed.rounds": 6,
        "fed.local_steps": 8,
        "fed.batch_size": 8,
        "fed.max_length": 96,
        "fed.eval_every": 3,
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

# Lower bounds of numeric fields: (key, bound, strict); every listed value must be >= (or >) the bound.
_LOWER_BOUNDS: tuple[tuple[str, float, bool], ...] = (
    ("seed", 0, False), ("data_seed", 0, False), ("threads", 1, False),
    ("data.n_train", 1, False), ("data.n_test", 1, False), ("data.n_val", 0, False), ("data.alpha", 0, True),
    ("data.domains_per_client", 1, False),
    ("fed.num_clients", 1, False), ("fed.clients_per_round", 1, False), ("fed.rounds", 1, False),
    ("fed.local_steps", 1, False), ("fed.batch_size", 1, False), ("fed.lr", 0, True),
    ("fed.max_length", 8, False), ("fed.eval_every", 1, False), ("fed.eval_batch_size", 1, False),
    ("fed.min_fit_fraction", 0, True), ("fed.dropout", 0, False), ("fed.max_round_retries", 0, False),
    ("fed.timeout_seconds", 0, False),
    ("cost.server_seconds", 0, False), ("cost.tokens_scale", 0, True),
)
COST_MODES = ("trained", "projection")


# ------------------------------------------------------------------------------------------- types


def bad_value(key: str, value: Any, expected: str, example: Any) -> ConfigError:
    """The kit's one-line message for a bad value: key, value, what is expected and an example fix."""
    shown = json.dumps(example) if not isinstance(example, str) else example
    return ConfigError(f"config key {key}={value!r} is invalid: expected {expected} (fix: e.g. --set {key}={shown})")


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping of option names to values"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation, "a value")


def _number(value: Any) -> float | None:
    """``value`` as a finite number if it is one or spells one (``"1e-4"``, ``".5"``); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def coerce_value(key: str, value: Any, annotation: Any, example: Any = None) -> Any:
    """``value`` checked against a field's type annotation: the value itself, or a number spelled as a string
    (YAML reads ``1e-4`` as text) converted; anything else is a :class:`ConfigError` naming ``key``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce_value(key, value, option, example)
            except ConfigError:
                pass
        raise bad_value(key, value, _describe(annotation), example)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad_value(key, value, _describe(annotation), example if example is not None else [])
        return [coerce_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad_value(key, value, _describe(annotation), "{}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise bad_value(key, value, "true or false", "true")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise bad_value(key, value, "a string", example if example is not None else "name")
    number = _number(value)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if number is not None and number.is_integer():
            return int(number)
        raise bad_value(key, value, "an integer", example if example is not None else 1)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and number is not None:
            return value  # an int stays an int, so a config's digest does not depend on the spelling 16 vs 16.0
        if number is not None:
            return number
        raise bad_value(key, value, "a finite number (e.g. 1e-4, 0.5)", example if example is not None else 0.5)
    raise TypeError(f"config field {key} has an annotation the checker does not handle: {annotation!r}")


def coerce_fields(cls: type, values: Any, prefix: str, owner: str) -> dict[str, Any]:
    """Check a mapping of ``values`` against the fields of dataclass ``cls``: unknown keys and values of the
    wrong type are :class:`ConfigError`; returns the values with numbers spelled as strings converted.

    ``prefix`` (``"fed."``, ``"method_args."``) and ``owner`` (``"section fed"``) make the messages precise.
    """
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{owner} must be a mapping of keys to values, got {values!r} "
                          f"(fix: e.g. {prefix.rstrip('.')}: {{...}} in YAML)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} in {owner}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        default = fields[name].default
        example = default if default is not dataclasses.MISSING and default is not None else None
        if dataclasses.is_dataclass(hints[name]):
            out[name] = hints[name](**coerce_fields(hints[name], value, f"{prefix}{name}.", f"section {name}"))
        else:
            out[name] = coerce_value(prefix + name, value, hints[name], example)
    return out


# -------------------------------------------------------------------------------------- validation


def validate(cfg: RunConfig) -> RunConfig:
    """Range-check ``cfg`` and look up the names this layer knows (suite, partition, zoo model, paths); raise
    :class:`ConfigError` on the first problem. Loads nothing big. The names of higher layers (method and its
    options, fleet, projection) are checked by :func:`fedmoe.experiment.check_config`, which every entry point
    (CLI, grid, ``run``) calls before anything loads or any folder is made."""
    if cfg.scale not in SCALES:
        raise bad_value("scale", cfg.scale, f"one of {SCALES}", "smoke")
    if not is_folder_name(cfg.name):
        raise bad_value("name", cfg.name, "a non-empty run name without path separators (it names a folder)",
                        "my-run")
    for key, bound, strict in _LOWER_BOUNDS:
        value = _get(cfg, key)
        if value < bound or (strict and value == bound):
            expected = f"a number {'>' if strict else '>='} {bound}"
            raise bad_value(key, value, expected, _get(RunConfig(), key))
    cores = os.cpu_count() or 1
    if cfg.threads > cores:  # more threads than cores only oversubscribes the CPU
        raise bad_value("threads", cfg.threads, f"at most this machine's {cores} CPU cores", 1)
    fed = cfg.fed
    if fed.min_fit_fraction > 1:
        raise bad_value("fed.min_fit_fraction", fed.min_fit_fraction,
                        "a fraction in (0, 1] of the sampled clients that must answer", FedConfig.min_fit_fraction)
    if fed.dropout >= 1:
        raise bad_value("fed.dropout", fed.dropout, "a probability in [0, 1)", 0.1)
    if fed.max_update_norm is not None and fed.max_update_norm <= 0:
        raise bad_value("fed.max_update_norm", fed.max_update_norm, "a number > 0, or null for no bound", 100.0)
    if fed.sim_time_budget is not None and fed.sim_time_budget <= 0:
        raise bad_value("fed.sim_time_budget", fed.sim_time_budget, "simulated seconds > 0, or null for none", 600.0)
    if fed.clients_per_round > fed.num_clients:
        raise bad_value("fed.clients_per_round", fed.clients_per_round,
                        f"at most fed.num_clients={fed.num_clients} (clients sampled per round)", fed.num_clients)
    if cfg.data.n_train < fed.num_clients:
        raise bad_value("data.n_train", cfg.data.n_train,
                        f"at least one training example per client (fed.num_clients={fed.num_clients})",
                        max(fed.num_clients, DataConfig.n_train))
    _check_validation_split(cfg)
    if cfg.cost.mode not in COST_MODES:
        raise bad_value("cost.mode", cfg.cost.mode, f"one of {COST_MODES}", "projection")
    _check_device(cfg)
    _check_model(cfg.model)
    _check_data(cfg.data)
    return cfg


def is_folder_name(text: str) -> bool:
    """Whether ``text`` names one folder inside its parent (non-empty, no path separator, not ``.`` or ``..``):
    a run's folder stays inside its ``out_dir``."""
    return bool(text) and not any(c in text for c in "/\\\0") and text not in (".", "..")


def _check_validation_split(cfg: RunConfig) -> None:
    """``fed.eval_split`` names a split, ``val`` has items to score, and carving ``data.n_val`` from the training
    pool leaves every client a training example (a real source's pool is counted by ``check_dataset``)."""
    from fedmoe.data.task_data import EVAL_SPLITS

    data, fed = cfg.data, cfg.fed
    if fed.eval_split not in EVAL_SPLITS:
        raise bad_value("fed.eval_split", fed.eval_split, f"one of {EVAL_SPLITS}", "test")
    if fed.eval_split == "val" and data.n_val == 0:
        raise ConfigError("config key fed.eval_split='val' scores the run on the validation items, but data.n_val=0 "
                          "carves none (fix: e.g. --set data.n_val=100, or --set fed.eval_split=test)")
    if data.n_train - data.n_val < fed.num_clients:
        raise bad_value("data.n_val", data.n_val, f"at most data.n_train - fed.num_clients = "
                        f"{data.n_train - fed.num_clients} (the validation items come out of the {data.n_train} "
                        "training examples, and every client needs one)", max(0, (data.n_train - fed.num_clients) // 5))


def _check_device(cfg: RunConfig) -> None:
    from fedmoe.device import DeviceError, resolve_device, resolve_dtype

    for key, check in (("device", resolve_device), ("dtype", resolve_dtype)):
        try:
            check(getattr(cfg, key))
        except DeviceError as err:
            raise ConfigError(f"config key {err}") from None


def _get(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _check_model(model: ModelConfig) -> None:
    if model.path is not None:
        path = Path(model.path).expanduser()
        if not path.is_dir():
            raise bad_value("model.path", model.path, "an existing local Hugging Face checkpoint directory "
                            "(config.json + weights), or null for a zoo model", "/data/OLMoE-1B-7B-0924")
        return
    from fedmoe.moe.zoo import SCALES as ZOO_SCALES
    from fedmoe.moe.zoo import ZOO

    if model.name not in ZOO:
        raise bad_value("model.name", model.name, f"a zoo model, one of {sorted(ZOO)} (or set model.path)",
                        "tiny-mixtral")
    if model.scale == "paper":
        raise ConfigError("scale=paper runs a real checkpoint: model.path is not set (fix: e.g. --set "
                          "model.path=/data/OLMoE-1B-7B-0924, a local Hugging Face MoE checkpoint)")
    if model.scale not in ZOO_SCALES:
        raise bad_value("model.scale", model.scale, f"a zoo scale, one of {sorted(ZOO_SCALES)}", "default")


def _check_data(data: DataConfig) -> None:
    """Names and paths of the data section; the rows themselves are read by
    :func:`fedmoe.experiment.check_config`."""
    from fedmoe.data.loaders import KINDS
    from fedmoe.data.offline import SUITES
    from fedmoe.data.partition import SCHEMES

    if data.partition not in SCHEMES:
        raise bad_value("data.partition", data.partition, f"one of {SCHEMES}", "dirichlet")
    if data.kind is not None and data.kind not in KINDS:
        raise bad_value("data.kind", data.kind, f"a dataset kind, one of {KINDS}, or null to infer it from the "
                        "columns", "mmlu")
    if data.source is None:
        for key in ("test_source", "kind"):
            if getattr(data, key) is not None:
                raise ConfigError(f"config key data.{key}={getattr(data, key)!r} applies only with data.source (the "
                                  f"offline suite {data.suite!r} is generated) (fix: --set data.source=PATH, or "
                                  f"--set data.{key}=null)")
        if data.suite not in SUITES:
            raise bad_value("data.suite", data.suite, f"an offline suite, one of {SUITES} (or set data.source)",
                            "gsm")
        return
    train = _source_files("source", data.source, "data/gsm8k/train.jsonl")
    if data.test_source is None:
        return
    test = _source_files("test_source", data.test_source, "data/gsm8k/test.jsonl")
    shared = {p.resolve() for p in train} & {p.resolve() for p in test}
    if shared:
        raise ConfigError(f"config keys data.source={data.source!r} and data.test_source={data.test_source!r} both "
                          f"name {sorted(shared)[0]}: the model would be scored on its own training rows (fix: "
                          "point data.source at the train split and data.test_source at the test split)")


def _source_files(key: str, value: str, example: str) -> list[Path]:
    """The local files ``data.<key>`` names, each an existing data file (none for a Hub name)."""
    from fedmoe.data.loaders import SUFFIXES, data_files, is_local

    if not is_local(value):
        return []
    try:
        files = data_files(value)
    except FileNotFoundError as err:
        raise ConfigError(f"config key data.{key}={value!r} is invalid: {err}") from None
    if not files[0].is_file():
        raise bad_value(f"data.{key}", value, f"an existing {'/'.join(SUFFIXES)} file, a folder or glob of them, "
                        "or a Hub dataset name", example)
    if files[0].suffix.lower() not in SUFFIXES:
        raise bad_value(f"data.{key}", value, f"a file ending in one of {SUFFIXES}", example)
    return files


# ----------------------------------------------------------------------------------------- loading


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a (possibly partial) nested dict."""
    return validate(RunConfig(**coerce_fields(RunConfig, data, "", "the config")))


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any] | list[str] | None) -> RunConfig:
    """Return a validated copy of ``cfg`` with dotted-key overrides applied.

    ``overrides`` is a dict (``{"fed.rounds": 5}``) or a list of ``"fed.rounds=5"`` strings. Unknown keys
    are a :class:`ConfigError` that lists the valid ones; ``method_args.*`` keys are the method's options.
    """
    if not overrides:
        return cfg
    return from_dict(_merge(cfg.to_dict(), _nest(_as_dict(overrides))))


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    *,
    scale: str | None = None,
) -> RunConfig:
    """Load a validated run config: defaults < file top level < file's scale block (else the generic
    preset) < overrides (see the module docstring).

    The scale is taken from ``scale=``, else a ``scale`` override, else the file, else ``default``.
    """
    file_data: dict[str, Any] = {}
    label = "the overrides"
    if path is not None:
        path, label = Path(path), str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (configs live in reproduce/configs/)")
        try:
            file_data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f", line {where.line + 1}" if where else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)}); "
                              "fix the file's syntax") from None
        if not isinstance(file_data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys (e.g. 'method: fedit'), "
                              f"got {type(file_data).__name__}")
    file_data = dict(file_data)
    blocks = _scale_blocks(file_data.pop("scales", None), label)
    for layer in (file_data, *map(_nest, blocks.values())):
        coerce_fields(RunConfig, layer, "", label)  # keys and types of each layer, before layers merge
    overrides = _as_dict(overrides)
    chosen = scale or overrides.pop("scale", None) or file_data.get("scale") or "default"
    overrides.pop("scale", None)
    if chosen not in SCALES:
        raise bad_value("scale", chosen, f"one of {SCALES}", "smoke")
    explicit = _flatten(_nest(overrides))
    top = {k: v for k, v in _flatten(file_data).items() if k not in explicit}  # explicit overrides decide those
    for name, block in blocks.items():
        _no_conflict(top, block, f"{label}: {{key}} is set at the top level ({{a!r}}) and in scales.{name} "
                     f"({{b!r}}), so the top-level value would not apply at scale {name}; write it in each scale "
                     "block instead")
    sizes = blocks.get(chosen)
    if sizes is None:
        sizes = SCALE_PRESETS[chosen]
        _no_conflict(top, sizes, f"{label}: {{key}}={{a!r}} would be replaced by the generic {chosen} preset "
                     f"({{key}}={{b!r}}); give the file a 'scales: {{{{{chosen}: ...}}}}' block holding it, drop "
                     "it, or pass it as an override (--set)")
    merged = _merge(file_data, {"scale": chosen}, _nest(sizes), _nest(overrides))
    return from_dict(merged)


def _scale_blocks(blocks: Any, label: str) -> dict[str, dict[str, Any]]:
    """The file's ``scales:`` blocks, flattened to dotted keys and checked."""
    if blocks is None:
        return {}
    if not isinstance(blocks, dict) or set(blocks) - set(SCALES):
        raise ConfigError(f"{label}: 'scales' must map scale names {SCALES} to blocks of sizes, got "
                          f"{sorted(blocks) if isinstance(blocks, dict) else blocks!r}")
    out = {}
    for name, block in blocks.items():
        if not isinstance(block, dict):
            raise ConfigError(f"{label}: scales.{name} must be a mapping of config keys, got {block!r}")
        flat = _flatten(block)
        for key in flat:
            if key.split(".")[0] in ("scale", "scales"):
                raise ConfigError(f"{label}: scales.{name} cannot set {key!r} (a block is the sizes of its scale)")
        out[name] = flat
    return out


def _no_conflict(top: dict[str, Any], layer: dict[str, Any], message: str) -> None:
    """Raise if ``layer`` would replace a value ``top`` writes by a different one."""
    for key, b in layer.items():
        if key in top and not _same(top[key], b):
            raise ConfigError(message.format(key=key, a=top[key], b=b))


def _same(a: Any, b: Any) -> bool:
    na, nb = _number(a), _number(b)
    return a == b or (na is not None and na == nb)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fed": {"rounds": 3}}`` -> ``{"fed.rounds": 3}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"fed.rounds": 3}`` -> ``{"fed": {"rounds": 3}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts, later layers winning key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merge(out[key], value)
            else:
                out[key] = value
    return out


def _as_dict(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    if isinstance(overrides, list | tuple):
        return dict(_split_override(item) for item in overrides)
    return dict(overrides or {})


def _split_override(item: str) -> tuple[str, Any]:
    """``"fed.rounds=5"`` -> ``("fed.rounds", 5)``; values are read with YAML rules."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (fix: e.g. --set fed.rounds=5)")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML (fix: quote it, e.g. "
                          f"--set '{key.strip()}=\"{value}\"')") from None
    return key.strip(), parsed


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.identity(), sort_keys=False))

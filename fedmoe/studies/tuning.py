"""Equal tuning on a validation split: every method of a comparison gets the same grid, chosen without the test items.

A method whose learning rate was picked by its test score is compared on a score its tuning already saw. The fair
rule: every method gets the same small grid of what is tuned (dotted config keys, e.g. ``{"fed.lr": [1e-3, 3e-3,
1e-2]}``), each point run with ``fed.eval_split=val``, so it is scored on the ``data.n_val`` validation items carved
from the training pool (:func:`fedmoe.data.task_data.carve_validation`; the test items are never read); per method
the point with the highest mean validation score over the tuning seeds wins (ties: the first point), and
:meth:`TuningResult.apply` gives the config the comparison then runs on the test split. The chosen values and the
validation scores are the result's :meth:`TuningResult.table`, for the report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmoe.config import ConfigError, RunConfig, apply_overrides
from fedmoe.experiment import check_config
from fedmoe.studies.evidence import run_score
from fedmoe.studies.grid import run_cells, with_seeds

#: Keys a grid may not change: which method and seed a run is, and (``data``, ``data.*``) the data it trains and is
#: scored on; a grid point changing the data would score each point on other validation items.
RESERVED = ("method", "seed", "data_seed", "data", "fed.eval_split")


def grid_points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every point of ``grid`` (``{key: values}``), the first key varying slowest; an empty grid, a key without
    values or a :data:`RESERVED` key is a ValueError."""
    if not grid:
        raise ValueError("the tuning grid is empty: give at least one key and its values (e.g. "
                         "{'fed.lr': [1e-3, 3e-3, 1e-2]})")
    for key, values in grid.items():
        if key in RESERVED or key.startswith("data."):
            raise ValueError(f"grid key {key!r} cannot be tuned: it names the method, the seed or the data a run "
                             f"trains and is scored on ({', '.join(RESERVED)}, data.*); tune a training setting such "
                             "as 'fed.lr'")
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid key {key!r} has no values ({values!r}); give a non-empty list, e.g. [1e-3, 3e-3]")
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


@dataclass(frozen=True)
class TuningResult:
    """Every method's validation scores per grid point and its choice.

    ``points``: the grid points, in grid order. ``scores[method][i]``: the validation score of each tuning seed's
    run at ``points[i]``; ``folders[method][i]``: those runs' folders."""

    points: list[dict[str, Any]]
    scores: dict[str, list[list[float]]]
    folders: dict[str, list[list[Path]]]

    @classmethod
    def from_folders(cls, points: list[dict[str, Any]], folders: dict[str, list[list[Path]]], *, last: int = 1
                     ) -> TuningResult:
        """The result read from the tuning runs' folders (``folders[method][i]``: the runs at ``points[i]``, one
        per seed), each scored by :func:`~fedmoe.studies.evidence.run_score`; a method without runs at a point,
        or with a non-finite score, is a ValueError."""
        scores = {}
        for method, runs in folders.items():
            if len(runs) != len(points):
                raise ValueError(f"method {method!r} has runs for {len(runs)} grid points, not the grid's "
                                 f"{len(points)}; every method runs every grid point")
            missing = [p for p, seeds in zip(points, runs, strict=True) if not seeds]
            if missing:
                raise ValueError(f"method {method!r} has no tuning runs at grid point(s) {missing}; every method "
                                 "runs every grid point")
            scores[method] = [[run_score(f, last) for f in seeds] for seeds in runs]
            bad = [p for p, s in zip(points, scores[method], strict=True) if not all(map(math.isfinite, s))]
            if bad:
                raise ValueError(f"method {method!r} has a non-finite validation score at grid point(s) {bad}; "
                                 "check those runs' rounds.jsonl")
        return cls(list(points), scores, {m: [list(s) for s in runs] for m, runs in folders.items()})

    def mean_scores(self, method: str) -> list[float]:
        """``method``'s mean validation score over the tuning seeds at each grid point."""
        return [float(np.mean(s)) for s in self._scores_of(method)]

    def best_index(self, method: str) -> int:
        """The index of ``method``'s chosen grid point: the highest mean validation score, the first on ties."""
        means = self.mean_scores(method)
        return max(range(len(means)), key=means.__getitem__)

    @property
    def chosen(self) -> dict[str, dict[str, Any]]:
        """Every method's chosen overrides (``{method: {key: value}}``)."""
        return {method: dict(self.points[self.best_index(method)]) for method in self.scores}

    def apply(self, method: str, cfg: RunConfig) -> RunConfig:
        """``cfg`` with ``method``'s chosen values, scored on the test split (its ``data.n_val`` is kept, so it
        trains on the very examples the tuning runs trained on)."""
        return apply_overrides(cfg, {**self.points[self.best_index(method)], "fed.eval_split": "test"})

    def table(self) -> list[dict[str, Any]]:
        """One row per method and grid point: the point's values, the mean and per-seed validation scores, and
        whether it was chosen."""
        rows = []
        for method in self.scores:
            best, means = self.best_index(method), self.mean_scores(method)
            for i, point in enumerate(self.points):
                rows.append({"method": method, **point, "val_score": means[i],
                             "val_scores": list(self.scores[method][i]), "chosen": i == best})
        return rows

    def _scores_of(self, method: str) -> list[list[float]]:
        if method not in self.scores:
            raise ValueError(f"method {method!r} was not tuned; tuned methods: {sorted(self.scores)}")
        return self.scores[method]


def tuning_config(method: str, cfg: RunConfig, point: dict[str, Any]) -> RunConfig:
    """``cfg`` at grid ``point``, scored on the validation split; a key the config (or the method's options) does
    not have is a :class:`~fedmoe.config.ConfigError` naming the method and the key."""
    try:
        return check_config(apply_overrides(cfg, {**point, "fed.eval_split": "val"}))
    except ConfigError as err:
        raise ConfigError(f"grid point {point} does not apply to method {method!r} (method {cfg.method}): {err}"
                          ) from None


def tune(configs_by_method: dict[str, RunConfig], grid: dict[str, Sequence[Any]], *, out_dir: str | Path,
         seeds: Sequence[int] = (0,), jobs: int | None = None, progress: bool = True, last: int = 1
         ) -> TuningResult:
    """Tune every method on the same ``grid`` over the validation split: every (method, point, seed) run in one
    parallel :func:`~fedmoe.studies.grid.run_configs` call (finished runs are reused), each scored by the mean of
    its last ``last`` evaluations. Every config must share its data section and ``data_seed`` (so every method is
    tuned on the same validation items) and carve some (``data.n_val > 0``)."""
    if not configs_by_method or not seeds:
        raise ValueError(f"nothing to tune: {len(configs_by_method)} methods, seeds {list(seeds)}; give at least one "
                         "of each")
    points = grid_points(grid)
    first, *others = configs_by_method
    for method in others:
        a, b = configs_by_method[first], configs_by_method[method]
        if (a.data_seed, a.data) != (b.data_seed, b.data):
            raise ConfigError(f"methods {first!r} and {method!r} have different data or data_seed, so they would be "
                              "tuned on different validation items; give every method the same data section")
    cells = {(method, i): with_seeds([tuning_config(method, cfg, point)], seeds)
             for method, cfg in configs_by_method.items() for i, point in enumerate(points)}
    folders = run_cells(cells, out_dir=out_dir, jobs=jobs, progress=progress)
    return TuningResult.from_folders(
        points, {m: [folders[(m, i)] for i in range(len(points))] for m in configs_by_method}, last=last)

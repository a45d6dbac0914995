"""Every study the kit runs, by name: its declared claims and the one function that runs it and judges them.

``python -m fedmoe.studies <study>`` (:mod:`fedmoe.studies.__main__`) and the notebooks reach a study through
:func:`get_study`; a study's sizes live in its YAML under ``reproduce/configs/`` and its claims in its module's
``CLAIMS``, nowhere else.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmoe.report import HeadToHeadRow, TargetRow
from fedmoe.studies.claims import Claim, claims_by_key


@dataclass(frozen=True)
class Outcome:
    """What running a study gives: the report section it fills (``section``, e.g. ``flux-mmlu`` for a side
    study), its report rows, its head-to-head rows and printable tables."""

    section: str
    rows: list[TargetRow]
    head_to_head: list[HeadToHeadRow] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Study:
    """A named study: ``module`` (under ``fedmoe.studies``) declares ``CLAIMS`` and the function ``entry``
    ``(scale, seeds, *, out_dir, jobs, progress, **options) -> Outcome``; ``options`` are the extra choices it
    takes (``{name: help}``, comma-separated values on the command line); ``notebook`` the notebook that shows
    it."""

    name: str
    about: str
    module: str
    entry: str
    notebook: str
    options: dict[str, str] = field(default_factory=dict)

    def load(self) -> Any:
        """The study's module."""
        return importlib.import_module(f"fedmoe.studies.{self.module}")

    @property
    def claims(self) -> tuple[Claim, ...]:
        """The declared claims (checked: unique keys, preconditions declared)."""
        claims = tuple(self.load().CLAIMS)
        claims_by_key(claims)
        return claims

    def run(self, scale: str, seeds: Sequence[int], *, out_dir: str | Path, jobs: int | None = None,
            progress: bool = True, **options) -> Outcome:
        """Run (or reuse) the study's cells and judge its claims."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"study {self.name!r} takes no option {unknown}; its options: {sorted(self.options)}")
        entry: Callable[..., Outcome] = getattr(self.load(), self.entry)
        return entry(scale, list(seeds), out_dir=out_dir, jobs=jobs, progress=progress, **options)


STUDIES = {s.name: s for s in (
    Study("quickstart", "FedIT against central and local-only training", "quickstart", "study",
          "notebooks/00_quickstart.ipynb"),
    Study("flux", "FLUX's time-to-accuracy against FMD/FMQ/FMES", "flux", "study",
          "notebooks/flux/01_time_to_accuracy.ipynb",
          {"suites": "comma-separated suites (default: all)", "zoo_scale": "the zoo model's scale (default: the YAML's)"}),
    Study("flame", "FLAME against the heterogeneous-LoRA baselines in three compute settings, after its premise",
          "flame", "study", "notebooks/flame/01_compute_settings.ipynb"),
    Study("flame-granularity", "FLAME's top-k premise on zoo models of one expert budget at two granularities",
          "flame", "granularity_study", "notebooks/flame/01_compute_settings.ipynb"),
    Study("flame-long", "FLAME's compute-setting claims at 3x the rounds, and each weak tier's deployed model",
          "flame", "long_study", "notebooks/flame/04_long_horizon.ipynb"),
    Study("fftmoe", "FFT-MoE against FedIT and HetLoRA over data splits, with the attention control", "fftmoe",
          "study", "notebooks/fftmoe/01_noniid.ipynb"),
    Study("fftmoe-long", "FFT-MoE's split and retention claims at 3x the rounds", "fftmoe", "long_study",
          "notebooks/fftmoe/03_long_horizon.ipynb"),
)}


def get_study(name: str) -> Study:
    """The study registered as ``name``."""
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; available: {', '.join(STUDIES)} (python -m fedmoe.studies --list)")
    return STUDIES[name]


def key_name(row: TargetRow) -> str:
    """The ``key`` a row prints as: its claim key (or target) and its qualifier, as one lower-case identifier."""
    where = row.target[len(row.target.split(" (")[0]):] if row.claim else ""
    return re.sub(r"[^a-z0-9]+", "_", f"{row.claim or row.target} {where}".lower()).strip("_")


def key_lines(row: TargetRow) -> list[str]:
    """``key value`` with ``_lo`` / ``_hi`` companions (the 95% interval, in the goal's units; nan when
    undefined), ``_bound`` when the measurement is only a bound, and ``_verdict``."""
    key, scale, iv = key_name(row), row.goal.scale, row.measured
    lines = [f"{key}{suffix} {scale * value:.4f}" for suffix, value in (("", iv.mean), ("_lo", iv.lo), ("_hi", iv.hi))]
    if row.bound != "exact":
        lines.append(f"{key}_bound {row.bound.replace(' ', '_')}")
    return [*lines, f"{key}_verdict {row.verdict.replace(' ', '_')}"]

"""Read run folders written by :mod:`fedmoe.experiment` (plots and notebooks read results, never live objects)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def load_rounds(folder: str | Path) -> list[dict]:
    """Every round record of a run, in order (round 0 is the evaluation before training)."""
    path = Path(folder) / "rounds.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {folder} a run folder written by `fedmoe run`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_config_dict(folder: str | Path) -> dict:
    """The resolved config a run was made with."""
    return yaml.safe_load((Path(folder) / "config.yaml").read_text())


def load_summary(folder: str | Path) -> dict:
    """The run's ``summary.json`` (written when the last round finished)."""
    path = Path(folder) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the run has not finished; resume it with `fedmoe run`")
    return json.loads(path.read_text())


def curve(folder: str | Path, x: str = "round", y: str = "score") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of the evaluated rounds, e.g. score against ``round`` or ``sim_time``."""
    rows = [r for r in load_rounds(folder) if y in r]
    return [r[x] for r in rows], [r[y] for r in rows]


def time_to_target(folder: str | Path, target: float, x: str = "sim_time", y: str = "score") -> float | None:
    """First ``x`` (simulated seconds by default) at which ``y`` reaches ``target``; ``None`` if never."""
    for xv, yv in zip(*curve(folder, x, y), strict=True):
        if yv >= target:
            return xv
    return None


def is_finished(folder: str | Path) -> bool:
    """Whether a run folder holds a finished run (its summary is written after the last round)."""
    return (Path(folder) / "summary.json").exists()

"""Read run folders written by :mod:`fedmoe.experiment` (plots and notebooks read results, never live objects)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def load_rounds(folder: str | Path) -> list[dict]:
    """Every round record of a run, in order (round 0 is the evaluation before training)."""
    path = Path(folder) / "rounds.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {folder} a run folder written by `fedmoe run`?")
    rounds = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: not a JSON round record ({err.msg}); the file is "
                                 "damaged: re-run the config with `fedmoe run` into a new folder") from None
            if not isinstance(rounds[-1], dict) or "round" not in rounds[-1]:
                raise ValueError(f"{path}, line {lineno}: not a round record (no 'round' key); is {folder} a "
                                 "run folder written by `fedmoe run`?")
    return rounds


def load_config_dict(folder: str | Path) -> dict:
    """The resolved config a run was made with."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {folder} a run folder written by `fedmoe run`?")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged (not a YAML mapping of the run's config); re-run it with `fedmoe run`")
    return data


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

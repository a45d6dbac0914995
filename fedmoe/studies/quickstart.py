"""The quickstart study: FedIT against its two references (central and local-only) over seeds.

Shared by ``notebooks/00_quickstart.ipynb`` and the report. Claims, each a paired comparison over the same
seeds and test items: federation beats training alone (FedIT - local-only > 0), and FedIT comes close to
pooling the data (FedIT - central above -5 points).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fedmoe
from fedmoe.config import RunConfig, load_config
from fedmoe.report import TargetRow
from fedmoe.stats import judge_target
from fedmoe.studies.evidence import compare, scale_of, score_interval
from fedmoe.studies.grid import run_configs, with_seeds

CONFIG = Path(fedmoe.__file__).resolve().parents[1] / "reproduce" / "configs" / "quickstart.yaml"
METHODS = ("fedit", "central", "local")
# Local-only evaluates every client's own adapter (one evaluation per client), so it is scored at the end only.
EXTRA = {"local": {"fed.eval_every": 10}}
COMMAND = "make reproduce  (notebooks/00_quickstart.ipynb)"


def configs(scale: str, seeds: Sequence[int], overrides: dict[str, Any] | None = None
            ) -> dict[str, list[RunConfig]]:
    """``{method: [config per seed]}`` of the quickstart at ``scale``."""
    out = {}
    for method in METHODS:
        cfg = load_config(CONFIG, {**(overrides or {}), "method": method, **EXTRA.get(method, {})}, scale=scale)
        out[method] = with_seeds([cfg], seeds)
    return out


def run_study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, overrides: dict[str, Any] | None = None,
              jobs: int | None = None, progress: bool = True) -> dict[str, list[Path]]:
    """Run (or reuse) every method over every seed; ``{method: [run folder per seed]}``."""
    grid = configs(scale, seeds, overrides)
    flat = [cfg for method in METHODS for cfg in grid[method]]
    folders = iter(run_configs(flat, out_dir=out_dir, jobs=jobs, progress=progress))
    return {method: [next(folders) for _ in grid[method]] for method in METHODS}


def targets(folders: dict[str, list[Path]]) -> list[TargetRow]:
    """The quickstart's two claims, judged on paired intervals (score points)."""
    rows, scale = [], scale_of(folders)
    for other, goal, text in (("local", 0.0, "FedIT beats local-only training"),
                              ("central", -0.05, "FedIT within 5 points of central training")):
        diff = compare(folders["fedit"], folders[other]).difference
        rows.append(TargetRow(paper="quickstart", target=text, measured=diff, goal=f"> {100 * goal:+.1f} points",
                              verdict=judge_target(diff, goal), command=COMMAND,
                              note=f"FedIT - {other}, paired over seeds and test items",
                              seeds=len(folders["fedit"]), run_scale=scale))
    return rows


def score_table(folders: dict[str, list[Path]]) -> dict[str, Any]:
    """``{method: Interval of the final score over seeds}``."""
    return {method: score_interval(runs) for method, runs in folders.items()}

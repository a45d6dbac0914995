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
from fedmoe.report import GLOBAL, TargetRow
from fedmoe.stats import Goal
from fedmoe.studies.claims import OURS, Claim
from fedmoe.studies.evidence import compare, head_to_head_row, scale_of, score_interval
from fedmoe.studies.grid import run_cells, with_seeds
from fedmoe.studies.registry import Outcome

CONFIG = Path(fedmoe.__file__).resolve().parents[1] / "reproduce" / "configs" / "quickstart.yaml"
METHODS = ("fedit", "central", "local")
# Local-only evaluates every client's own adapter (one evaluation per client), so it is scored at the end only.
EXTRA = {"local": {"fed.eval_every": 10}}
COMMAND = "python -m fedmoe.studies quickstart  (or notebooks/00_quickstart.ipynb)"
#: The quickstart's claims (the kit's own: no paper states them), each FedIT minus a reference, paired.
CLAIMS = (
    Claim("fedit-beats-local", "quickstart", "FedIT beats local-only training", OURS,
          "final exact match / ROUGE-L of the suite, points", "FedIT - local-only, paired over seeds and test items",
          Goal(">", 0.0), GLOBAL),
    Claim("fedit-near-central", "quickstart", "FedIT within 5 points of central training", OURS,
          "final exact match / ROUGE-L of the suite, points", "FedIT - central, paired over seeds and test items",
          Goal(">", -0.05), GLOBAL),
)
_REFERENCE = {"fedit-beats-local": "local", "fedit-near-central": "central"}


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
    return run_cells(configs(scale, seeds, overrides), out_dir=out_dir, jobs=jobs, progress=progress)


def targets(folders: dict[str, list[Path]]) -> list[TargetRow]:
    """The quickstart's claims (:data:`CLAIMS`), judged on paired intervals (score points)."""
    scale = scale_of(folders)
    return [claim.row(compare(folders["fedit"], folders[_REFERENCE[claim.key]]).difference, command=COMMAND,
                      seeds=len(folders["fedit"]), run_scale=scale) for claim in CLAIMS]


def score_table(folders: dict[str, list[Path]]) -> dict[str, Any]:
    """``{method: Interval of the final score over seeds}``."""
    return {method: score_interval(runs) for method, runs in folders.items()}


def study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, jobs: int | None = None, progress: bool = True
          ) -> Outcome:
    """The quickstart as :mod:`fedmoe.studies.registry` runs it: the runs, the claims and the score table."""
    folders = run_study(scale, seeds, out_dir=out_dir, jobs=jobs, progress=progress)
    table = "\n".join(f"{m:<8} {iv.format()}" for m, iv in score_table(folders).items())
    return Outcome("quickstart", targets(folders), [head_to_head_row(m, folders[m]) for m in METHODS],
                   [f"Final score, mean ± 95% CI over seeds {list(seeds)} (points)\n{table}"])

"""FLAME against the heterogeneous-LoRA baselines in every compute setting, over seeds: FLOPs per client tier,
scores with 95% intervals, and FLAME's lead over the best baseline paired over seeds and test items.

Runs (or reuses the finished runs of ``notebooks/flame/01_compute_settings.ipynb``, same configs and folder)
FLAME, HetLoRA, FlexLoRA, FLoRA and FedIT in the homogeneous, uniform and heavy-tail settings, prints the
tables, then ``key value`` lines, each with ``_lo`` / ``_hi`` companions (the 95% interval)::

    flame_minus_best_baseline_<setting>      FLAME's score minus the best baseline's, in score points
    flame_lead_growth                        (lead in heavy-tail) - (lead in homogeneous), in score points
    flame_minus_best_baseline_long_<setting> the same on the long-horizon check (3x the rounds, each run scored
    flame_lead_growth_long                   over its last 2 evaluations; homogeneous and heavy-tail)

and one verdict line per target (MET / FAILED / UNRESOLVED).

    python reproduce/bench_flame.py [--scale default] [--results results] [--seeds 0,1,2] [--jobs N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmoe.config import SCALES
from fedmoe.studies.evidence import score_interval
from fedmoe.studies.flame import (
    LONG_SETTINGS,
    METHODS,
    SETTINGS,
    client_budgets,
    lead,
    lead_growth,
    long_targets,
    run_grid,
    run_long,
    targets,
)
from fedmoe.studies.grid import LONG_LAST, seeds_for

ROOT = Path(__file__).resolve().parents[1]


def _key(name: str, interval, scale: float = 100.0) -> None:
    print(f"{name} {scale * interval.mean:.2f}")
    print(f"{name}_lo {scale * interval.lo:.2f}")
    print(f"{name}_hi {scale * interval.hi:.2f}")


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print the tables and the key lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default", choices=SCALES)
    parser.add_argument("--results", default=str(ROOT / "results"), help="parent folder of run folders")
    parser.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the scale's)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: $JOBS or the cores)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(seeds_for(args.scale))
    folders = run_grid(METHODS, SETTINGS, out_dir=args.results, scale=args.scale, seeds=seeds, jobs=args.jobs,
                       progress=True)

    print("\nTrain FLOPs per token by client tier (first seed; mean over the clients of the tier that trained)")
    print(f"{'setting':<12} {'method':<9} {'tier':>4} {'top-k':>5} {'rank':>4} {'clients':>7} {'GFLOP/token':>12}")
    for (method, setting), runs in folders.items():
        tiers: dict[int, list[dict]] = {}
        for row in client_budgets(runs[0]):
            tiers.setdefault(row["tier"], []).append(row)
        for tier, rows in sorted(tiers.items()):
            flops = sum(r["flops_per_token"] for r in rows) / len(rows)
            print(f"{setting:<12} {method:<9} {tier:>4} {rows[0]['top_k']:>5} {rows[0]['rank']:>4} {len(rows):>7} "
                  f"{flops / 1e9:>12.6f}")

    print(f"\nFinal score, mean ± 95% CI over seeds {seeds} (points)")
    for setting in SETTINGS:
        print(f"{setting:<12} " + "  ".join(f"{m} {score_interval(folders[m, setting]).format()}" for m in METHODS))
    print()
    for setting in SETTINGS:
        _key(f"flame_minus_best_baseline_{setting.replace('-', '_')}", lead(folders, setting).difference)
    _key("flame_lead_growth", lead_growth(folders).difference)
    long = run_long(out_dir=args.results, scale=args.scale, seeds=seeds, jobs=args.jobs, progress=True)
    for setting in LONG_SETTINGS:
        _key(f"flame_minus_best_baseline_long_{setting.replace('-', '_')}", lead(long, setting, LONG_LAST).difference)
    _key("flame_lead_growth_long", lead_growth(long, last=LONG_LAST).difference)
    for row in [*targets(folders, list(SETTINGS)), *long_targets(long)]:
        print(f"{row.labelled_verdict} {row.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""FLUX benchmark over seeds: time-to-accuracy speedups over FMD, FMQ, FMES (and fedit-nf4, outside the paper) on an
equal simulated-time horizon, FLUX's final score against FMD's, and FLUX's own overhead share of a round.

Runs (or reuses the finished runs of ``notebooks/flux/01_time_to_accuracy.ipynb``, same configs and folder) every
method on every suite over the seeds, prints a table per suite, then ``key value`` lines, each with ``_lo`` /
``_hi`` companions (the 95% interval). The unprefixed keys are the headline suite's, fixed in advance (``gsm``,
:data:`fedmoe.studies.flux.HEADLINE_SUITE`); every suite also gets its own keys prefixed by its name::

    speedup_vs_best_baseline       geometric mean over seeds of (fastest of FMD/FMQ/FMES time) / FLUX time
    speedup_vs_slowest_baseline    the same with the slowest of them
    final_score_gap_vs_fmd         FLUX's final score minus FMD's, paired, in score points (negative: FLUX trails)
    flux_overhead_share            FLUX's overhead share of a round (fraction)

Each speedup also gets a ``_kind`` line (exact, lower bound, upper bound, mixed, unknown: see the censoring rules
in :mod:`fedmoe.studies.flux`), then one verdict line per target and suite (MET / FAILED / UNRESOLVED). Without the
headline suite in ``--suites`` only the prefixed keys are printed. ``--zoo-scale default-e32`` trains the zoo
model with 32 experts per layer instead of 8 (finer budgets, see ``fedmoe.studies.flux.budget_resolution``).

    python reproduce/bench_flux.py [--scale default] [--results results] [--seeds 0,1,2] [--suites gsm] [--jobs N]
                                   [--zoo-scale default-e32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fedmoe.config import SCALES
from fedmoe.stats import Interval
from fedmoe.studies import flux as fx
from fedmoe.studies.evidence import compare
from fedmoe.studies.grid import seeds_for

ROOT = Path(__file__).resolve().parents[1]


def _key(name: str, interval: Interval, scale: float = 1.0, digits: int = 4) -> None:
    for suffix, value in (("", interval.mean), ("_lo", interval.lo), ("_hi", interval.hi)):
        print(f"{name}{suffix} {scale * value:.{digits}f}")


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print every suite's table, the key lines and the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default", choices=SCALES)
    parser.add_argument("--results", default=str(ROOT / "results"), help="parent folder of run folders")
    parser.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the scale's)")
    parser.add_argument("--suites", default=",".join(fx.SUITES),
                        help=f"comma-separated suites (default: all; the headline suite {fx.HEADLINE_SUITE} is required)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: $JOBS or the cores)")
    parser.add_argument("--zoo-scale", default=None, help="the trained zoo model's scale (default: the YAML's)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(seeds_for(args.scale))
    suites = args.suites.split(",")
    unknown = sorted(set(suites) - set(fx.SUITES))
    if unknown or not suites:
        parser.error(f"--suites {args.suites!r}: choose among {', '.join(fx.SUITES)} (comma-separated)")
    overrides = {"model.scale": args.zoo_scale} if args.zoo_scale else {}
    folders = fx.run_grid(fx.METHODS, suites, out_dir=args.results, scale=args.scale, seeds=seeds,
                          overrides=overrides, jobs=args.jobs, progress=True)

    results = {suite: fx.suite_result(folders, suite) for suite in suites}
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        for suite, res in results.items():
            head = " (headline, fixed in advance)" if suite == fx.HEADLINE_SUITE else ""
            print(f"\n== {suite}{head}: target {res.target.format()} points (base + 90% of FMD's gain), "
                  f"horizon {res.horizon.mean:.0f} simulated s, seeds {seeds} ==")
            print(pd.DataFrame(fx.suite_table(folders, res)).to_string(index=False))
    print("\n(time to target per seed; '+': not reached by the horizon, censored there)\n")

    headline = [("", fx.HEADLINE_SUITE)] if fx.HEADLINE_SUITE in suites else []
    for prefix, suite in [*headline, *((f"{s}_", s) for s in suites)]:
        res = results[suite]
        for key, name in (("best", "speedup_vs_best_baseline"), ("slowest", "speedup_vs_slowest_baseline")):
            _key(prefix + name, res.speedups[key].interval)
            print(f"{prefix}{name}_kind {res.speedups[key].kind.replace(' ', '_')}")
        _key(prefix + "final_score_gap_vs_fmd", compare(folders["flux", suite], folders["fmd", suite]).difference,
             scale=100.0, digits=2)
        _key(prefix + "flux_overhead_share", fx.overhead_interval(folders["flux", suite]))
    print()
    for row in (row for suite in suites for row in fx.targets(folders, suite)):
        print(row.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Unreliable clients: methods run with a share of the sampled clients failing every round, against the same
runs without failures.

Each method runs on its own study's config at ``--scale`` (failure-free runs are those of the notebooks, reused)
and again with ``fed.dropout`` (default 0.3: each sampled client drops out of a round with that probability,
seeded; a round goes on when ``fed.min_fit_fraction`` of its clients answered, else it is retried). The target
(a federation that survives the real world): every run completes, and its final score lies inside the
failure-free run's 95% interval over seeds. Prints, per method, both score intervals, the paired difference
(with failures minus without, over seeds and test items) and ``key value`` lines::

    completed_<method>             1 when every run with failures finished
    within_seed_interval_<method>  1 when the mean score with failures lies inside the failure-free interval
    dropout_minus_clean_<method>   the paired difference in score points (with ``_lo`` / ``_hi``)

    python reproduce/bench_dropout.py [--methods fedit,flame,hetlora] [--dropout 0.3] [--scale default]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from fedmoe.config import SCALES, RunConfig, load_config
from fedmoe.results import is_finished
from fedmoe.studies import fftmoe, flame, flux, quickstart
from fedmoe.studies.evidence import compare, score_interval
from fedmoe.studies.grid import run_configs, seeds_for, with_seeds

ROOT = Path(__file__).resolve().parents[1]
#: Where each method is run: the study whose default-scale runs it reuses.
STUDIES = {
    "fedit": ("quickstart", lambda scale: load_config(quickstart.CONFIG, {"method": "fedit"}, scale=scale)),
    "flame": ("FLAME, uniform setting", lambda scale: flame.make_config("flame", "uniform", scale=scale)),
    "hetlora": ("FLAME, uniform setting", lambda scale: flame.make_config("hetlora", "uniform", scale=scale)),
    "fftmoe": ("FFT-MoE, alpha 1", lambda scale: fftmoe.cell_config("fftmoe", "alpha1", scale)),
    "flux": ("FLUX, gsm", lambda scale: flux.flux_config("flux", "gsm", scale=scale)),
}


def with_dropout(cfg: RunConfig, dropout: float) -> RunConfig:
    """``cfg`` with ``fed.dropout`` set (another run: another digest, another folder)."""
    return replace(cfg, fed=replace(cfg.fed, dropout=dropout))


def main(argv: list[str] | None = None) -> int:
    """Run (or reuse) each method with and without failures over the seeds; print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fedit,flame,hetlora",
                        help=f"comma-separated, among {', '.join(STUDIES)} (flux runs take ~20 CPU-minutes each)")
    parser.add_argument("--dropout", type=float, default=0.3, help="probability a sampled client fails a round")
    parser.add_argument("--scale", default="default", choices=SCALES)
    parser.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the scale's)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="parent folder of run folders")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: $JOBS or the cores)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(STUDIES))
    if unknown or not 0.0 < args.dropout < 1.0:
        parser.error(f"--methods {args.methods!r} / --dropout {args.dropout}: choose methods among "
                     f"{', '.join(STUDIES)} and a dropout in (0, 1)")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(seeds_for(args.scale))
    clean_cfgs = {m: with_seeds([STUDIES[m][1](args.scale)], seeds) for m in methods}
    drop_cfgs = {m: [with_dropout(c, args.dropout) for c in cfgs] for m, cfgs in clean_cfgs.items()}
    flat = [c for m in methods for c in (*clean_cfgs[m], *drop_cfgs[m])]
    folders = iter(run_configs(flat, out_dir=args.results, jobs=args.jobs, progress=True))
    lines = []
    for m in methods:
        clean = [next(folders) for _ in seeds]
        dropped = [next(folders) for _ in seeds]
        before, after = score_interval(clean), score_interval(dropped)
        diff = compare(dropped, clean).difference
        print(f"{m} ({STUDIES[m][0]}): without failures {before.format()}, with {args.dropout:.0%} dropout "
              f"{after.format()}; paired difference {diff.format()} points")
        lines += [f"completed_{m} {int(all(is_finished(f) for f in dropped))}",
                  f"within_seed_interval_{m} {int(before.contains(after.mean))}",
                  *(f"dropout_minus_clean_{m}{suffix} {100 * value:.2f}"
                    for suffix, value in (("", diff.mean), ("_lo", diff.lo), ("_hi", diff.hi)))]
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

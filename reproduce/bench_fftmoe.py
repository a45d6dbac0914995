"""FFT-MoE against FedIT and HetLoRA at matched trainable parameters, over data splits and seeds.

Runs (or reuses the finished runs of ``notebooks/fftmoe``: same configs, same folder) the whole FFT-MoE grid
(:mod:`fedmoe.studies.fftmoe`), prints the score table (mean ± 95% interval over seeds), then ``key value``
lines, each with ``_lo`` / ``_hi`` companions (the interval's bounds)::

    fftmoe_minus_best_baseline_<split>   FFT-MoE minus the best baseline, score points, paired over seeds and items
    noniid_retention_<method>            score at alpha 0.1 / IID score, per seed, mean over seeds
    aux_loss_load_cv_reduction           expert-load CV without minus with the auxiliary loss, paired by seed
    fedit_attention_gain                 FedIT minus FedIT without q/v LoRA (the attention control), in points
    fedit_no_attention_minus_fftmoe      FedIT without q/v LoRA minus FFT-MoE, in points
    fftmoe_minus_best_baseline_long_<split>, noniid_retention_long_<method>
                                         the same on the long-horizon check (3x the rounds on IID, alpha 0.3 and
                                         0.1; each run scored over its last 2 evaluations)

    python reproduce/bench_fftmoe.py [--scale default] [--results results] [--seeds 0 1 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmoe.config import SCALES
from fedmoe.stats import Interval
from fedmoe.studies import fftmoe as study
from fedmoe.studies.grid import seeds_for

ROOT = Path(__file__).resolve().parents[1]


def key_lines(key: str, interval: Interval, scale: float = 1.0) -> list[str]:
    """``key value`` and its ``_lo`` / ``_hi`` companions (``nan`` when the interval is undefined)."""
    return [f"{key}{suffix} {value * scale:.4f}"
            for suffix, value in (("", interval.mean), ("_lo", interval.lo), ("_hi", interval.hi))]


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print the table and the key lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default", choices=SCALES)
    parser.add_argument("--results", default=str(ROOT / "results"), help="parent folder of run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run seeds (default: the scale's)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: $JOBS, else cores)")
    args = parser.parse_args(argv)
    seeds = args.seeds or seeds_for(args.scale)
    folders = study.run_study(args.scale, seeds, out_dir=args.results, jobs=args.jobs)

    print(f"\nFinal score of the global model, mean ± 95% CI over seeds {list(seeds)} (points)")
    print(f"{'split':<13} " + " ".join(f"{m:>24}" for m in study.METHODS))
    for split, row in study.score_table(folders).items():
        print(f"{split:<13} " + " ".join(f"{row[m].format():>24}" for m in study.METHODS))

    print()
    lines = []
    for split in study.SPLITS:
        _, comparison = study.versus_best_baseline(folders, split)
        lines += key_lines(f"fftmoe_minus_best_baseline_{study.split_key(split)}", comparison.difference, 100.0)
    for method in study.METHODS:
        lines += key_lines(f"noniid_retention_{method}", study.retention(folders, method))
    lines += key_lines("aux_loss_load_cv_reduction", study.aux_cv_reduction(folders))
    control = study.attention_control(args.scale, seeds, out_dir=args.results, folders=folders, jobs=args.jobs)
    for name, comparison in control.items():
        lines += key_lines(name, comparison.difference, 100.0)
    long = study.run_long(args.scale, seeds, out_dir=args.results, jobs=args.jobs)
    for split in study.LONG_SPLITS:
        _, comparison = study.versus_best_baseline(long, split, study.LONG_LAST)
        lines += key_lines(f"fftmoe_minus_best_baseline_long_{study.split_key(split)}", comparison.difference, 100.0)
    for method in study.METHODS:
        lines += key_lines(f"noniid_retention_long_{method}", study.retention(long, method, study.LONG_LAST))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

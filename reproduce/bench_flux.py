"""FLUX benchmark: time-to-accuracy speedups over FMD, FMQ, FMES and FedIT, client memory, and FLUX's own
overhead, from the runs of notebooks/flux/01_time_to_accuracy.ipynb (finished runs are reused).

Prints a table per suite, then one ``key value`` line per figure.
Usage: ``python reproduce/bench_flux.py [--scale default] [--results results]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmoe.fl.federation import Federation
from fedmoe.moe.memory import model_memory
from fedmoe.studies.flux import (
    METHODS,
    SUITES,
    client_memory,
    flux_config,
    headline,
    round_shares,
    run_flux,
    speedup_table,
    target_score,
)


def main(argv: list[str] | None = None) -> int:
    """Run or reuse the runs, print the tables and the key lines."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    parser.add_argument("--results", default="results", help="parent folder of run folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--suites", nargs="*", default=list(SUITES))
    parser.add_argument("--target-fraction", type=float, default=0.9,
                        help="target = base score + this fraction of FMD's (whole model) improvement")
    args = parser.parse_args(argv)
    out = Path(args.results)
    best_suite, keys = None, {}
    gaps, overheads, profiling = [], [], []
    for suite in args.suites:
        folders = {m: run_flux(m, suite, scale=args.scale, seed=args.seed, out_dir=out) for m in METHODS}
        target = target_score(folders, args.target_fraction)
        rows = speedup_table(folders, target)
        print(f"\n== {suite}: target score {target:.3f} (base + {args.target_fraction:g} x FMD's improvement) ==")
        print(f"{'method':>7} {'final':>6} {'t_target(s)':>12} {'speedup':>8} {'round(s)':>9} {'fits':>5}")
        for r in rows:
            t = "never" if r["time_to_target"] is None else f"{r['time_to_target']:.0f}"
            sp = "-" if r["speedup"] is None else (f"{r['speedup']:.2f}" + ("" if r["reached"] else "+"))
            print(f"{r['method']:>7} {r['final_score']:6.3f} {t:>12} {sp:>8} {r['round_seconds']:9.0f} {str(r['fits']):>5}")
        head = headline(rows)
        score = {r["method"]: r["final_score"] for r in rows}
        gaps.append((score["fmd"] - score["flux"]) * 100)
        shares = round_shares(folders["flux"])
        overheads.append(shares["overhead"])
        profiling.append(shares["profiling"])
        first = min(rows, key=lambda r: r["time_to_target"] if r["time_to_target"] is not None else float("inf"))
        keys[f"{suite}_speedup_vs_best_baseline"] = head["best"]
        keys[f"{suite}_speedup_vs_slowest_baseline"] = head["slowest"]
        keys[f"{suite}_speedup_vs_fedit"] = next(r["speedup"] for r in rows if r["method"] == "fedit-nf4")
        keys[f"{suite}_flux_first_among_all"] = int(first["method"] == "flux" and first["time_to_target"] is not None)
        keys[f"{suite}_final_score_gap_vs_fmd"] = gaps[-1]
        if head["best"] is not None and (best_suite is None or head["best"] > keys[f"{best_suite}_speedup_vs_best_baseline"]):
            best_suite = suite
        if suite == args.suites[0]:
            fed = Federation.from_config(flux_config("flux", suite, scale=args.scale, seed=args.seed))
            full = model_memory(fed.priced_config, batch_tokens=fed.cfg.fed.batch_size * fed.cfg.fed.max_length).total
            print(f"\nFLUX client peak memory vs the full model ({full / 2**30:.1f} GiB with one batch, {suite}):")
            for m in client_memory(folders["flux"], full):
                print(f"  client {m['client']:>2} {m['device']:>20}: {m['peak_gib']:6.2f} GiB of {m['device_gib']:.0f} GiB "
                      f"= {m['vs_full_model']:.2f} x full model")
                keys[f"client{m['client']}_peak_memory_vs_full_model"] = m["vs_full_model"]
    print()
    if best_suite is not None:
        print(f"best configuration: {best_suite}")
    print(f"speedup_vs_best_baseline {_fmt(keys.get(f'{best_suite}_speedup_vs_best_baseline'))}")
    print(f"speedup_vs_slowest_baseline {_fmt(keys.get(f'{best_suite}_speedup_vs_slowest_baseline'))}")
    print(f"final_score_gap_vs_fmd {max(gaps):.2f}")
    print(f"flux_overhead_share {max(overheads):.4f}")
    print(f"flux_profiling_share {sum(profiling) / len(profiling):.4f}")
    for k, v in keys.items():
        print(f"{k} {_fmt(v)}")
    return 0


def _fmt(v) -> str:
    return "nan" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


if __name__ == "__main__":
    sys.exit(main())

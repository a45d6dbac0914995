"""FLAME against the heterogeneous-LoRA baselines in every compute setting: FLOPs per client and final scores.

Runs (or reuses the finished runs of ``notebooks/flame/01_compute_settings.ipynb``, same configs and folder)
FLAME, HetLoRA, FlexLoRA, FLoRA and FedIT in the homogeneous, uniform and heavy-tail settings, prints the
FLOPs per client tier and the score table, then one ``key value`` line per setting::

    flame_minus_best_baseline_<setting> <FLAME's score minus the best baseline's, in score points>

(positive: FLAME leads), so a script can check the figures.

    python reproduce/bench_flame.py [--scale default] [--results results] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmoe.studies.flame import METHODS, SETTINGS, client_budgets, final_score, lead, run_grid

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the grid, print the tables and the key lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    parser.add_argument("--results", default=str(ROOT / "results"), help="parent folder of run folders")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folders = run_grid(METHODS, SETTINGS, out_dir=args.results, scale=args.scale, seed=args.seed, progress=True)

    print("\nTrain FLOPs per token by client tier (mean over the clients of the tier that trained)")
    print(f"{'setting':<12} {'method':<9} {'tier':>4} {'top-k':>5} {'rank':>4} {'clients':>7} {'GFLOP/token':>12}")
    for (method, setting), folder in folders.items():
        tiers: dict[int, list[dict]] = {}
        for row in client_budgets(folder):
            tiers.setdefault(row["tier"], []).append(row)
        for tier, rows in sorted(tiers.items()):
            flops = sum(r["flops_per_token"] for r in rows) / len(rows)
            print(f"{setting:<12} {method:<9} {tier:>4} {rows[0]['top_k']:>5} {rows[0]['rank']:>4} {len(rows):>7} "
                  f"{flops / 1e9:>12.6f}")

    print("\nFinal score")
    print(f"{'setting':<12} " + " ".join(f"{m:>9}" for m in METHODS))
    leads = {}
    for setting in SETTINGS:
        scores = {m: final_score(folders[m, setting]) for m in METHODS}
        leads[setting] = lead(scores)
        print(f"{setting:<12} " + " ".join(f"{scores[m]:>9.4f}" for m in METHODS))
    print()
    for setting, value in leads.items():
        print(f"flame_minus_best_baseline_{setting.replace('-', '_')} {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

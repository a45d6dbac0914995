"""Execute the kit's notebooks with papermill at one scale (``make reproduce`` / ``make nbval``).

Each notebook is run from the repository root with its ``parameters`` cell overridden by ``scale``,
``out_dir`` (run folders), ``figures_dir`` and ``report_dir`` (the report sections that
``reproduce/make_report.py`` turns into ``figures/REPORT.md``); the executed copies land in ``--out``.
Runs inside a notebook use ``$JOBS`` worker processes (default: the number of cores). Prints each notebook's
wall time and the total.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The notebooks to run, in order (quickstart first), optionally filtered by name substrings."""
    found = sorted((ROOT / "notebooks").rglob("*.ipynb"))
    found = [p for p in found if "_out" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    if only:
        found = [p for p in found if any(key in str(p.relative_to(ROOT)) for key in only)]
    if not found:
        raise SystemExit(f"no notebook matches {only}; notebooks live under {ROOT / 'notebooks'}")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the selected notebooks; print each one's wall time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    parser.add_argument("--out", default="results/notebooks", help="folder for executed notebooks")
    parser.add_argument("--figures", default=None, help="figures folder (default: <out>/figures)")
    parser.add_argument("--results", default="results", help="parent folder of run folders")
    parser.add_argument("--report", default=None, help="report sections folder (default: <results>/report)")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose path contains one of these")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    figures = Path(args.figures).resolve() if args.figures else out / "figures"
    report = Path(args.report).resolve() if args.report else Path(args.results).resolve() / "report"
    start = time.perf_counter()
    for nb in notebooks(args.only):
        rel = nb.relative_to(ROOT / "notebooks")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        pm.execute_notebook(
            str(nb), str(target), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
            parameters={"scale": args.scale, "out_dir": str(Path(args.results).resolve()),
                        "figures_dir": str(figures), "report_dir": str(report)},
        )
        print(f"{rel}: {time.perf_counter() - t0:.0f} s -> {target}", flush=True)
    print(f"total: {time.perf_counter() - start:.0f} s ({args.scale} scale, JOBS={os.environ.get('JOBS') or os.cpu_count()})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Execute the kit's notebooks with papermill at one scale (``make reproduce`` / ``make nbval``).

Each notebook is run from the repository root with its ``parameters`` cell overridden by ``scale``,
``out_dir`` (run folders), ``figures_dir`` and ``report_dir`` (the report sections that
``reproduce/make_report.py`` turns into ``figures/REPORT.md``); the executed copies land in ``--out``.
Runs inside a notebook use ``$JOBS`` worker processes (default: the number of cores). Before anything runs it
says how this environment differs from the one recorded by the report sections it will update (``--list``: say
so and list the notebooks, run nothing). Prints each notebook's wall time and the total.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import papermill as pm

from fedmoe.config import SCALES
from fedmoe.environment import environment
from fedmoe.report import drift_notice, load_sections

ROOT = Path(__file__).resolve().parents[1]
#: The kernel every notebook names (``make setup`` installs it into .venv).
KERNEL = "fedmoe"
#: Written into ``--out``: each executed notebook's scale, wall seconds, inline figures and jobs.
TIMINGS_FILE = "timings.json"


def image_outputs(path: Path) -> int:
    """How many inline figures (``image/png`` outputs) an executed notebook holds."""
    cells = json.loads(path.read_text())["cells"]
    return sum("image/png" in out.get("data", {}) for cell in cells for out in cell.get("outputs", []))


def _merge_timings(path: Path, timings: dict) -> None:
    """Add ``timings`` to the JSON at ``path`` (notebooks run earlier keep their entries)."""
    known = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(known | timings, indent=2, sort_keys=True) + "\n")


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The notebooks to run, in order (quickstart first), optionally filtered by name substrings. Without a
    filter, the study notebooks only: the teaching notebooks (``notebooks/learn/``) reproduce no paper figure and
    run when named (``--only learn/``, as ``make nbval`` does)."""
    found = sorted((ROOT / "notebooks").rglob("*.ipynb"))
    found = [p for p in found if "_out" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    if only:
        found = [p for p in found if any(key in str(p.relative_to(ROOT)) for key in only)]
    else:
        found = [p for p in found if "learn" not in p.relative_to(ROOT / "notebooks").parts[:1]]
    if not found:
        raise SystemExit(f"no notebook matches {only}; notebooks live under {ROOT / 'notebooks'}")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the selected notebooks; print each one's wall time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="default", choices=SCALES)
    parser.add_argument("--out", default="results/notebooks", help="folder for executed notebooks")
    parser.add_argument("--figures", default=None, help="figures folder (default: <out>/figures)")
    parser.add_argument("--results", default="results", help="parent folder of run folders")
    parser.add_argument("--report", default=None, help="report sections folder (default: <results>/report)")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose path contains one of these")
    parser.add_argument("--require-images", action="store_true",
                        help="exit 1 if an executed notebook holds no inline figure")
    parser.add_argument("--list", action="store_true",
                        help="say how this environment differs from the report's and which notebooks would run; "
                             "run nothing")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    figures = Path(args.figures).resolve() if args.figures else out / "figures"
    report = Path(args.report).resolve() if args.report else Path(args.results).resolve() / "report"
    if report.is_dir() and any(report.glob("*.json")):
        print(drift_notice(load_sections(report), environment()), flush=True)
    selected = notebooks(args.only)
    if args.list:
        print("\n".join(str(nb.relative_to(ROOT)) for nb in selected))
        return 0
    start, timings, missing = time.perf_counter(), {}, []
    for nb in selected:
        rel = nb.relative_to(ROOT / "notebooks")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        pm.execute_notebook(
            str(nb), str(target), cwd=str(ROOT), kernel_name=KERNEL, progress_bar=False,
            parameters={"scale": args.scale, "out_dir": str(Path(args.results).resolve()),
                        "figures_dir": str(figures), "report_dir": str(report)},
        )
        wall, images = time.perf_counter() - t0, image_outputs(target)
        timings[str(rel)] = {"scale": args.scale, "wall_s": round(wall, 1), "images": images,
                             "jobs": int(os.environ.get("JOBS") or os.cpu_count() or 1)}
        missing += [] if images else [str(rel)]
        print(f"{rel}: {wall:.0f} s, {images} figure(s) inline -> {target}", flush=True)
    _merge_timings(out / TIMINGS_FILE, timings)
    print(f"total: {time.perf_counter() - start:.0f} s ({args.scale} scale, JOBS={os.environ.get('JOBS') or os.cpu_count()})",
          flush=True)
    if args.require_images and missing:
        print(f"no figure inline in {', '.join(missing)}: a figure must be shown (plt.show() or the figure as the "
              f"cell's last value), and MPLBACKEND must not force a non-inline backend", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Execute the kit's notebooks with papermill at one scale (``make reproduce`` / ``make nbval``).

Each notebook is run from the repository root with its ``parameters`` cell overridden by ``scale``,
``out_dir`` (run folders) and ``figures_dir``; the executed copies land in ``--out``.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--only", nargs="*", help="run only notebooks whose path contains one of these")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    figures = Path(args.figures).resolve() if args.figures else out / "figures"
    for nb in notebooks(args.only):
        rel = nb.relative_to(ROOT / "notebooks")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        pm.execute_notebook(
            str(nb), str(target), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
            parameters={"scale": args.scale, "out_dir": str(Path(args.results).resolve()),
                        "figures_dir": str(figures)},
        )
        print(f"{rel}: {time.perf_counter() - t0:.0f} s -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fedmoe.studies <study> [--scale S] [--seeds 0,1,2] [--jobs N]``: run a study, judge its claims.

Prints the study's tables, then one ``key value`` line per claim row with ``_lo`` / ``_hi`` (its 95% interval in
the goal's units) and ``_verdict``, then one summary line per row. ``--list`` lists every study and its declared
claims; ``--section DIR`` also writes the study's report section there (``figures/report`` for the report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmoe.config import SCALES
from fedmoe.report import save_section
from fedmoe.studies.grid import print_scale_banner, seeds_for
from fedmoe.studies.registry import STUDIES, get_study, key_lines

ROOT = Path(__file__).resolve().parents[2]


def _list() -> None:
    for study in STUDIES.values():
        options = f" (options: {', '.join(f'--{o}' for o in study.options)})" if study.options else ""
        print(f"{study.name}: {study.about}{options}\n  notebook: {study.notebook}")
        for claim in study.claims:
            print("  " + claim.describe().replace("\n", "\n  "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmoe.studies", description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", choices=sorted(STUDIES), help="the study to run")
    parser.add_argument("--list", action="store_true", help="list the studies and their claims, run nothing")
    parser.add_argument("--scale", default="default", choices=SCALES)
    parser.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the scale's)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: $JOBS or the cores)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="parent folder of run folders")
    parser.add_argument("--section", default=None, help="also write the report section into this folder")
    for name, text in {o: h for s in STUDIES.values() for o, h in s.options.items()}.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"{text} (some studies)")
    args = parser.parse_args(argv)
    if args.list:
        _list()
        return 0
    if not args.study:
        parser.error("name a study (or --list)")
    study = get_study(args.study)
    given = {o: getattr(args, o) for o in {o for s in STUDIES.values() for o in s.options} if getattr(args, o)}
    stray = sorted(set(given) - set(study.options))
    if stray:
        parser.error(f"study {study.name} takes no {', '.join('--' + o for o in stray)}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(seeds_for(args.scale))
    print_scale_banner(args.scale)
    outcome = study.run(args.scale, seeds, out_dir=args.results, jobs=args.jobs, progress=True, **given)
    for table in outcome.tables:
        print(f"\n{table}")
    print()
    for row in outcome.rows:
        print("\n".join(key_lines(row)))
    print()
    for row in outcome.rows:
        print(row.summary())
    if args.section:
        print(f"\nsection: {save_section(args.section, outcome.section, outcome.rows, outcome.head_to_head)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

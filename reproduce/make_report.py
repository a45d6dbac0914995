"""Write figures/REPORT.md from the study sections and paste its target tables into README.md.

The notebooks write one section per study (``make reproduce``: ``figures/report/<study>.json``, committed beside
the report, so re-running one study updates its rows and keeps every other study's; see
``fedmoe.report.save_section``); this script renders them into ``figures/REPORT.md`` and replaces README.md's text between
``<!-- report:start -->`` and ``<!-- report:end -->`` with the report's target tables, so no result is typed.
Before it writes, it says which sections were measured in an environment other than this one (and what that means).

    python reproduce/make_report.py --sections figures/report   # write the report, update the README
    python reproduce/make_report.py --readme-only               # re-paste the README from the committed report
    python reproduce/make_report.py --check                     # exit 1 if the README differs from the report
    python reproduce/make_report.py --timings results/notebooks/smoke/timings.json   # paste measured notebook times
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from fedmoe.environment import environment
from fedmoe.report import (
    README_COMMAND,
    REPORT_COMMAND,
    TIMINGS_END,
    TIMINGS_START,
    drift_notice,
    load_sections,
    render_report,
    replace_block,
    sync_readme,
    timings_table,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Render the report and sync the README, re-paste only, or check; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=str(ROOT / "figures" / "report"),
                        help="folder of study sections (*.json) the benchmarks write")
    parser.add_argument("--report", default=str(ROOT / "figures" / "REPORT.md"), help="the report to write / read")
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="the README holding the markers")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--readme-only", action="store_true", help="re-paste the README from the committed report")
    mode.add_argument("--timings", nargs="+", metavar="TIMINGS_JSON",
                      help="paste the notebook times of these run_notebooks.py timings.json files into README.md")
    mode.add_argument("--check", action="store_true",
                      help="exit 1 if the README's section differs from what the committed report generates")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"make_report: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    """The work of :func:`main` once the arguments are parsed."""
    report_path, readme_path = Path(args.report), Path(args.readme)
    if args.timings:
        runs = [json.loads(Path(path).read_text()) for path in args.timings]
        machine = f"{platform.machine()} {environment()['cpu_capability']}, {os.cpu_count()} cores"
        readme_path.write_text(replace_block(readme_path.read_text(), TIMINGS_START, TIMINGS_END,
                                             timings_table(runs, machine), "where the notebook times go"))
        print(f"updated {readme_path} (notebook times)")
        return 0

    if not (args.readme_only or args.check):
        sections = load_sections(args.sections)
        print(drift_notice(sections, environment()))
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(render_report(sections))
        print(f"wrote {report_path}")
    if not report_path.exists():
        raise FileNotFoundError(f"{report_path} not found: generate it with `{REPORT_COMMAND}`")
    readme = readme_path.read_text()
    synced = sync_readme(readme, report_path.read_text())
    if args.check:
        if synced != readme:
            print(f"{readme_path.name}'s results section differs from {report_path.name}; fix it with "
                  f"`{README_COMMAND}`", file=sys.stderr)
            return 1
        print(f"{readme_path.name} matches {report_path.name}")
        return 0
    if synced != readme:
        readme_path.write_text(synced)
        print(f"updated {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

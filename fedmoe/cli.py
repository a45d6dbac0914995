"""Command line: ``fedmoe run CONFIG --set key=value``, ``fedmoe plot RUN...``, ``fedmoe methods``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _run(args) -> int:
    from fedmoe.config import load_config
    from fedmoe.engines import run
    from fedmoe.experiment import write_summary
    from fedmoe.results import RunFolder

    cfg = load_config(args.config, args.set, scale=args.scale)
    if args.engine == "flower":
        from fedmoe.engines.flower import run_flower_simulation

        folder = run_flower_simulation(cfg, num_supernodes=args.supernodes, out_dir=args.out, run_name=args.name)
    else:
        folder = run(cfg, out_dir=args.out, run_name=args.name, resume=not args.no_resume,
                     stop_after=args.stop_after)
    print(f"results: {folder}")
    if RunFolder(folder).has_summary():
        print(json.dumps(write_summary(folder), indent=2))
    return 0


def _plot(args) -> int:
    from fedmoe.plots import plot_runs, save_figure

    fig = plot_runs(args.runs, x=args.x, y=args.y, target=args.target)
    for path in save_figure(fig, args.output):
        print(f"wrote {path}")
    return 0


def _methods(args) -> int:
    from fedmoe.methods import available_methods

    print("\n".join(available_methods()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fedmoe`` argument parser."""
    parser = argparse.ArgumentParser(prog="fedmoe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run (or resume) a federated experiment")
    p.add_argument("config", nargs="?", help="YAML config, e.g. reproduce/configs/quickstart.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set fed.rounds=5 (repeatable)")
    p.add_argument("--scale", choices=["smoke", "default", "paper"], help="size preset")
    p.add_argument("--out", default="results", help="parent folder of run folders (default: results)")
    p.add_argument("--name", help="run folder name (default: derived from the config)")
    p.add_argument("--engine", choices=["inprocess", "flower"], default="inprocess")
    p.add_argument("--supernodes", type=int, default=2, help="SuperNodes in the Flower simulation")
    p.add_argument("--no-resume", action="store_true", help="fail instead of resuming an existing run")
    p.add_argument("--stop-after", type=int, help="stop after this round (resume later)")
    p.set_defaults(func=_run)

    p = sub.add_parser("plot", help="plot runs: score against rounds or simulated time")
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--x", default="round", choices=["round", "sim_time", "wall_time"])
    p.add_argument("--y", default="score")
    p.add_argument("--target", type=float)
    p.add_argument("-o", "--output", default="figures/runs.png")
    p.set_defaults(func=_plot)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedmoe`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"fedmoe: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

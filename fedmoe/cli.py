"""Command line: ``fedmoe run CONFIG --set key=value``, ``fedmoe plot RUN...``, ``fedmoe methods``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedmoe.config import SCALES
from fedmoe.errors import FedmoeError


def _run(args) -> int:
    from fedmoe.config import load_config
    from fedmoe.experiment import check_config, check_run_name, write_summary
    from fedmoe.results import RunFolder

    overrides = list(args.set)
    seeds = _parse_seeds(args.seeds, overrides)
    configs = [check_config(load_config(args.config, overrides + ([f"seed={s}"] if s is not None else []),
                                        scale=args.scale))
               for s in seeds]  # every config checked before the first run starts
    names = [f"{args.name}-seed{seed}" if args.name and len(seeds) > 1 else args.name for seed in seeds]
    for name in names:
        check_run_name(name)
    for cfg, name in zip(configs, names, strict=True):
        folder = _run_one(cfg, args, name)
        print(f"results: {folder}")
        if RunFolder(folder).has_summary():
            print(json.dumps(write_summary(folder), indent=2))
    return 0


def _parse_seeds(text: str | None, overrides: list[str]) -> list[int | None]:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]`` (``[None]``: the config's own seed)."""
    from fedmoe.config import ConfigError

    if text is None:
        return [None]
    if any(item.split("=", 1)[0].strip() == "seed" for item in overrides):
        raise ConfigError("--seeds and --set seed=... both set the seed; keep one (e.g. --seeds 0,1,2)")
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts) or len(set(map(int, parts))) != len(parts):
        raise ConfigError(f"--seeds {text!r} is invalid: expected distinct comma-separated integers >= 0 "
                          "(fix: e.g. --seeds 0,1,2)")
    return [int(part) for part in parts]


def _run_one(cfg, args, name: str | None) -> Path:
    """Run one config in the chosen engine (a run that fails before its first checkpoint removes what it
    wrote, while it holds its folder's lock: :func:`fedmoe.experiment.run`)."""
    from fedmoe.engines import run

    if args.engine == "flower":
        from fedmoe.engines.flower import run_flower_simulation

        return run_flower_simulation(cfg, num_supernodes=args.supernodes, out_dir=args.out, run_name=name)
    return run(cfg, out_dir=args.out, run_name=name, resume=not args.no_resume, stop_after=args.stop_after)


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
    p.add_argument("--scale", choices=SCALES, help="size preset")
    p.add_argument("--out", default="results", help="parent folder of run folders (default: results)")
    p.add_argument("--name", help="run folder name (default: derived from the config)")
    p.add_argument("--engine", choices=["inprocess", "flower"], default="inprocess")
    p.add_argument("--supernodes", type=int, default=2, help="SuperNodes in the Flower simulation")
    p.add_argument("--no-resume", action="store_true", help="fail instead of resuming an existing run")
    p.add_argument("--stop-after", type=int, help="stop after this round (resume later)")
    p.add_argument("--seeds", metavar="S1,S2,...",
                   help="run once per seed (one run folder each), e.g. --seeds 0,1,2; data_seed stays fixed")
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
    """Entry point of the ``fedmoe`` command: a bad input, and every error the kit raises on purpose (a
    :class:`~fedmoe.errors.FedmoeError`), ends in one ``fedmoe: error: ...`` line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FedmoeError, KeyError, ValueError, OSError) as exc:  # the kit's errors name the problem and the fix
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print("fedmoe: error: " + " ".join(str(message).split("\n")), file=sys.stderr)  # one line, always
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

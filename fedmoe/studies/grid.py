"""Run a grid of experiments (methods x settings x seeds) in parallel worker processes.

A study is a dict of cells, ``{cell: [RunConfig per seed]}`` (:func:`with_seeds`), run by :func:`run_cells` (every
study's grid goes through it) in one :func:`run_configs` call, which runs each distinct config once
(configs with the same digest are one run), reuses finished run folders, pretrains every zoo model the grid
needs once in this process before any worker starts (so workers never race to pretrain), and spreads the
rest over ``jobs`` processes with one torch thread each, behind one progress bar. Each run is an ordinary
run folder, so a grid that is stopped resumes where it was, and a notebook that asks for a config another
notebook already ran reads its results.

Every run is deterministic in its config alone (one thread, seeded), so parallel and sequential execution
give identical run folders.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from fedmoe.config import SCALES, ConfigError, RunConfig
from fedmoe.engines import run
from fedmoe.experiment import check_config, run_id
from fedmoe.results import is_finished

# Run seeds per scale: smoke keeps CI fast with the fewest seeds that still give an interval; classroom keeps
# three, since an interval over two seeds (Student-t, 1 degree of freedom: 12.7 standard errors) says nothing.
SEEDS = {"smoke": (0, 1), "classroom": (0, 1, 2), "default": (0, 1, 2), "paper": (0, 1, 2)}
#: The line a study notebook prints first at a scale whose verdicts are no evidence (their report rows carry the
#: short label of :data:`fedmoe.config.SCALE_CAVEATS`).
SCALE_BANNERS = {
    "smoke": "smoke scale: a plumbing check. Its scores and verdicts only show that every step runs; they are not "
             "evidence (scale='classroom' shows learning in minutes, scale='default' is the study).",
    "classroom": "classroom scale: a small model trained briefly, for teaching. Its verdicts show the mechanism, not "
                 "the study's evidence (scale='default').",
}
#: A study's long-horizon check runs its key cells for LONG_FACTOR times the scale's rounds (same evaluation
#: cadence) and scores each run as the mean of its last LONG_LAST evaluations: at the default scale the studies'
#: curves still rise at their own horizon, so a claim is also judged where they flatten.
LONG_FACTOR = 3
LONG_LAST = 2


def seeds_for(scale: str) -> tuple[int, ...]:
    """The default run seeds of a scale."""
    if scale not in SEEDS:
        raise ValueError(f"unknown scale {scale!r}; use one of {sorted(SEEDS)}")
    return SEEDS[scale]


def print_scale_banner(scale: str) -> None:
    """Print the banner of ``scale`` (:data:`SCALE_BANNERS`; nothing at default or paper): every study notebook
    calls it in its setup cell, so a smoke or classroom run is not read as evidence."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")
    if scale in SCALE_BANNERS:
        print(SCALE_BANNERS[scale])


def default_jobs() -> int:
    """Worker processes: ``$JOBS`` if set, else the machine's core count."""
    return max(1, int(os.environ.get("JOBS") or os.cpu_count() or 1))


def long_horizon(cfg: RunConfig, factor: int = LONG_FACTOR) -> dict[str, int]:
    """Overrides that run ``cfg``'s setting ``factor`` times as many rounds, evaluated at the same cadence."""
    return {"fed.rounds": cfg.fed.rounds * factor}


def run_cells(grid: dict, *, out_dir: str | Path, jobs: int | None = None, progress: bool = True
              ) -> dict:
    """Run a study's cells in one parallel :func:`run_configs` call: ``{cell: [config per seed]}`` in,
    ``{cell: [run folder per seed]}`` out (same keys, same order)."""
    flat = [cfg for runs in grid.values() for cfg in runs]
    folders = iter(run_configs(flat, out_dir=out_dir, jobs=jobs, progress=progress))
    return {cell: [next(folders) for _ in runs] for cell, runs in grid.items()}


def with_seeds(configs: Iterable[RunConfig], seeds: Sequence[int]) -> list[RunConfig]:
    """Every config once per seed (``seed`` drives init, sampling and batch order; ``data_seed`` stays).
    A repeated seed is a :class:`~fedmoe.config.ConfigError`: its runs would be one run counted twice, and an
    interval over them would claim a spread it never measured."""
    from dataclasses import replace

    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a seed: each seed must be distinct, since runs of one seed are one "
                          "run (fix: e.g. seeds=[0, 1, 2])")
    return [replace(cfg, seed=s) for cfg in configs for s in seeds]


def run_configs(configs: Sequence[RunConfig], *, out_dir: str | Path, jobs: int | None = None,
                progress: bool = True) -> list[Path]:
    """Run every config (in parallel; each distinct config once) and return their run folders, in order.

    Args:
        configs: the grid; duplicates (same digest) run once and share a folder.
        out_dir: parent folder of run folders.
        jobs: worker processes (default :func:`default_jobs`); 1 runs in this process.
        progress: one progress bar over the grid's runs.
    """
    out_dir = Path(out_dir)
    for cfg in configs:
        check_config(cfg)  # a bad config fails here, before any model loads or worker starts
    folders = [out_dir / run_id(cfg) for cfg in configs]
    todo = {run_id(cfg): cfg for cfg, folder in zip(configs, folders, strict=True) if not is_finished(folder)}
    if not todo:
        return folders
    _prepare_models(todo.values(), progress=progress)
    jobs = min(jobs or default_jobs(), len(todo))
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="runs", disable=not progress)
    if jobs == 1:
        for cfg in todo.values():
            run(cfg, out_dir=out_dir, progress=False)
            bar.update()
    else:
        # Workers inherit this variable at start: one OpenMP thread each, so `jobs` runs share the cores.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run, cfg, out_dir=out_dir, progress=False): name for name, cfg in todo.items()}
            for future in as_completed(futures):
                future.result()  # a failed run raises here, naming its own error
                bar.update()
    bar.close()
    return folders


def _prepare_models(configs: Iterable[RunConfig], *, progress: bool) -> None:
    """Pretrain (or find cached) every zoo model the configs use, once, before workers start."""
    from fedmoe.moe.loading import load_base_model

    seen = set()
    for cfg in configs:
        key = (cfg.model.name, cfg.model.path, cfg.model.scale, cfg.data_seed)
        if key not in seen and not cfg.model.path:
            seen.add(key)
            load_base_model(cfg.model, seed=cfg.data_seed, progress=progress)


def notebook_setup(scale: str, seeds: Sequence[int] | None, out_dir: str | Path | None,
                   figures_dir: str | Path | None, report_dir: str | Path | None, subfolder: str = ""
                   ) -> tuple[Path, Path, Path, list[int]]:
    """The setup every study notebook shares, from its papermill parameters: ``(out_dir, figures, report_dir,
    seeds)`` with the defaults (run folders in ``<repo>/results``, figures in ``<out_dir>/figures/<subfolder>``, the
    report section in ``<out_dir>/report``, the scale's seeds), after printing the scale's banner."""
    out = Path(out_dir or Path(__file__).resolve().parents[2] / "results")
    figures = Path(figures_dir or out / "figures") / subfolder
    print_scale_banner(scale)
    return out, figures, Path(report_dir or out / "report"), list(seeds or seeds_for(scale))

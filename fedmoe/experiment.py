"""The round loop of a federated experiment, resumable exactly.

``run(cfg, executor_factory)`` builds the :class:`Federation` and the method's server, then for each round
samples clients, asks the server for their tasks, hands them to an *executor* (the engine: see
``fedmoe.engines``, which builds the client halves; a client that fails is reported, not raised), screens the
answers and retries a round too few clients answered (:mod:`fedmoe.fl.robust`), aggregates the accepted
updates, prices the round with the cost model,
evaluates, and appends one record to the run folder with a checkpoint (:class:`fedmoe.results.RunFolder`
owns the files). A run that stops (or is killed) resumes from its last checkpoint and reproduces the
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedmoe.config import ConfigError, RunConfig, bad_value, is_folder_name, validate
from fedmoe.device import resolve_device
from fedmoe.fl.contract import ClientFailure, ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation
from fedmoe.fl.robust import run_round
from fedmoe.methods.base import MethodSpec, Server, available_methods, check_method_args, get_method
from fedmoe.results import RunFolder

Executor = Callable[[list[ClientTask]], list[ClientUpdate | ClientFailure]]
ExecutorFactory = Callable[[MethodSpec, Federation], Executor]


def check_config(cfg: RunConfig) -> RunConfig:
    """Validate ``cfg`` completely before any model loads: :func:`fedmoe.config.validate`, then the names only
    higher layers know (the method and its options, the fleet, the projected architecture), then a real
    dataset's rows (:func:`check_dataset`). Raises :class:`~fedmoe.config.ConfigError` (a dataset's own errors:
    :class:`~fedmoe.data.loaders.DatasetFormatError`, naming the file and row); returns ``cfg`` with its method
    options normalised.

    Entry points check before they start anything and :func:`run` checks again (a config built by hand): a config
    this process has checked already, whose local files (:func:`_local_files`) are unchanged since, is checked once.
    """
    files = _local_files(cfg)
    if files is not None and _checked_key(cfg, files) in _CHECKED:
        return cfg
    validate(cfg)
    _check_cost(cfg.cost)
    if cfg.method not in available_methods():
        raise bad_value("method", cfg.method, f"a registered method, one of {available_methods()}", "fedit")
    cfg.method_args = check_method_args(cfg.method, cfg.method_args)
    check_dataset(cfg)
    if files is not None:
        _CHECKED.add(_checked_key(cfg, files))
    return cfg


#: The configs this process has checked completely, each with the state of its local files (:func:`_checked_key`).
_CHECKED: set[str] = set()


def _checked_key(cfg: RunConfig, files: list) -> str:
    return json.dumps([cfg.to_dict(), files], sort_keys=True)


def _local_files(cfg: RunConfig) -> list[tuple[str, int, int]] | None:
    """``(path, size, mtime)`` of what a check of ``cfg`` reads from disk: the model checkpoint folder and every file
    beside the data sources' files (a dataset's own side files, e.g. PIQA's labels, included); ``None`` where one
    cannot be read (the check then runs, and names the problem)."""
    from fedmoe.data.loaders import data_files, is_local

    paths = [Path(cfg.model.path).expanduser()] if cfg.model.path else []
    try:
        for source in (cfg.data.source, cfg.data.test_source):
            if source is not None and is_local(source):
                folders = {f.parent for f in data_files(source)}
                paths += sorted(f for folder in folders for f in folder.iterdir() if f.is_file())
        return [(str(f), (st := f.stat()).st_size, st.st_mtime_ns) for f in paths]
    except OSError:
        return None


def check_dataset(cfg: RunConfig) -> None:
    """Read a real dataset (``data.source``, ``data.test_source``) as the run will, so a malformed row, a wrong
    kind or too few rows fails in seconds rather than after the base model has loaded (the offline suites are
    generated and need no check)."""
    if cfg.data.source is None:
        return
    from fedmoe.data.task_data import load_task_data

    train, _ = load_task_data(cfg.data, seed=cfg.data_seed)
    if len(train) < cfg.fed.num_clients:
        whence = "" if cfg.data.test_source else " (80% of its rows; data.test_source would train on every row)"
        raise ConfigError(f"config key data.source={cfg.data.source!r} gives {len(train)} training examples"
                          f"{whence}, fewer than fed.num_clients={cfg.fed.num_clients}: every client needs one "
                          "(fix: a larger file, or fewer clients, e.g. --set fed.num_clients="
                          f"{max(len(train), 1)})")


def _check_cost(cost) -> None:
    from fedmoe.fl.devices import get_fleet
    from fedmoe.fl.paper_configs import paper_arch

    try:
        get_fleet(cost.fleet)
    except KeyError as err:
        raise ConfigError(f"config key cost.fleet={cost.fleet!r} is invalid: {err.args[0]}") from None
    if cost.mode == "projection" and cost.projection is None:
        raise bad_value("cost.projection", None, "a paper architecture name when cost.mode=projection",
                        "olmoe-1b-7b")
    if cost.mode == "trained" and cost.projection is not None:
        raise ConfigError(f"config key cost.projection={cost.projection!r} does not apply with cost.mode=trained "
                          "(fix: --set cost.mode=projection, or --set cost.projection=null)")
    if cost.projection is not None:
        try:
            paper_arch(cost.projection)
        except KeyError as err:
            raise ConfigError(f"config key cost.projection={cost.projection!r} is invalid: {err.args[0]}") from None
    if cost.base_bits is not None:
        if cost.mode != "projection":
            raise ConfigError(f"config key cost.base_bits={cost.base_bits!r} only applies with cost.mode=projection "
                              "(the trained model is priced as it is stored; fix: --set cost.base_bits=null)")
        if cost.base_bits not in (4, 8, 16):
            raise bad_value("cost.base_bits", cost.base_bits, "4, 8 or 16", 4)



def check_run_name(run_name: str | None) -> None:
    """A run name (``None``: :func:`run_id`) must name one folder inside ``out_dir``; else a
    :class:`~fedmoe.config.ConfigError`."""
    if run_name is not None and not is_folder_name(run_name):
        raise ConfigError(f"run name {run_name!r} is invalid: expected one folder name inside out_dir, without path "
                          "separators or '..' (fix: e.g. --name my-run)")


def method_options(cfg: RunConfig) -> dict[str, Any]:
    """Every option of ``cfg``'s method as a run uses it: ``method_args`` over the options' defaults (what its
    folder records beside the config, :data:`fedmoe.results.RESOLVED_METHOD_ARGS`)."""
    return dataclasses.asdict(get_method(cfg.method).parse_args(cfg.method_args))


def run_id(cfg: RunConfig) -> str:
    """Default results folder name: readable name, method, scale and the config digest."""
    return f"{cfg.name}-{cfg.method}-{cfg.scale}-{cfg.digest()}"


def open_run_folder(cfg: RunConfig, path: str | Path, resume: bool) -> RunFolder:
    """The run folder at ``path`` for ``cfg``, locked for this run (release it with ``unlock``): created with
    its config, or an existing run of the same config when ``resume``; a folder another run is writing, holding
    another config, or holding any run when not ``resume``, is an error and is left untouched."""
    folder = RunFolder(path)
    folder.lock()
    try:
        if not folder.has_config():
            folder.write_config(cfg, method_options(cfg))
        elif not resume:
            raise FileExistsError(
                f"{folder.path} already holds a run; pass resume=True (CLI: drop --no-resume) to continue it, "
                "or choose another run name / out_dir"
            )
        elif not folder.holds_config(cfg):
            raise ValueError(
                f"{folder.path} holds a run with a different config; use another run name or out_dir "
                "(its results are left untouched)"
            )
    except BaseException:
        folder.unlock()
        raise
    return folder


def run(
    cfg: RunConfig,
    executor_factory: ExecutorFactory,
    *,
    out_dir: str | Path = "results",
    run_name: str | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    federation: Federation | None = None,
) -> Path:
    """Run (or resume) the experiment ``cfg`` and return its results folder.

    A run that fails before its first checkpoint removes what it wrote, under its folder's lock
    (:meth:`RunFolder.discard`); a run refused its folder (another run holds it, or it holds another run)
    changes nothing there.

    Args:
        executor_factory: the engine: builds, from the method spec and the federation, the executor that
            turns a round's tasks into updates (``fedmoe.engines.run`` passes the in-process one).
        out_dir: parent folder of run folders.
        run_name: folder name; defaults to :func:`run_id` (so re-running a config resumes it).
        resume: continue from the last checkpoint if the folder holds one; if ``False`` and the folder
            has results, raise instead of overwriting them.
        stop_after: stop after this round (to test and demonstrate resuming).
        federation: the server's world when it is not derived from ``cfg`` alone: with
            SuperNodes that own their data, :meth:`Federation.for_nodes` of their descriptions.
    """
    check_config(cfg)  # a config built by hand is checked too, before its folder exists
    check_run_name(run_name)
    folder = open_run_folder(cfg, Path(out_dir) / (run_name or run_id(cfg)), resume)
    try:
        _run_rounds(cfg, executor_factory, folder, stop_after, progress, federation)
    except BaseException:
        if not folder.checkpoint_path.exists():
            folder.discard()  # failed before its first checkpoint: nothing to resume, leave the folder as found
        raise
    finally:
        folder.unlock()
    return folder.path


def _run_rounds(cfg: RunConfig, executor_factory: ExecutorFactory, folder: RunFolder, stop_after: int | None,
                progress: bool, federation: Federation | None = None) -> None:
    """The body of :func:`run` in its locked ``folder``."""
    torch.set_num_threads(cfg.threads)
    fed = federation or Federation.from_config(cfg, progress=progress)
    spec = get_method(cfg.method)
    server = spec.server(fed, cfg.method_args)
    execute = executor_factory(spec, fed)
    folder.write_environment(str(resolve_device(cfg.device)), cfg.dtype)

    start, sim_time, wall_time = 1, 0.0, 0.0
    ckpt = folder.load_checkpoint()
    if ckpt is not None:
        server.load_state_dict(ckpt["method"])
        start, sim_time, wall_time = ckpt["round"] + 1, ckpt["sim_time"], ckpt["wall_time"]
        folder.truncate_rounds(ckpt["round"])
    else:
        folder.set_rounds_aside()  # rounds without a checkpoint cannot be resumed consistently

    last = cfg.fed.rounds if stop_after is None else min(cfg.fed.rounds, stop_after)
    if budget_spent(cfg, sim_time):
        last = start - 1  # resumed after the round that spent the time budget: nothing left to run
    if start == 1 and last >= 1:
        folder.append_round(_evaluate_record(cfg, fed, server, {"round": 0, "sim_time": 0.0, "wall_time": 0.0}))
    bar = tqdm(range(start, last + 1), desc=f"{cfg.method} rounds", disable=not progress, initial=start - 1,
               total=cfg.fed.rounds)
    for r in bar:
        t0 = time.perf_counter()
        result = run_round(fed, server, execute, r)
        clients, tasks, updates = result.clients, result.tasks, result.updates
        s0 = time.perf_counter()
        server_metrics = server.aggregate(r, updates)
        server_wall = time.perf_counter() - s0
        timing = price_round(fed, server, r, updates, wait_seconds=result.wait_seconds(cfg.fed.timeout_seconds),
                             retries=len(result.retried))
        sim_time += timing["round_seconds"]
        wall_time += time.perf_counter() - t0
        record = {
            "round": r,
            "clients": clients,
            "sim_time": sim_time,
            "wall_time": wall_time,
            "server_wall_seconds": server_wall,
            "train_loss": _mean([u.metrics.get("loss", float("nan")) for u in updates], [u.num_examples for u in updates]),
            "server": server_metrics,
            **timing,
            "client_metrics": {str(u.client_id): u.metrics for u in updates},
            "client_log": client_log(tasks, updates),
            **result.log(),
        }
        final = r == cfg.fed.rounds or budget_spent(cfg, sim_time)
        if r % cfg.fed.eval_every == 0 or final:
            record = _evaluate_record(cfg, fed, server, record)
        folder.append_round(record)
        folder.save_checkpoint({"round": r, "method": server.state_dict(), "sim_time": sim_time,
                                "wall_time": wall_time})
        if "score" in record:
            bar.set_postfix(score=f"{record['score']:.3f}", loss=f"{record['train_loss']:.3f}")
        if final:
            break
    if last == cfg.fed.rounds or budget_spent(cfg, sim_time):
        write_summary(folder.path)


def budget_spent(cfg: RunConfig, sim_time: float) -> bool:
    """Whether a run at cumulative simulated time ``sim_time`` has used its ``fed.sim_time_budget``."""
    return cfg.fed.sim_time_budget is not None and sim_time >= cfg.fed.sim_time_budget


def client_log(tasks: list[ClientTask], updates: list[ClientUpdate]) -> dict[str, dict]:
    """Per client of the round: the server's notes on its task and the client's diagnostics (clients with
    neither are left out)."""
    notes = {t.client_id: t.notes for t in tasks}
    out = {}
    for u in updates:
        entry = {**notes.get(u.client_id, {}), **u.diagnostics}
        if entry:
            out[str(u.client_id)] = entry
    return out


def price_round(fed: Federation, server: Server, round_: int, updates: list[ClientUpdate], *,
                wait_seconds: float = 0.0, retries: int = 0) -> dict[str, Any]:
    """Simulated seconds of a round: the slowest client's time plus server time (see ``fedmoe.fl.cost``);
    ``bytes_up`` / ``bytes_down`` are the priced transfers (on the projected architecture in ``projection``
    mode), ``bytes_sent`` the bytes of the tensors the client actually returned;
    at least ``wait_seconds`` before the server phase when a client never answered, plus
    ``fed.timeout_seconds`` for each of ``retries`` failed attempts of the round.

    A client whose work does not fit its device's memory raises ``DoesNotFitError``: methods that
    adapt to memory (offloading, quantizing, merging experts) must report the memory they adapted to.
    """
    from fedmoe.fl.cost import ClientWork, check_fits, client_time, round_time

    times = {}
    for u in updates:
        work = ClientWork(**u.work)
        device = fed.devices[u.client_id]
        check_fits(work, device, what=f"client {u.client_id}'s {fed.cfg.method} task in round {round_}")
        times[u.client_id] = client_time(work, device)
    overlap = server.overlap(round_)
    rt = round_time(list(times.values()), server_seconds=fed.cfg.cost.server_seconds, overlap=overlap,
                    wait_seconds=wait_seconds)
    return {
        "round_seconds": rt.total + retries * fed.cfg.fed.timeout_seconds,
        "overlap": overlap,
        "wait_seconds": wait_seconds,
        "client_seconds": {str(c): t.total for c, t in times.items()},
        "client_time_parts": {str(c): t.__dict__ for c, t in times.items()},
        "bytes_up": {str(u.client_id): int(u.work.get("bytes_up", 0)) for u in updates},
        "bytes_down": {str(u.client_id): int(u.work.get("bytes_down", 0)) for u in updates},
        "bytes_sent": {str(u.client_id): u.bytes_up for u in updates},
        "peak_memory": {str(u.client_id): int(u.work.get("memory_bytes", 0)) for u in updates},
        "devices": {str(u.client_id): fed.devices[u.client_id].name for u in updates},
        "cost_mode": fed.cost.mode,
    }


def _evaluate_record(cfg: RunConfig, fed: Federation, server: Server, record: dict) -> dict:
    """``record`` with the round's scores: every scalar score, ``per_domain`` and ``item_scores`` (each test
    example's own metric, in test-set order), averaged over the server's evaluation models."""
    from fedmoe.eval.evaluate import evaluate

    runs = [evaluate(model, fed.tokenizer, fed.test_set, batch_size=cfg.fed.eval_batch_size, progress=False)
            for model in server.eval_models()]
    scores = runs[0] if len(runs) == 1 else _average_scores(runs)
    scalars = {k: v for k, v in scores.items() if isinstance(v, int | float)}
    return {**record, **scalars, "per_domain": scores.get("per_domain", {}), "item_scores": scores["item_scores"]}


def _average_scores(runs: list[dict]) -> dict:
    """Mean of several evaluations' scalar and per-item scores (e.g. every client's own model in local-only
    training)."""
    out = {k: float(sum(r[k] for r in runs) / len(runs)) for k, v in runs[0].items() if isinstance(v, int | float)}
    out["item_scores"] = [float(sum(items) / len(runs)) for items in zip(*(r["item_scores"] for r in runs),
                                                                           strict=True)]
    return out


def _mean(values: list[float], weights: list[int]) -> float:
    total = sum(weights)
    return float(sum(v * w for v, w in zip(values, weights, strict=True)) / total) if total else float("nan")


def write_summary(folder: str | Path) -> dict:
    """Summarise a finished run's rounds into its summary (final and best score, totals)."""
    run_folder = RunFolder(folder)
    rounds = run_folder.rounds()
    scored = [r for r in rounds if "score" in r]
    summary = {
        "rounds": max(r["round"] for r in rounds),
        "final_score": scored[-1]["score"] if scored else None,
        "best_score": max(r["score"] for r in scored) if scored else None,
        "initial_score": scored[0]["score"] if scored else None,
        "sim_time": rounds[-1]["sim_time"],
        "wall_time": rounds[-1]["wall_time"],
    }
    run_folder.write_summary(summary)
    return summary

"""Run a federated experiment round by round, write its results, and resume it exactly.

``run(cfg)`` builds the :class:`Federation` and the method, then for each round samples clients,
asks the method for their tasks, hands them to an *executor* (the engine: in-process by default,
Flower when run from the Flower ServerApp), aggregates, prices the round with the cost model,
evaluates, and appends one JSON line to ``results/<run-id>/rounds.jsonl`` with a checkpoint. A run
that stops (or is killed) resumes from its last checkpoint and reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fedmoe.config import RunConfig, save_config, validate
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.federation import Federation, sample_clients

Executor = Callable[[list[ClientTask]], list[ClientUpdate]]

ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"


def run_id(cfg: RunConfig) -> str:
    """Default results folder name: readable name, method, scale and the config digest."""
    return f"{cfg.name}-{cfg.method}-{cfg.scale}-{cfg.digest()}"


def in_process_executor(method) -> Executor:
    """The default engine: run each task sequentially in this process."""
    return lambda tasks: [method.client_update(task) for task in tasks]


def run(
    cfg: RunConfig,
    *,
    out_dir: str | Path = "results",
    run_name: str | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    executor_factory: Callable[[Any], Executor] | None = None,
) -> Path:
    """Run (or resume) the experiment ``cfg`` and return its results folder.

    Args:
        out_dir: parent folder of run folders.
        run_name: folder name; defaults to :func:`run_id` (so re-running a config resumes it).
        resume: continue from the last checkpoint if the folder holds one; if ``False`` and the folder
            has results, raise instead of overwriting them.
        stop_after: stop after this round (to test and demonstrate resuming).
        executor_factory: builds the engine from the method; default :func:`in_process_executor`.
    """
    from fedmoe.methods.base import get_method

    validate(cfg)  # a config built by hand is checked too, before its folder exists
    folder = Path(out_dir) / (run_name or run_id(cfg))
    folder.mkdir(parents=True, exist_ok=True)
    ckpt_path = folder / CHECKPOINT_FILE
    config_path = folder / CONFIG_FILE
    if config_path.exists():
        if not resume:
            raise FileExistsError(
                f"{folder} already holds a run; pass resume=True (CLI: drop --no-resume) to continue it, "
                "or choose another run name / out_dir"
            )
        saved = config_path.read_text()
        save_config(cfg, folder / "config.new.yaml")
        if saved != (folder / "config.new.yaml").read_text():
            (folder / "config.new.yaml").unlink()
            raise ValueError(
                f"{folder} holds a run with a different config; use another run name or out_dir "
                "(its results are left untouched)"
            )
        (folder / "config.new.yaml").unlink()
    else:
        save_config(cfg, config_path)

    torch.set_num_threads(cfg.threads)
    fed = Federation.from_config(cfg, progress=progress)
    method = get_method(cfg.method)(fed, cfg.method_args)
    execute = (executor_factory or in_process_executor)(method)

    start, sim_time, wall_time = 1, 0.0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        method.load_state_dict(ckpt["method"])
        start, sim_time, wall_time = ckpt["round"] + 1, ckpt["sim_time"], ckpt["wall_time"]
        _truncate_rounds(folder / ROUNDS_FILE, ckpt["round"])
    elif (folder / ROUNDS_FILE).exists():
        (folder / ROUNDS_FILE).unlink()  # rounds without a checkpoint cannot be resumed consistently

    last = cfg.fed.rounds if stop_after is None else min(cfg.fed.rounds, stop_after)
    if start == 1 and last >= 1:
        _append(folder / ROUNDS_FILE, _evaluate_record(cfg, fed, method, 0, 0.0, 0.0, {}))
    bar = tqdm(range(start, last + 1), desc=f"{cfg.method} rounds", disable=not progress, initial=start - 1,
               total=cfg.fed.rounds)
    for r in bar:
        t0 = time.perf_counter()
        clients = sample_clients(cfg.seed, r, cfg.fed.num_clients, cfg.fed.clients_per_round)
        tasks = method.plan(r, clients)
        updates = sorted(execute(tasks), key=lambda u: u.client_id)
        s0 = time.perf_counter()
        server_metrics = method.aggregate(r, updates)
        server_wall = time.perf_counter() - s0
        timing = price_round(fed, method, r, updates)
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
            "client_extra": {str(u.client_id): u.extra for u in updates if u.extra},
        }
        if r % cfg.fed.eval_every == 0 or r == cfg.fed.rounds:
            record = _evaluate_record(cfg, fed, method, r, sim_time, wall_time, record)
        _append(folder / ROUNDS_FILE, record)
        torch.save({"round": r, "method": method.state_dict(), "sim_time": sim_time, "wall_time": wall_time},
                   ckpt_path)
        if "score" in record:
            bar.set_postfix(score=f"{record['score']:.3f}", loss=f"{record['train_loss']:.3f}")
    if last == cfg.fed.rounds:
        write_summary(folder)
    return folder


def price_round(fed: Federation, method, round_: int, updates: list[ClientUpdate]) -> dict[str, Any]:
    """Simulated seconds of a round: the slowest client's time plus server time (see ``fedmoe.fl.cost``).

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
    rt = round_time(list(times.values()), server_seconds=fed.cfg.cost.server_seconds, overlap=method.overlap(round_))
    return {
        "round_seconds": rt.total,
        "client_seconds": {str(c): t.total for c, t in times.items()},
        "client_time_parts": {str(c): t.__dict__ for c, t in times.items()},
        "bytes_up": {str(u.client_id): u.bytes_up for u in updates},
        "bytes_down": {str(u.client_id): int(u.work.get("bytes_down", 0)) for u in updates},
        "peak_memory": {str(u.client_id): int(u.work.get("memory_bytes", 0)) for u in updates},
        "devices": {str(u.client_id): fed.devices[u.client_id].name for u in updates},
        "cost_mode": fed.cost.mode,
    }


def _evaluate_record(cfg, fed, method, r, sim_time, wall_time, record) -> dict:
    from fedmoe.eval.evaluate import evaluate

    runs = [evaluate(model, fed.tokenizer, fed.test_set, batch_size=cfg.fed.eval_batch_size, progress=False)
            for model in method.eval_models()]
    scores = runs[0] if len(runs) == 1 else _average_scores(runs)
    base = {"round": r, "sim_time": sim_time, "wall_time": wall_time} if not record else record
    scalars = {k: v for k, v in scores.items() if isinstance(v, int | float)}
    return {**base, **scalars, "per_domain": scores.get("per_domain", {})}


def _average_scores(runs: list[dict]) -> dict:
    """Mean of several evaluations' scalar scores (e.g. every client's own model in local-only training)."""
    return {k: float(sum(r[k] for r in runs) / len(runs)) for k, v in runs[0].items() if isinstance(v, int | float)}


def _mean(values: list[float], weights: list[int]) -> float:
    total = sum(weights)
    return float(sum(v * w for v, w in zip(values, weights, strict=True)) / total) if total else float("nan")


def _append(path: Path, record: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record, default=float) + "\n")


def _truncate_rounds(path: Path, last_round: int) -> None:
    """Drop lines written after the checkpoint (a run killed between writing a line and a checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["round"] <= last_round]
    path.write_text("".join(line + "\n" for line in keep))


def write_summary(folder: str | Path) -> dict:
    """Summarise a finished run's rounds into ``summary.json`` (final and best score, totals)."""
    from fedmoe.results import load_rounds

    folder = Path(folder)
    rounds = load_rounds(folder)
    scored = [r for r in rounds if "score" in r]
    summary = {
        "rounds": max(r["round"] for r in rounds),
        "final_score": scored[-1]["score"] if scored else None,
        "best_score": max(r["score"] for r in scored) if scored else None,
        "initial_score": scored[0]["score"] if scored else None,
        "sim_time": rounds[-1]["sim_time"],
        "wall_time": rounds[-1]["wall_time"],
    }
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary

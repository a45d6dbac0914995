"""Re-open a finished run to score models it did not evaluate while it ran (FFT-MoE's personalised models,
FLAME's per-tier own-top-k models): its federation and its method's server holding the final round's state."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedmoe.config import RunConfig, from_dict
from fedmoe.data.records import Example
from fedmoe.results import load_config_dict


def final_server(folder: str | Path, method: str) -> tuple[RunConfig, Any, Any]:
    """``(cfg, federation, server)`` of the finished ``method`` run in ``folder``, the server loaded from the
    final round's checkpoint. Raises ValueError for another method's run and FileNotFoundError for an
    unfinished one (naming the fix)."""
    import torch

    from fedmoe.fl.federation import Federation
    from fedmoe.methods.base import get_method
    from fedmoe.results import RunFolder

    cfg = from_dict(load_config_dict(folder))
    if cfg.method != method:
        raise ValueError(f"{folder} is a {cfg.method} run; this evaluation needs a {method} run")
    ckpt = RunFolder(folder).load_checkpoint()
    if ckpt is None or ckpt["round"] != cfg.fed.rounds:
        raise FileNotFoundError(f"{folder} holds no checkpoint of the final round; finish the run with `fedmoe run`")
    torch.set_num_threads(cfg.threads)
    fed = Federation.from_config(cfg)
    server = get_method(method).server(fed, cfg.method_args)
    server.load_state_dict(ckpt["method"])
    return cfg, fed, server


def evaluate_on(cfg: RunConfig, fed, model, examples: Sequence[Example]) -> dict:
    """``model``'s scores on ``examples`` as the run's own evaluation computes them (score, item_scores ...)."""
    from fedmoe.eval.evaluate import evaluate

    return evaluate(model, fed.tokenizer, list(examples), batch_size=cfg.fed.eval_batch_size, progress=False)


def cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON at ``path`` if it exists, else ``compute()`` written there first (a finished run's extra
    evaluation is computed once)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def compute_all(score: Callable[[str | Path], dict], folders: Sequence[str | Path], filename: str,
                jobs: int | None = None, progress: bool = False) -> None:
    """Run ``score`` (which caches its result as ``<folder>/<filename>``) on every folder not yet scored, in
    ``jobs`` worker processes (default :func:`~fedmoe.studies.grid.default_jobs`) with one torch thread each;
    ``progress``: one bar over the folders (those already scored count as done), named after ``filename``."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    from fedmoe.studies.grid import default_jobs

    todo = [f for f in folders if not (Path(f) / filename).is_file()]
    if not todo:
        return
    jobs = min(jobs or default_jobs(), len(todo))
    bar = tqdm(total=len(folders), initial=len(folders) - len(todo), desc=Path(filename).stem, disable=not progress)
    if jobs == 1:
        for folder in todo:
            score(folder)
            bar.update()
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            for _ in pool.map(score, todo):
                bar.update()
    bar.close()

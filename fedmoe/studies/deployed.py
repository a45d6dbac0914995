"""What each client deploys, scored: a finished run's :meth:`~fedmoe.methods.base.Server.deployed_models` on the
run's global test set, so that a claim about "what each client runs" is judged the same way for every method.

The global model is what a run scores while it runs; a client may deploy another model (HetLoRA's and FlexLoRA's
rank-r_i copies, FLAME's global LoRA at its own top-k_i through its rescaler, FFT-MoE's own router and K_n, a
local-only client's own adapter). Each group of clients deploying one model is evaluated once on the same test
items as the run's own evaluation, and the clients' per-item scores are averaged with weights ``|D_i|``
(``fed.num_examples``), so the result pairs item by item with any run's global scores
(:func:`fedmoe.studies.evidence.item_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedmoe.results import load_config_dict
from fedmoe.studies.reload import cached_json, compute_all, evaluate_on, final_server

DEPLOYED_FILE = "deployed.json"


def deployed_scores(folder: str | Path) -> dict[str, Any]:
    """A finished run's deployed models scored on its global test set (module docstring); cached in
    ``<folder>/deployed.json``.

    Returns ``{"item_scores": [...], "score", "same_as_global", "groups": [...]}``: the ``|D_i|``-weighted mean
    over clients of their model's per-item scores, its mean, whether every client deploys the global model, and
    one record per group, ``{"clients", "weight" (the group's examples, sum of |D_i|), "score", "item_scores",
    "same_as_global"}``. Every group is evaluated, the global model included (the run's recorded scores are not
    reused)."""
    def compute() -> dict[str, Any]:
        cfg, fed, server = final_server(folder, load_config_dict(folder)["method"])
        groups = []
        for group in server.deployed_models():
            scores = evaluate_on(cfg, fed, group.model, fed.test_set)
            groups.append({"clients": list(group.clients), "weight": sum(fed.num_examples(c) for c in group.clients),
                           "score": scores["score"], "item_scores": scores["item_scores"],
                           "same_as_global": group.same_as_global})
        weights = np.array([g["weight"] for g in groups], dtype=float)
        if weights.sum() <= 0:
            raise ValueError(f"{folder}: its clients hold no training examples, so |D_i| cannot weight them")
        items = weights @ np.array([g["item_scores"] for g in groups], dtype=float) / weights.sum()
        return {"item_scores": items.tolist(), "score": float(items.mean()),
                "same_as_global": all(g["same_as_global"] for g in groups), "groups": groups}

    return cached_json(Path(folder) / DEPLOYED_FILE, compute)


def deployed_item_scores(folder: str | Path) -> np.ndarray:
    """The ``|D_i|``-weighted per-item scores of what the run's clients deploy (:func:`deployed_scores`)."""
    return np.asarray(deployed_scores(folder)["item_scores"], dtype=float)


def score_deployed(folders: Sequence[str | Path], jobs: int | None = None, progress: bool = False
                   ) -> list[dict[str, Any]]:
    """:func:`deployed_scores` of every folder, in order; those not yet scored are scored in ``jobs`` processes
    (:func:`~fedmoe.studies.reload.compute_all`; ``progress``: a bar over them)."""
    compute_all(deployed_scores, folders, DEPLOYED_FILE, jobs, progress)
    return [deployed_scores(f) for f in folders]

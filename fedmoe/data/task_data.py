"""The train and test examples a run uses: the offline benchmark, or a real dataset from a Hub name or path."""

from __future__ import annotations

import random

from fedmoe.data.records import Example


def load_task_data(data_cfg, *, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Return ``(train, test)`` for a :class:`fedmoe.config.DataConfig`.

    With ``source`` unset, the offline benchmark suite ``suite`` is generated from the seed. With a
    source (Hub name or local json/jsonl/parquet/csv file), its records are shuffled by the seed and
    split 80/20 as in the papers, capped at ``n_train`` / ``n_test``.
    """
    if data_cfg.source is None:
        from fedmoe.data.offline import make_benchmark

        return make_benchmark(data_cfg.suite, n_train=data_cfg.n_train, n_test=data_cfg.n_test, seed=seed)
    from fedmoe.data.loaders import load_records

    records = load_records(data_cfg.source, seed=seed)
    random.Random(seed).shuffle(records)
    cut = int(0.8 * len(records))
    return records[:cut][: data_cfg.n_train], records[cut:][: data_cfg.n_test]

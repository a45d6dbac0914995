"""The train and test examples a run uses: the offline benchmark, or a real dataset from a Hub name or path."""

from __future__ import annotations

import random

from fedmoe.data.records import Example


def load_task_data(data_cfg, *, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Return ``(train, test)`` for a :class:`fedmoe.config.DataConfig`.

    With ``source`` unset, the offline benchmark suite ``suite`` is generated from the seed. With a
    ``source`` (Hub name, local json/jsonl/parquet/csv file, folder or glob) and no ``test_source``, its records
    are shuffled by the seed and split 80/20 as in the papers, capped at ``n_train`` / ``n_test``. With a
    ``test_source`` (a dataset's published test split; a Hub name loads its ``test`` split), training uses
    ``source`` alone and scoring the test file alone: ``n_train`` / ``n_test`` rows of each (a seeded subset, in
    file order, when the file holds more; every row when it holds exactly that many), and a count larger than
    the file holds is an error naming the file and its row count. ``kind`` (``None``: inferred) applies to both.
    """
    if data_cfg.source is None:
        from fedmoe.data.offline import make_benchmark

        return make_benchmark(data_cfg.suite, n_train=data_cfg.n_train, n_test=data_cfg.n_test, seed=seed)
    from fedmoe.data.loaders import load_records

    if data_cfg.test_source is None:
        records = load_records(data_cfg.source, kind=data_cfg.kind, seed=seed)
        random.Random(seed).shuffle(records)
        cut = int(0.8 * len(records))
        return records[:cut][: data_cfg.n_train], records[cut:][: data_cfg.n_test]
    return (_published(data_cfg.source, "train", data_cfg.n_train, "source", data_cfg.kind, seed),
            _published(data_cfg.test_source, "test", data_cfg.n_test, "test_source", data_cfg.kind, seed))


def _published(source: str, split: str, count: int, key: str, kind: str | None, seed: int) -> list[Example]:
    """``count`` records of one published split; fewer rows than ``count`` is an error."""
    from fedmoe.data.loaders import DatasetFormatError, load_records, subset_indices

    records = load_records(source, kind=kind, split=split, seed=seed)
    if len(records) < count:
        size = "n_train" if split == "train" else "n_test"
        raise DatasetFormatError(
            f"data.{key}={source!r} holds {len(records)} examples, fewer than data.{size}={count} (the value "
            f"would not apply). Fix: --set data.{size}={len(records)} to use every row, or a larger file")
    return [records[i] for i in subset_indices(len(records), count, seed)]

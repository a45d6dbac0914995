"""The train, validation and test examples a run uses: the offline benchmark, or a real dataset from a Hub name or
path. The validation items are carved out of the training pool, so tuning on them never reads the test items."""

from __future__ import annotations

import random

from fedmoe.data.records import Example
from fedmoe.errors import ConfigError

#: What a run can be scored on (``fed.eval_split``): the held-out test set, or the validation items.
EVAL_SPLITS = ("test", "val")


def load_task_data(data_cfg, *, seed: int = 0, split: str = "test") -> tuple[list[Example], list[Example]]:
    """Return ``(train, scored)`` for a :class:`fedmoe.config.DataConfig`: the training examples (the pool less
    its ``n_val`` validation items and their copies, see :func:`carve_validation`) and the examples of ``split``
    (:data:`EVAL_SPLITS`): the test set, or the validation items (the test examples are then neither generated
    nor read).

    With ``source`` unset, the offline benchmark suite ``suite`` is generated from the seed. With a
    ``source`` (Hub name, local json/jsonl/parquet/csv file, folder or glob) and no ``test_source``, its records
    are shuffled by the seed and split 80/20 as in the papers, capped at ``n_train`` / ``n_test``. With a
    ``test_source`` (a dataset's published test split; a Hub name loads its ``test`` split), training uses
    ``source`` alone and scoring the test file alone: ``n_train`` / ``n_test`` rows of each (a seeded subset, in
    file order, when the file holds more; every row when it holds exactly that many), and a count larger than
    the file holds is an error naming the file and its row count. ``kind`` (``None``: inferred) applies to both.
    The training pool is the ``n_train`` part in every case; the validation items come from it alone.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {EVAL_SPLITS}")
    pool, test = _pool_and_test(data_cfg, seed, with_test=split == "test")
    train, val = carve_validation(pool, data_cfg.n_val, seed)
    return train, (test if split == "test" else val)


def carve_validation(pool: list[Example], n_val: int, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, val)``: ``n_val`` validation items carved out of ``pool``, and the training examples left.

    The items are ``n_val`` distinct prompts of the pool, drawn by ``seed`` (the data seed, so every method and run
    seed shares them), one example each; every example with a drawn prompt leaves training, so no validation item
    is a training item (the offline suites repeat prompts: a copy left in training would score memorisation).
    Both keep pool order; ``n_val = 0`` leaves the pool as it is. Too few distinct prompts, or none left to train
    on, is a :class:`~fedmoe.config.ConfigError`."""
    if n_val == 0:
        return pool, []
    first: dict[str, int] = {}  # each distinct prompt -> its first example
    for i, ex in enumerate(pool):
        first.setdefault(ex.prompt, i)
    if n_val >= len(first):
        raise ConfigError(f"config key data.n_val={n_val} is invalid: the training pool holds {len(pool)} examples "
                          f"with {len(first)} distinct prompts, and every copy of a validation prompt leaves "
                          f"training, so at most {len(first) - 1} can be carved (fix: e.g. --set "
                          f"data.n_val={len(first) // 5}, or a larger data.n_train)")
    drawn = set(random.Random(f"fedmoe-val-{seed}").sample(list(first), n_val))
    return [ex for ex in pool if ex.prompt not in drawn], [pool[i] for p, i in first.items() if p in drawn]


def _pool_and_test(data_cfg, seed: int, *, with_test: bool) -> tuple[list[Example], list[Example]]:
    """The training pool and the test set (empty, its source unread, unless ``with_test``)."""
    if data_cfg.source is None:
        from fedmoe.data.offline import make_benchmark

        # each part is drawn from its own seeded stream, so n_test=0 leaves the training items as they are
        n_test = data_cfg.n_test if with_test else 0
        return make_benchmark(data_cfg.suite, n_train=data_cfg.n_train, n_test=n_test, seed=seed)
    from fedmoe.data.loaders import load_records

    if data_cfg.test_source is None:
        records = load_records(data_cfg.source, kind=data_cfg.kind, seed=seed)
        random.Random(seed).shuffle(records)
        cut = int(0.8 * len(records))
        return records[:cut][: data_cfg.n_train], records[cut:][: data_cfg.n_test] if with_test else []
    train = _published(data_cfg.source, "train", data_cfg.n_train, "source", data_cfg.kind, seed)
    if not with_test:
        return train, []
    return train, _published(data_cfg.test_source, "test", data_cfg.n_test, "test_source", data_cfg.kind, seed)


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

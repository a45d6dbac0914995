"""From run folders to claims with intervals: a method's score over seeds, and two methods compared paired.

A study runs every method on the same seeds (and, through ``data_seed``, the same data and test items), so
a comparison pairs run folders by seed (:func:`paired_by_seed`, the one pairing every study uses) and test
items by position. A run's score is the mean of its last ``last`` evaluations (curves that still move are not
judged on one noisy point); per-item scores are averaged over the same evaluations. The statistics themselves
live in :mod:`fedmoe.stats`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmoe.report import DEPLOYED, GLOBAL, HeadToHeadRow
from fedmoe.results import load_config_dict, load_rounds
from fedmoe.stats import Interval, mean_ci, paired_difference, verdict
from fedmoe.studies.deployed import deployed_item_scores


def _evaluated(folder: str | Path, last: int | None = None) -> list[dict]:
    rows = [r for r in load_rounds(folder) if "score" in r]
    if not rows:
        raise ValueError(f"{folder} holds no evaluated round; run it to the end with `fedmoe run`")
    return rows if last is None else rows[-last:]


def run_score(folder: str | Path, last: int = 1) -> float:
    """The run's score: the mean ``score`` of its last ``last`` evaluated rounds."""
    return float(np.mean([r["score"] for r in _evaluated(folder, last)]))


def _item_rows(folder: str | Path, rows: list[dict]) -> np.ndarray:
    """Per-item scores of the evaluated ``rows``, ``[len(rows), n_items]`` (an old run without them: ValueError)."""
    missing = [r["round"] for r in rows if "item_scores" not in r]
    if missing:
        raise ValueError(f"{folder}: rounds {missing} have no per-item scores (written by fedmoe >= 0.2); "
                         "re-run the config into a new folder to compare it paired")
    return np.asarray([r["item_scores"] for r in rows], dtype=float)


def item_scores(folder: str | Path, last: int = 1) -> np.ndarray:
    """Per-test-item scores of the run, averaged over its last ``last`` evaluated rounds."""
    return _item_rows(folder, _evaluated(folder, last)).mean(axis=0)


def seed_of(folder: str | Path) -> int:
    """The run seed a folder was made with."""
    return int(load_config_dict(folder)["seed"])


def by_seed(folders: Sequence[str | Path]) -> dict[int, Path]:
    """Run folders keyed by their seed, in seed order. A seed given twice is a ValueError: its runs are one run,
    and an interval counting it twice would claim a spread it never measured."""
    out: dict[int, Path] = {}
    for folder in folders:
        seed = seed_of(folder)
        if seed in out:
            raise ValueError(f"{out[seed]} and {folder} are both runs of seed {seed}; give each seed's run once")
        out[seed] = Path(folder)
    return dict(sorted(out.items()))


def paired_by_seed(*sides: Sequence[str | Path], what: str = "pairing runs by seed") -> list[tuple]:
    """Several sides' runs (methods, settings) paired by seed: ``[(seed, side 0's run, side 1's run, ...)]`` in
    seed order. Sides with different seeds are a ValueError (``what`` names the pairing in it)."""
    keyed = [by_seed(side) for side in sides]
    if any(set(k) != set(keyed[0]) for k in keyed):
        raise ValueError(f"{what} needs the same seeds on every side; got "
                         f"{' and '.join(str(list(k)) for k in keyed)}: run the missing seeds first")
    return [(seed, *(k[seed] for k in keyed)) for seed in keyed[0]] if keyed else []


def scale_of(folders: Sequence[str | Path] | Mapping[object, Sequence[str | Path]]) -> str | None:
    """The kit scale (:data:`fedmoe.config.SCALES`) the run folders were made at, for a report row's
    ``run_scale`` (:class:`fedmoe.report.TargetRow`): ``folders`` is a sequence of run folders or a study's grid
    (a mapping of cells to them); None when their configs record no scale. A row rests on runs of one scale, so
    folders of several scales are a ValueError."""
    flat = [f for runs in folders.values() for f in runs] if isinstance(folders, Mapping) else list(folders)
    scales = {load_config_dict(f).get("scale") for f in flat}
    if len(scales) > 1:
        raise ValueError(f"the runs behind one row were made at several scales {sorted(map(str, scales))}; "
                         "compare runs of one scale")
    return next(iter(scales), None)


def score_interval(folders: Sequence[str | Path], last: int = 1) -> Interval:
    """Mean score over the seeds' runs with its 95% Student-t interval."""
    return mean_ci([run_score(f, last) for f in folders])


def score_lines(grid: Mapping[tuple[str, str], Sequence[str | Path]], settings: Sequence[str],
                methods: Sequence[str], seeds: Sequence[int]) -> str:
    """A study's final scores as printable lines: one per setting (a split, a compute setting), each method's
    mean and 95% interval over ``seeds`` (``grid``: ``{(method, setting): runs}``)."""
    lines = [f"Final score of the global model, mean ± 95% CI over seeds {list(seeds)} (points)",
             f"{'':<13} " + " ".join(f"{m:>24}" for m in methods)]
    lines += [f"{setting:<13} " + " ".join(f"{score_interval(grid[m, setting]).format():>24}" for m in methods)
              for setting in settings]
    return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    """``a - b`` in score units (paired over seeds and items), its verdict for ``a`` and the scale of the runs
    (:func:`scale_of`; a row built from the comparison carries it)."""

    difference: Interval
    verdict: str
    run_scale: str | None = None


def compare(folders_a: Sequence[str | Path], folders_b: Sequence[str | Path], last: int = 1,
            seed: int = 0, protocol: str = GLOBAL) -> Comparison:
    """Paired comparison of two methods run on the same seeds and test items (see :func:`paired_difference`),
    under ``protocol``: ``global`` pairs the global models' per-item scores (each run's last ``last`` evaluations),
    ``deployed`` the |D_i|-weighted per-item scores of what each run's clients deploy on its final round
    (:func:`fedmoe.studies.deployed.deployed_item_scores`; score them in parallel first with ``score_deployed``)."""
    if protocol not in (GLOBAL, DEPLOYED):
        raise ValueError(f"compare scores models under the global or deployed protocol, got {protocol!r}")
    if protocol == DEPLOYED and last != 1:
        raise ValueError("the deployed protocol scores each run's final round only; use last=1")
    def items(folder: str | Path) -> np.ndarray:
        return deployed_item_scores(folder) if protocol == DEPLOYED else item_scores(folder, last)

    pairs = paired_by_seed(folders_a, folders_b, what="paired comparison")
    diff = paired_difference(np.stack([items(a) for _, a, _ in pairs]), np.stack([items(b) for _, _, b in pairs]),
                             seed=seed)
    return Comparison(diff, verdict(diff), scale_of([*folders_a, *folders_b]))


def _final_minus(folders: Sequence[str | Path], pick: Callable[[str | Path, list[dict]], int],
                 seed: int) -> Interval:
    """Each run's final per-item scores minus those of the evaluated round ``pick(folder, rounds)`` indexes,
    paired over seeds and test items (score units)."""
    finals, others = [], []
    for folder in by_seed(folders).values():
        rows = _evaluated(folder)
        items = _item_rows(folder, rows)
        finals.append(items[-1])
        others.append(items[pick(folder, rows)])
    return paired_difference(np.stack(finals), np.stack(others), seed=seed)


def drop_from_best(folders: Sequence[str | Path], seed: int = 0) -> Interval:
    """A run's final score minus its best evaluated score, paired over seeds and test items (score units).

    Per seed the best round is the evaluated round with the highest score (the final one when the curve never
    fell, giving 0 for that seed). The interval says whether the runs ended measurably below a peak they had
    reached: an interval wholly below the tolerance a study sets is a collapse, one that contains 0 is not.
    """
    return _final_minus(folders, lambda _, rows: int(np.argmax([r["score"] for r in rows])), seed)


def late_gain(folders: Sequence[str | Path], fraction: float = 2 / 3, seed: int = 0) -> Interval:
    """What the runs still gained late: final score minus the score at the first evaluated round at or after
    ``fraction`` of the last round, paired over seeds and test items (score units).

    An interval around 0 says the curves had flattened over the last third of the horizon, so a score read there
    is what the method converges to; one well above 0 says they were still rising.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"late_gain fraction must lie in (0, 1), e.g. 2/3; got {fraction}")

    def at_fraction(folder: str | Path, rows: list[dict]) -> int:
        at = next(i for i, r in enumerate(rows) if r["round"] >= fraction * rows[-1]["round"])
        if at == len(rows) - 1:
            raise ValueError(f"{folder}: no evaluation between {fraction:.0%} of the horizon and its end "
                             f"(evaluated rounds {[r['round'] for r in rows]}); evaluate more often (fed.eval_every)")
        return at

    return _final_minus(folders, at_fraction, seed)


def best_by_mean(groups: dict[str, Sequence[str | Path]], last: int = 1, protocol: str = GLOBAL) -> str:
    """The name whose runs have the highest mean score (ties: the first name): the global models' (each run's
    last ``last`` evaluations) or, under the ``deployed`` protocol, the |D_i|-weighted deployed models'."""
    def score(folder: str | Path) -> float:
        return float(np.mean(deployed_item_scores(folder))) if protocol == DEPLOYED else run_score(folder, last)

    means = {name: float(np.mean([score(f) for f in folders])) for name, folders in groups.items()}
    return max(means, key=means.get)


def head_to_head_row(method: str, folders: Sequence[str | Path], last: int = 1) -> HeadToHeadRow:
    """A method's line in the report's head-to-head table: its score over seeds, simulated time and traffic, on
    the benchmark its runs name (suite and split, base model and scale, fleet)."""
    finals = [load_rounds(f)[-1] for f in folders]
    config = load_config_dict(folders[0])
    data = config["data"]
    split = f"dirichlet alpha={data['alpha']:g}" if data["partition"] == "dirichlet" else data["partition"]
    benchmark = (f"{data['suite']}, {split} · {config['model']['name']} ({config['model']['scale']}) · "
                 f"{config['cost']['fleet']} fleet")
    return HeadToHeadRow(method, score_interval(folders, last), {
        "simulated seconds": round(float(np.mean([r["sim_time"] for r in finals])), 1),
        "MB up / client / round": round(float(np.mean([_mean_upload(f) for f in folders])) / 1e6, 2),
    }, benchmark)


def _mean_upload(folder: str | Path) -> float:
    """Mean bytes a client uploads per round over the run."""
    sent = [b for r in load_rounds(folder) for b in r.get("bytes_up", {}).values()]
    return float(np.mean(sent)) if sent else 0.0

"""Matplotlib figures from run folders: score against rounds and against simulated time, one line per run or
one mean line per method with its 95% band over seeds; the clients that failed each round; the cost
model's predictions against what a CUDA run measured; a claim mapped over a setting, its verdict shaded at each
point.

Scores are stored as fractions in [0, 1] and drawn in points (0-100), as the tables and the report print them,
on an axis that names the runs' metric (ROUGE-L, exact match, accuracy: the metric keys their evaluated rounds
carry); a band or error bar of a score is clipped to [0, 100], the range the score cannot leave (a Student-t
interval over few seeds can). Rounds get integer ticks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fedmoe.data.records import METRICS
from fedmoe.results import curve, load_config_dict, load_rounds
from fedmoe.stats import FAILED, LOWER_BOUND, MET, NOT_TESTABLE, UNRESOLVED, UPPER_BOUND, Interval, mean_ci

X_LABELS = {"round": "round", "sim_time": "simulated time (s)", "wall_time": "wall-clock time (s)"}
#: Axis names of the evaluation metrics (``fedmoe.data.records.METRICS``).
METRIC_NAMES = {"rouge_l": "ROUGE-L", "exact_match": "exact match", "mc_accuracy": "accuracy"}
#: Keys of an evaluated round that hold a score in [0, 1] (the combined ``score`` and each metric's mean).
SCORE_KEYS = ("score", *METRICS)
#: A score fraction times POINTS is the score in points; SCORE_RANGE is the range of a score in points.
POINTS = 100.0
SCORE_RANGE = (0.0, 100.0)
SEED_BANDS = "mean, 95% CI over seeds"
#: The background of a claim map's point by its verdict (:func:`plot_claim_map`); NOT TESTABLE is hatched, unfilled.
VERDICT_SHADES = {MET: "tab:green", FAILED: "tab:red", UNRESOLVED: "tab:grey", NOT_TESTABLE: "none"}
VERDICT_HATCH = {NOT_TESTABLE: "//"}
#: A measurement that is only a bound is drawn as a triangle pointing where the true value lies.
BOUND_MARKERS = {LOWER_BOUND: "^", UPPER_BOUND: "v"}
#: A positive numeric axis whose points span this factor or more is drawn on a log scale (e.g. 100 to 10,000 Mbit/s).
LOG_SPAN = 100.0


def run_label(folder: str | Path) -> str:
    """A legend label for a run: its method name."""
    return load_config_dict(folder)["method"]


def metric_name(folders: Iterable[str | Path]) -> str:
    """The name of the metric the runs' ``score`` is, for an axis: the metrics their first evaluated rounds carry
    (the evaluation writes the mean of each metric its test set holds), joined by " + " when a test set mixes
    several; "score" when none is recorded."""
    found: list[str] = []
    for folder in folders:
        record = next((r for r in load_rounds(folder) if "score" in r), {})
        found += [m for m in METRICS if m in record and m not in found]
    return " + ".join(METRIC_NAMES[m] for m in found) or "score"


def score_label(folders: Iterable[str | Path], what: str = "", stat: str = SEED_BANDS) -> str:
    """An axis label for the runs' score in points, e.g. "final exact match, points" above "(mean, 95% CI over
    seeds)": ``what`` qualifies the score, ``stat`` (the second line, "" for none) says what the drawn value and
    its bar are."""
    return _with_stat(f"{what} {metric_name(folders)}".strip() + ", points", stat)


def _with_stat(name: str, stat: str) -> str:
    """``name`` with ``stat`` in brackets on a second line (an axis label stays short enough for its axis)."""
    return f"{name}\n({stat})" if stat else name


def score_points(interval: Interval) -> tuple[float, float, float]:
    """A score interval (fractions) as ``(mean, lo, hi)`` in points, the bounds clipped to :data:`SCORE_RANGE`
    (nan bounds stay nan: a single seed has no interval)."""
    lo, hi = np.clip([interval.lo * POINTS, interval.hi * POINTS], *SCORE_RANGE)
    return interval.mean * POINTS, float(lo), float(hi)


def score_bars(intervals: Sequence[Interval]) -> tuple[list[float], list[list[float]] | None]:
    """Bar heights and ``yerr`` for score intervals: means in points and the distances to the clipped bounds
    (:func:`score_points`), ``[[below...], [above...]]`` as ``bar`` and ``errorbar`` take them; ``None`` for the
    error bars when no interval is defined (a single seed)."""
    points = [score_points(iv) for iv in intervals]
    means = [m for m, _, _ in points]
    if not all(iv.defined for iv in intervals):
        return means, None
    return means, [[m - lo for m, lo, _ in points], [hi - m for m, _, hi in points]]


def _scale(y: str) -> float:
    """The factor from a round key's stored value to its plotted value (points for a score)."""
    return POINTS if y in SCORE_KEYS else 1.0


def _bounded(artist, y: str):
    """``artist`` with sticky y edges at the ends of :data:`SCORE_RANGE` when ``y`` is a score, so autoscaling
    stops at 0 or 100 instead of padding the axis past a range the score cannot leave (shared axes included)."""
    if y in SCORE_KEYS:
        artist.sticky_edges.y[:] = SCORE_RANGE
    return artist


def integer_ticks(axis) -> None:
    """Ticks on whole numbers only, for an axis of counts (rounds, clients, experts): ``integer_ticks(ax.xaxis)``."""
    axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 5, 10], integer=True))


def _y_label(folders: Sequence[str | Path], y: str, stat: str) -> str:
    """The y axis label of ``y``: a score names its metric and points, any other key is its own name."""
    if y == "score":
        return score_label(folders, stat=stat)
    return _with_stat(f"{METRIC_NAMES[y]}, points" if y in METRIC_NAMES else y, stat)


def plot_runs(
    folders: Sequence[str | Path],
    *,
    x: str = "round",
    y: str = "score",
    labels: Sequence[str] | None = None,
    ax=None,
    target: float | None = None,
    title: str | None = None,
):
    """Plot ``y`` against ``x`` for each run folder on one axis (a score in points); ``target``: a dashed line at
    that value of ``y`` as the rounds store it (a score as a fraction); returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = list(labels) if labels is not None else [run_label(f) for f in folders]
    factor = _scale(y)
    for folder, label in zip(folders, labels, strict=True):
        xs, ys = curve(folder, x, y)
        if not xs:
            raise ValueError(f"{folder} has no rounds with {y!r} to plot (fix: pick --y among the keys of its "
                             "rounds.jsonl, e.g. score, or finish the run)")
        _bounded(ax.plot(xs, np.asarray(ys) * factor, marker="o", ms=3, label=label)[0], y)
    return _decorate(ax, x, y, _y_label(folders, y, ""), None if target is None else target * factor, title)


def plot_seed_bands(
    groups: dict[str, Sequence[str | Path]],
    *,
    x: str = "round",
    y: str = "score",
    ax=None,
    target: float | None = None,
    title: str | None = None,
):
    """One line per group (a method's runs over seeds): the mean of ``y`` at each evaluation and its 95%
    Student-t band over seeds (a score in points, its band clipped to :data:`SCORE_RANGE`); ``x`` is the mean
    over seeds (simulated time differs from seed to seed); ``target`` as in :func:`plot_runs`."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    factor = _scale(y)
    for label, folders in groups.items():
        curves = [curve(f, x, y) for f in folders]
        n = min(len(c[0]) for c in curves)
        xs = np.mean([c[0][:n] for c in curves], axis=0)
        intervals = [mean_ci([c[1][i] for c in curves]) for i in range(n)]
        means = np.array([iv.mean for iv in intervals]) * factor
        line = _bounded(ax.plot(xs, means, marker="o", ms=3, label=f"{label} (n={len(folders)})")[0], y)
        if len(folders) > 1:
            band = np.array([[iv.lo, iv.hi] for iv in intervals]) * factor
            if y in SCORE_KEYS:
                band = np.clip(band, *SCORE_RANGE)
            _bounded(ax.fill_between(xs, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.18, lw=0), y)
    every = [f for folders in groups.values() for f in folders]
    return _decorate(ax, x, y, _y_label(every, y, SEED_BANDS), None if target is None else target * factor, title)


def measured_vs_predicted(folder: str | Path) -> list[dict[str, float]]:
    """One row per client update that measured itself (CUDA runs, see
    :func:`fedmoe.engines.inprocess.measured_update`): ``round``, ``client``, predicted and measured peak memory
    (bytes) and local-work seconds (predicted: the cost model's compute plus host-device time on the client's
    fleet device, so compare with a fleet describing the GPU used)."""
    rows = []
    for record in load_rounds(folder):
        for client, diag in record.get("client_log", {}).items():
            if "measured_peak_memory" not in diag:
                continue
            parts = record["client_time_parts"][client]
            rows.append({"round": record["round"], "client": int(client),
                         "memory_predicted": float(record["peak_memory"][client]),
                         "memory_measured": float(diag["measured_peak_memory"]),
                         "seconds_predicted": float(parts["compute"] + parts["host_device"]),
                         "seconds_measured": float(diag["measured_seconds"])})
    return rows


def plot_measured_vs_predicted(folder: str | Path, *, title: str | None = None):
    """Two scatter panels, peak memory (GiB) and local-work seconds, predicted by the cost model (x) against
    measured on the GPU (y), one point per client update, with the y = x line; returns the figure."""
    rows = measured_vs_predicted(folder)
    if not rows:
        raise ValueError(f"{folder} has no measured client updates: measurements are recorded on CUDA only "
                         "(fix: run with --set device=cuda on a GPU machine)")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, unit, scale in ((axes[0], "memory", "peak memory (GiB)", 2.0**30),
                                 (axes[1], "seconds", "client seconds", 1.0)):
        xs = np.array([r[f"{key}_predicted"] for r in rows]) / scale
        ys = np.array([r[f"{key}_measured"] for r in rows]) / scale
        ax.scatter(xs, ys, s=14, label=f"{len(rows)} client updates")
        top = float(max(xs.max(), ys.max())) * 1.05 or 1.0
        ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="measured = predicted")
        ax.set_xlabel(f"predicted {unit}")
        ax.set_ylabel(f"measured {unit}")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title or f"{run_label(folder)}: cost model vs measured")
    fig.tight_layout()
    return fig


def plot_failures(folder: str | Path, *, ax=None, title: str | None = None):
    """Clients that failed in each training round of a run (its ``failures``: errors, drop-outs, no reply,
    rejected updates) as bars, with the number of retries of the round above its bar; returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.0))
    rounds = [r for r in load_rounds(folder) if r["round"] > 0]
    xs = [r["round"] for r in rounds]
    heights = [len(r.get("failures", {})) for r in rounds]
    ax.bar(xs, heights, color="tab:red")
    for x, height, r in zip(xs, heights, rounds, strict=True):
        if r.get("retries"):
            ax.annotate(f"{r['retries']} retries", (x, height), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("round")
    ax.set_ylabel("failed clients")
    integer_ticks(ax.yaxis)
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax.figure


def _point_spans(xs: Sequence[float], log: bool) -> list[tuple[float, float]]:
    """Each point's stretch of the x axis (in the points' order): halfway to its neighbours, geometrically on a log
    axis; an outer point reaches as far out as in (a single point: half a unit, or half a decade, each way)."""
    t = np.log10(xs) if log else np.asarray(xs, dtype=float)
    order = np.argsort(t)
    gaps = np.diff(t[order])
    half = np.concatenate([gaps[:1], gaps, gaps[-1:]]) / 2 if len(gaps) else np.array([0.5, 0.5])
    spans = [(0.0, 0.0)] * len(t)
    for rank, index in enumerate(order):
        lo, hi = t[index] - half[rank], t[index] + half[rank + 1]
        spans[index] = (float(10.0**lo), float(10.0**hi)) if log else (float(lo), float(hi))
    return spans


def plot_claim_map(rows: Sequence, ax=None, *, title: str | None = None):
    """One claim measured at the points of a setting (``rows``: :class:`fedmoe.report.TargetRow` of one claim map,
    each with ``axis`` / ``axis_value``; ``title``: the map's label, :func:`fedmoe.report.map_label`): x is the
    axis, its points in the rows' order (categorical when they are strings, numeric when numbers, on a log scale
    when positive and spanning :data:`LOG_SPAN` or more); y the measured mean with its 95% interval as an error bar
    (none where it is undefined; a triangle where it is only a bound), in the goal's display units, beside a
    dashed line at the goal's threshold; each point's background is shaded by its verdict (:data:`VERDICT_SHADES`),
    the legend naming the verdicts as the report prints them (with the scale's caveat). Returns the figure."""
    rows = list(rows)
    axes, goals = {r.axis for r in rows}, {r.goal for r in rows}
    if not rows or None in axes or len(axes) > 1 or len(goals) > 1:
        raise ValueError(f"plot_claim_map draws one claim map, rows of one claim at points of one axis (got axes "
                         f"{sorted(map(str, axes))}, {len(goals)} goals); group rows by fedmoe.report.map_label or "
                         "use plot_claim_maps")
    values = [r.axis_value for r in rows]
    if len(set(values)) < len(values):
        raise ValueError(f"claim map {title!r} has two rows at one axis point {values}; each point is measured once")
    categorical = all(isinstance(v, str) for v in values)
    if not categorical and not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"claim map {title!r}: axis points must be all strings or all numbers, got {values}")
    xs = list(range(len(values))) if categorical else [float(v) for v in values]
    log = not categorical and min(xs) > 0 and max(xs) / min(xs) >= LOG_SPAN
    spans = _point_spans(xs, log)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 1.5 + 0.9 * len(rows)), 3.6))
    goal = rows[0].goal
    legend: dict[str, Patch] = {}
    for row, x, (lo, hi) in zip(rows, xs, spans, strict=True):
        shade = {"facecolor": VERDICT_SHADES[row.verdict], "hatch": VERDICT_HATCH.get(row.verdict),
                 "edgecolor": "tab:grey", "alpha": 0.25, "lw": 0}
        ax.axvspan(lo, hi, **shade, zorder=0)
        legend.setdefault(row.labelled_verdict, Patch(**shade, label=row.labelled_verdict))
        iv, marker = row.measured, BOUND_MARKERS.get(row.bound, "o")
        yerr = [[(iv.mean - iv.lo) * goal.scale], [(iv.hi - iv.mean) * goal.scale]] if iv.defined else None
        ax.errorbar([x], [iv.mean * goal.scale], yerr=yerr, fmt=marker, color="black", capsize=3, zorder=3)
    line = ax.axhline(goal.threshold * goal.scale, color="black", ls="--", lw=1, label=f"goal {goal.text()}")
    if log:
        ax.set_xscale("log")
    if categorical:
        ax.set_xticks(xs, values)
    ax.set_xlim(min(lo for lo, _ in spans), max(hi for _, hi in spans))
    ax.set_xlabel(rows[0].axis)
    ax.set_ylabel(goal.unit)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(handles=[line, *legend.values()], frameon=False, fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_claim_maps(rows: Sequence, label: Callable[[object], str]) -> dict[str, Figure]:
    """One figure per claim map among ``rows`` (those with an axis; the rest are skipped), ``{map label: figure}``
    in the rows' order, each drawn by :func:`plot_claim_map`. ``label`` names a row's map: pass
    :func:`fedmoe.report.map_label` (the report sits above this module, which cannot import it)."""
    maps: dict[str, list] = {}
    for row in rows:
        if row.axis is not None:
            maps.setdefault(label(row), []).append(row)
    return {name: plot_claim_map(group, title=name) for name, group in maps.items()}


def _decorate(ax, x: str, y: str, ylabel: str, target: float | None, title: str | None):
    """Labels, the target line (in plotted units), grid, legend; integer ticks on a round axis. A score axis whose
    points all lie at one value (a model that learned nothing, e.g. at the smoke scale) shows the whole score range
    instead of matplotlib's small span around that value, which would tick negative scores (an axis shared with
    others is left to autoscale over all of them)."""
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:g}")
    if y in SCORE_KEYS and ax.dataLim.height == 0 and len(ax.get_shared_y_axes().get_siblings(ax)) == 1:
        ax.set_ylim(*SCORE_RANGE)
    ax.set_xlabel(X_LABELS.get(x, x))
    if x == "round":
        integer_ticks(ax.xaxis)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def save_figure(fig, path: str | Path) -> list[Path]:
    """Save a figure as PNG and PDF (creating the folder); returns the written paths. The PDF carries no creation
    date, so the same data give the same bytes and a re-run on finished results leaves git clean."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = path.with_suffix(".png"), path.with_suffix(".pdf")
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(pdf, dpi=150, bbox_inches="tight", metadata={"CreationDate": None})
    return [png, pdf]

"""Matplotlib figures from run folders: score against rounds and against simulated time, one line per run or
one mean line per method with its 95% band over seeds; the clients that failed each round; the cost
model's predictions against what a CUDA run measured."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from fedmoe.results import curve, load_config_dict, load_rounds
from fedmoe.stats import mean_ci

X_LABELS = {"round": "round", "sim_time": "simulated time (s)", "wall_time": "wall-clock time (s)"}


def run_label(folder: str | Path) -> str:
    """A legend label for a run: its method name."""
    return load_config_dict(folder)["method"]


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
    """Plot ``y`` against ``x`` for each run folder on one axis; returns the figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    labels = list(labels) if labels is not None else [run_label(f) for f in folders]
    for folder, label in zip(folders, labels, strict=True):
        xs, ys = curve(folder, x, y)
        if not xs:
            raise ValueError(f"{folder} has no rounds with {y!r} to plot (fix: pick --y among the keys of its "
                             "rounds.jsonl, e.g. score, or finish the run)")
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    return _decorate(ax, x, y, target, title)


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
    Student-t band over seeds; ``x`` is the mean over seeds (simulated time differs from seed to seed)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, folders in groups.items():
        curves = [curve(f, x, y) for f in folders]
        n = min(len(c[0]) for c in curves)
        xs = np.mean([c[0][:n] for c in curves], axis=0)
        intervals = [mean_ci([c[1][i] for c in curves]) for i in range(n)]
        (line,) = ax.plot(xs, [iv.mean for iv in intervals], marker="o", ms=3, label=f"{label} (n={len(folders)})")
        if len(folders) > 1:
            ax.fill_between(xs, [iv.lo for iv in intervals], [iv.hi for iv in intervals], color=line.get_color(),
                            alpha=0.18, lw=0)
    return _decorate(ax, x, f"{y} (mean, 95% CI over seeds)", target, title)


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
    ax.yaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax.figure


def _decorate(ax, x: str, ylabel: str, target: float | None, title: str | None):
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel(X_LABELS.get(x, x))
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

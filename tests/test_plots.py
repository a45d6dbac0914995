"""Figures from run folders: scores drawn in points on an axis that names the metric, score bands and error bars
clipped to [0, 100], integer ticks on rounds."""

import json
import math

import numpy as np
import pytest
import yaml

from fedmoe.plots import metric_name, plot_runs, plot_seed_bands, score_bars, score_label
from fedmoe.stats import Interval


def _run(folder, seed, scores, metrics=("exact_match",)):
    """A run folder whose evaluated rounds carry ``score`` and the mean of each of ``metrics`` (as the
    evaluation writes them), at rounds 0, 1, 2, ..."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "method": "m"}))
    rows = [{"round": r, "score": s, "sim_time": 1.5 * r, **{m: s for m in metrics}} for r, s in enumerate(scores)]
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_seed_bands_are_points_clipped_to_the_score_range_and_name_the_metric(tmp_path):
    # two seeds that disagree: the Student-t band (t = 12.7 at one degree of freedom) leaves [0, 1] on both sides
    runs = [_run(tmp_path / "a", 0, [0.0, 0.9, 1.0]), _run(tmp_path / "b", 1, [0.0, 0.3, 0.9])]
    ax = plot_seed_bands({"m": runs}).axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.0, 60.0, 95.0])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == 0.0 and band.max() == 100.0 and ax.get_ylim() == (0.0, 100.0)  # no padding past the range
    assert ax.get_ylabel() == "exact match, points\n(mean, 95% CI over seeds)"
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [round(t) for t in ticks] and len(ticks) == 3


def test_plot_runs_scales_the_target_and_leaves_other_keys_as_they_are(tmp_path):
    run = _run(tmp_path / "a", 0, [0.2, 0.4])
    ax = plot_runs([run], target=0.3).axes[0]
    assert list(ax.lines[0].get_ydata()) == [20.0, 40.0] and list(ax.lines[1].get_ydata()) == [30.0, 30.0]
    ax = plot_runs([run], y="sim_time").axes[0]
    assert list(ax.lines[0].get_ydata()) == [0.0, 1.5] and ax.get_ylabel() == "sim_time"


def test_a_flat_score_curve_shows_the_score_range_not_negative_ticks(tmp_path):
    ax = plot_seed_bands({"m": [_run(tmp_path / "a", 0, [0.0, 0.0]), _run(tmp_path / "b", 1, [0.0, 0.0])]}).axes[0]
    assert ax.get_ylim() == (0.0, 100.0)


def test_metric_name_reads_the_metrics_the_rounds_carry(tmp_path):
    mixed = _run(tmp_path / "mixed", 0, [0.5], metrics=("rouge_l", "exact_match"))
    accuracy = _run(tmp_path / "mc", 0, [0.5], metrics=("mc_accuracy",))
    unnamed = _run(tmp_path / "none", 0, [0.5], metrics=())
    assert metric_name([mixed]) == "ROUGE-L + exact match"
    assert metric_name([accuracy, accuracy]) == "accuracy"
    assert metric_name([unnamed]) == "score"
    assert score_label([accuracy], "final", stat="") == "final accuracy, points"


def test_score_bars_clip_the_interval_and_drop_undefined_ones():
    heights, errors = score_bars([Interval(0.95, 0.8, 1.1, 3), Interval(0.02, -0.05, 0.09, 3)])
    assert heights == pytest.approx([95.0, 2.0])
    assert errors == [pytest.approx([15.0, 2.0]), pytest.approx([5.0, 7.0])]
    heights, errors = score_bars([Interval(0.4, math.nan, math.nan, 1)])
    assert heights == pytest.approx([40.0]) and errors is None

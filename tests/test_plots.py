"""Figures from run folders: scores drawn in points on an axis that names the metric, score bands and error bars
clipped to [0, 100], integer ticks on rounds."""

import json
import math

import numpy as np
import pytest
import yaml
from matplotlib.colors import to_rgba

from fedmoe.plots import (
    VERDICT_SHADES,
    metric_name,
    plot_claim_map,
    plot_claim_maps,
    plot_runs,
    plot_seed_bands,
    score_bars,
    score_label,
)
from fedmoe.report import Precondition, TargetRow, map_label
from fedmoe.stats import LOWER_BOUND, Goal, Interval


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


PARITY = Goal(">", -0.02)  # FLUX within 2 points of FMD


def _map_row(point, measured, **extra):
    return TargetRow("FLUX", f"FLUX within 2 points of FMD ({point}, 24 rounds)", measured, PARITY, "cmd",
                     axis="suite", axis_value=point, **extra)


def test_a_claim_map_draws_each_point_in_goal_units_over_its_verdicts_shade():
    rows = [_map_row("dolly", Interval(0.01, 0.005, 0.015, 3)),  # wholly above -2 points: MET
            _map_row("gsm", Interval(-0.05, -0.07, -0.03, 3)),  # wholly below: FAILED
            _map_row("mmlu", Interval(-0.02, -0.04, 0.01, 3), run_scale="smoke")]  # straddles: UNRESOLVED
    assert [r.verdict for r in rows] == ["MET", "FAILED", "UNRESOLVED"]
    ax = plot_claim_map(rows, title=map_label(rows[0])).axes[0]
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 3
    assert [seg[:, 1].tolist() for c in bars for seg in c.lines[2][0].get_segments()] == [
        pytest.approx([0.5, 1.5]), pytest.approx([-7.0, -3.0]), pytest.approx([-4.0, 1.0])]  # points, not fractions
    (threshold,) = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert list(threshold.get_ydata()) == [-2.0, -2.0] and threshold.get_label() == "goal > -2.0 points"
    assert [p.get_facecolor() for p in ax.patches] == [to_rgba(VERDICT_SHADES[v], 0.25)
                                                      for v in ("MET", "FAILED", "UNRESOLVED")]
    assert [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches] == [(-0.5, 0.5), (0.5, 1.5), (1.5, 2.5)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["dolly", "gsm", "mmlu"]
    assert ax.get_title() == "FLUX within 2 points of FMD (24 rounds)" and ax.get_ylabel() == "points"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["goal > -2.0 points", "MET", "FAILED", "UNRESOLVED (smoke: plumbing check)"]


def test_a_numeric_claim_map_spans_decades_on_a_log_axis_and_hatches_what_is_not_testable():
    ratio = Goal(">", 2.0, "ratio", 2)
    failed = Precondition("premise", Interval(-0.05, -0.08, -0.02, 3), Goal(">", 0.0))
    rows = [TargetRow("FLUX", f"speedup ({mbit:g} Mbit/s)", iv, ratio, "cmd", axis="network Mbit/s",
                      axis_value=mbit, **extra)
            for mbit, iv, extra in ((100.0, Interval(3.0, 2.5, 3.5, 3), {"bound": LOWER_BOUND}),
                                    (10000.0, Interval(1.0, math.nan, math.nan, 1), {}),
                                    (1000.0, Interval(2.5, 2.1, 2.9, 3), {"preconditions": (failed,)}))]
    ax = plot_claim_map(rows).axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim() == pytest.approx((10**1.5, 10**4.5))
    edges = [x for p in ax.patches for x in (p.get_x(), p.get_x() + p.get_width())]
    assert edges == pytest.approx([10**1.5, 10**2.5, 10**3.5, 10**4.5, 10**2.5, 10**3.5])  # row order, mid-decades
    assert [p.get_hatch() for p in ax.patches] == [None, None, "//"] and ax.patches[2].get_facecolor()[3] == 0.0
    assert len([c for c in ax.containers if c.has_yerr]) == 2  # one seed: no interval, no error bar
    assert ax.containers[0].lines[0].get_marker() == "^"  # a lower bound points up
    with pytest.raises(ValueError, match="one claim map.*map_label"):
        plot_claim_map([*rows, _map_row("gsm", Interval(0.0, -0.01, 0.01, 3))])


def test_claim_maps_give_one_figure_per_map_and_skip_rows_without_an_axis():
    rows = [_map_row("dolly", Interval(0.01, 0.0, 0.02, 3)), _map_row("gsm", Interval(0.01, 0.0, 0.02, 3)),
            TargetRow("FLUX", "FLUX overhead", Interval(0.01, 0.0, 0.02, 3), Goal("<", 0.05), "cmd"),
            TargetRow("FLUX", "eps ramp (0.3)", Interval(0.01, 0.0, 0.02, 3), Goal(">", 0.0), "cmd", axis="fixed eps",
                      axis_value=0.3)]
    figures = plot_claim_maps(rows, map_label)
    assert list(figures) == ["FLUX within 2 points of FMD (24 rounds)", "eps ramp"]
    assert [len(f.axes[0].patches) for f in figures.values()] == [2, 1]

"""The FLUX study's pure parts on hand-made run folders: the equal horizon, time to target with censoring, the
speedup's bounds and geometric-mean interval, and the targets' verdicts."""

import json
import math

import pytest
from scipy import stats as sps

from fedmoe.config import save_config
from fedmoe.stats import FAILED, MET, UNRESOLVED, Interval
from fedmoe.studies import flux as fx

N_ITEMS = 40


def _run(root, method, seed, points, *, suite="gsm", profile=0.0):
    """A finished run folder by hand: the real smoke config; ``points`` are (sim_time, score) per round, round 0
    first; each training round lasts 100 s on client 0 plus the server's seconds, ``profile`` of it profiling."""
    cfg = fx.flux_config(method, suite, scale="smoke", seed=seed)
    folder = root / f"{method}-{suite}-{seed}"
    folder.mkdir()
    save_config(cfg, folder / "config.yaml")
    server = cfg.cost.server_seconds
    records = []
    for r, (t, score) in enumerate(points):
        hits = round(score * N_ITEMS)
        rec = {"round": r, "sim_time": t, "wall_time": float(r), "score": score,
               "item_scores": [1.0] * hits + [0.0] * (N_ITEMS - hits)}
        if r:
            rec.update(round_seconds=100.0 + server, client_seconds={"0": 100.0},
                       client_log={"0": {"profile_sim_seconds": profile}}, bytes_up={"0": 10},
                       peak_memory={"0": 1}, devices={"0": "rtx-3090-24gb"})
        records.append(rec)
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_time_to_target_reads_the_curve_up_to_the_horizon_and_censors(tmp_path):
    run = _run(tmp_path, "flux", 0, [(0, 0.1), (100, 0.3), (200, 0.5), (300, 0.6)])
    assert fx.time_to_target(run, 0.5, 1000) == fx.Time(200.0)
    assert fx.time_to_target(run, 0.5, 150) == fx.Time(150.0, censored=True)  # reached only after the horizon
    assert fx.time_to_target(run, 0.9, 1000) == fx.Time(300.0, censored=True)  # run ends before the horizon
    assert fx.time_to_target(run, 0.05, 1000) == fx.Time(100.0)  # round 0 (the base model) never counts


def test_horizon_is_the_shortest_paper_run_and_ignores_fedit(tmp_path):
    runs = {"flux": _run(tmp_path, "flux", 0, [(0, 0.1), (300, 0.2)]),
            "fmd": _run(tmp_path, "fmd", 0, [(0, 0.1), (900, 0.2)]),
            "fedit-nf4": _run(tmp_path, "fedit-nf4", 0, [(0, 0.1), (50, 0.2)])}
    assert fx.horizon(runs) == 300.0


def test_target_is_base_plus_fraction_of_reference_gain(tmp_path):
    ref = _run(tmp_path, "fmd", 0, [(0, 0.2), (10, 0.4), (20, 0.6)])
    assert fx.target_for(ref) == pytest.approx(0.2 + 0.9 * 0.4)


def test_min_max_and_ratio_keep_censoring_explicit():
    assert fx.fastest([fx.Time(5.0), fx.Time(3.0, True)]) == fx.Time(3.0, True)
    assert fx.fastest([fx.Time(3.0), fx.Time(5.0, True)]) == fx.Time(3.0)
    assert fx.slowest([fx.Time(9.0), fx.Time(3.0, True)]) == fx.Time(9.0, True)
    assert fx.slowest([fx.Time(9.0), fx.Time(3.0)]) == fx.Time(9.0)
    assert fx.ratio(fx.Time(8.0), fx.Time(2.0)) == fx.Ratio(4.0, fx.EXACT)
    assert fx.ratio(fx.Time(8.0, True), fx.Time(2.0)) == fx.Ratio(4.0, fx.LOWER)
    assert fx.ratio(fx.Time(8.0), fx.Time(2.0, True)) == fx.Ratio(4.0, fx.UPPER)
    assert fx.ratio(fx.Time(8.0, True), fx.Time(2.0, True)).kind == fx.UNKNOWN


def test_speedup_interval_is_the_back_transformed_log_t_interval():
    sp = fx.speedup_interval([fx.Ratio(2.0, fx.EXACT), fx.Ratio(8.0, fx.EXACT)])
    # logs ln2, ln8: mean ln4, sem ln2, t_{0.975, 1} = 12.706
    half = sps.t.ppf(0.975, 1) * math.log(2)
    assert sp.interval.mean == pytest.approx(4.0)
    assert sp.interval.lo == pytest.approx(4.0 * math.exp(-half))
    assert sp.interval.hi == pytest.approx(4.0 * math.exp(half))
    assert sp.kind == fx.EXACT
    assert fx.speedup_interval([fx.Ratio(2.0, fx.LOWER), fx.Ratio(8.0, fx.EXACT)]).kind == fx.LOWER
    assert fx.speedup_interval([fx.Ratio(2.0, fx.LOWER), fx.Ratio(8.0, fx.UPPER)]).kind == "mixed"
    unknown = fx.speedup_interval([fx.Ratio(2.0, fx.EXACT), fx.Ratio(math.nan, fx.UNKNOWN)])
    assert unknown.kind == fx.UNKNOWN and not unknown.interval.defined


def test_judge_speedup_concludes_only_what_the_bounds_allow():
    def sp(lo, hi, kind):
        return fx.Speedup(Interval((lo + hi) / 2, lo, hi, 3), kind, ())

    assert fx.judge_speedup(sp(3, 4, fx.EXACT), 2) == MET
    assert fx.judge_speedup(sp(1, 1.5, fx.EXACT), 2) == FAILED
    assert fx.judge_speedup(sp(3, 4, fx.LOWER), 2) == MET
    assert fx.judge_speedup(sp(1, 1.5, fx.LOWER), 2) == UNRESOLVED  # the true speedup may be larger
    assert fx.judge_speedup(sp(1, 1.5, fx.UPPER), 2) == FAILED
    assert fx.judge_speedup(sp(3, 4, fx.UPPER), 2) == UNRESOLVED
    assert fx.judge_speedup(sp(3, 4, "mixed"), 2) == UNRESOLVED


def _grid(tmp_path, flux_profile=0.0):
    """Three seeds on gsm, FLUX's run the shortest paper run (the horizon, 400 s): FLUX reaches the target at
    100-120 s, FMQ at 300 s, FMD at 400 s on seed 0 and after the horizon on seeds 1-2, FMES never, fedit-nf4 at
    50 s; FLUX's final score 1 item of 40 under FMD's on every seed."""
    folders = {}
    for seed in (0, 1, 2):
        j = 0.025 * seed  # seeds differ a little
        paths = {
            "flux": [(0, 0.1), (100 + 10 * seed, 0.56 + j), (200, 0.56 + j), (400, 0.575 + j)],
            "fmd": [(0, 0.1), (200, 0.3), (400 + 50 * seed, 0.55 + j), (600, 0.6 + j)],
            "fmq": [(0, 0.1), (300, 0.55 + j), (900, 0.6)],
            "fmes": [(0, 0.1), (450, 0.2), (900, 0.25)],
            "fedit-nf4": [(0, 0.1), (50, 0.6), (100, 0.7)],
        }
        for m, pts in paths.items():
            folders.setdefault((m, "gsm"), []).append(
                _run(tmp_path, m, seed, pts, profile=flux_profile if m == "flux" else 0.0))
    return folders


def test_suite_result_and_targets_on_a_hand_made_grid(tmp_path):
    folders = _grid(tmp_path, flux_profile=2.0)
    res = fx.suite_result(folders, "gsm")
    assert res.horizons == {0: 400.0, 1: 400.0, 2: 400.0}
    assert res.targets[1] == pytest.approx(0.1 + 0.9 * (0.625 - 0.1))
    assert [res.times["flux"][s] for s in (0, 1, 2)] == [fx.Time(100.0), fx.Time(110.0), fx.Time(120.0)]
    assert res.times["fmd"][0] == fx.Time(400.0)
    assert res.times["fmd"][1] == fx.Time(400.0, censored=True)  # reached at 450 s, after the horizon
    assert res.times["fmes"][2] == fx.Time(400.0, censored=True)
    # best: FMQ (exact) on every seed; slowest: a censored run, so a lower bound
    best, slow = res.speedups["best"], res.speedups["slowest"]
    assert best.kind == fx.EXACT and [r.value for r in best.ratios] == pytest.approx([3.0, 300 / 110, 2.5])
    assert best.interval.mean == pytest.approx((3.0 * 300 / 110 * 2.5) ** (1 / 3))
    assert slow.kind == fx.LOWER and [r.value for r in slow.ratios] == pytest.approx([4.0, 400 / 110, 400 / 120])
    assert res.speedups["fedit-nf4"].kind == fx.EXACT and res.speedups["fedit-nf4"].interval.mean < 1

    rows = {r.target.split(" (")[0]: r for r in fx.targets(folders)}
    assert list(rows) == ["FLUX final score within 2 points of FMD", "time-to-accuracy speedup over the best of "
                          "FMD/FMQ/FMES", "time-to-accuracy speedup over the slowest of them",
                          "FLUX overhead <= 5% of a round"]
    assert rows["FLUX final score within 2 points of FMD"].measured.mean == pytest.approx(-0.025)
    assert rows["time-to-accuracy speedup over the best of FMD/FMQ/FMES"].verdict == MET  # lo ~2.18 > 2
    slowest = rows["time-to-accuracy speedup over the slowest of them"]
    assert slowest.measured.hi < 4.75 and slowest.verdict == UNRESOLVED  # below the goal, but only a lower bound
    overhead = rows["FLUX overhead <= 5% of a round"]
    server = fx.flux_config("flux", "gsm", scale="smoke").cost.server_seconds
    assert overhead.measured.mean == pytest.approx(2.0 / (100.0 + server))
    assert overhead.verdict == MET
    names = [r.method for r in fx.head_to_head(folders)]
    assert names == ["flux [gsm]", "fmd [gsm]", "fmq [gsm]", "fmes [gsm]", "fedit-nf4 (outside the paper) [gsm]"]


def test_suite_result_refuses_unpaired_seeds(tmp_path):
    folders = _grid(tmp_path)
    folders["fmd", "gsm"] = folders["fmd", "gsm"][:2]
    with pytest.raises(ValueError, match="same seeds"):
        fx.suite_result(folders, "gsm")

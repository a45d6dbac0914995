"""The FLUX study's pure parts on hand-made run folders: the equal horizon, time to target with censoring, the
speedup's bounds and geometric-mean interval, and the targets' verdicts."""

import json
import math

import pytest
from scipy import stats as sps

from fedmoe.config import save_config
from fedmoe.stats import FAILED, MET, UNRESOLVED, Goal, Interval
from fedmoe.studies import flux as fx

N_ITEMS = 40


UPLOAD_BYTES = 1.25e8  # 1 Gbit: 0.1 s at the recorded 10 Gbit/s, 10 s at 100 Mbit/s


def _run(root, method, seed, points, *, suite="gsm", profile=0.0, round_seconds=None, name=None):
    """A finished run folder by hand: the real smoke config; ``points`` are (sim_time, score) per round, round 0
    first; each training round lasts 100 s on client 0 plus the server's seconds (or ``round_seconds``),
    ``profile`` of it profiling; ``name`` tells apart folders of one method and seed (variants of a study)."""
    cfg = fx.flux_config(method, suite, scale="smoke", seed=seed)
    folder = root / f"{name or method}-{suite}-{seed}"
    folder.mkdir()
    save_config(cfg, folder / "config.yaml")
    server = cfg.cost.server_seconds
    records = []
    for r, (t, score) in enumerate(points):
        hits = round(score * N_ITEMS)
        rec = {"round": r, "sim_time": t, "wall_time": float(r), "score": score,
               "item_scores": [1.0] * hits + [0.0] * (N_ITEMS - hits)}
        if r:
            rec.update(round_seconds=100.0 + server if round_seconds is None else round_seconds, client_seconds={"0": 100.0},
                       client_log={"0": {"profile_sim_seconds": profile}}, bytes_up={"0": UPLOAD_BYTES},
                       bytes_down={"0": 0}, overlap=0.0, wait_seconds=0.0,
                       client_time_parts={"0": {"compute": 100.0 - 0.1, "forward": 0.0, "host_device": 0.0,
                                                "download": 0.0, "upload": 0.1, "total": 100.0}},
                       peak_memory={"0": 1}, devices={"0": "rtx-3090-24gb"})
        records.append(rec)
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_runs_are_repriced_on_another_network_with_the_same_rounds_and_scores(tmp_path):
    """Each round uploads 1 Gbit: at the recorded 10 Gbit/s nothing moves; at 100 Mbit/s every round takes
    9.9 s longer (10 s of upload instead of 0.1 s), so time to target moves and the scores stay."""
    run = _run(tmp_path, "flux", 0, [(0, 0.1), (100, 0.3), (200, 0.5), (300, 0.6)])
    assert [r["sim_time"] for r in fx.timed_rounds(run, 10000.0)] == pytest.approx([0, 100, 200, 300])
    slow = fx.timed_rounds(run, 100.0)
    assert [r["sim_time"] for r in slow] == pytest.approx([0, 109.9, 219.8, 329.7])
    assert [r["score"] for r in slow] == [0.1, 0.3, 0.5, 0.6]
    assert fx.time_to_target(run, 0.5, 1000, network_mbit=100.0).value == pytest.approx(219.8)


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


def test_speedups_are_judged_only_as_far_as_their_bounds_allow():
    goal = Goal(">", 2.0, "ratio")

    def judged(lo, hi, kind):
        sp = fx.Speedup(Interval((lo + hi) / 2, lo, hi, 3), kind, ())
        return goal.judge(sp.interval, fx.speedup_bound(sp))

    assert judged(3, 4, fx.EXACT) == MET
    assert judged(1, 1.5, fx.EXACT) == FAILED
    assert judged(3, 4, fx.LOWER) == MET
    assert judged(1, 1.5, fx.LOWER) == UNRESOLVED  # the true speedup may be larger
    assert judged(1, 1.5, fx.UPPER) == FAILED
    assert judged(3, 4, fx.UPPER) == UNRESOLVED
    assert judged(3, 4, "mixed") == UNRESOLVED


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

    all_rows = fx.targets(folders)
    rows = {r.target.split(" (")[0]: r for r in all_rows}
    assert list(rows) == ["FLUX final score within 2 points of FMD", "time-to-accuracy speedup over the best of "
                          "FMD/FMQ/FMES", "time-to-accuracy speedup over the slowest of them",
                          "FLUX overhead <= 5% of a round",
                          "time-to-accuracy speedup over the best of FMD/FMQ/FMES, by network",
                          "time-to-accuracy speedup over the slowest of them, by network"]
    network = [r for r in all_rows if r.axis == "network Mbit/s"]
    assert [r.axis_value for r in network] == [*fx.NETWORK_MBIT] * 2
    at_recorded = next(r for r in network if r.claim == "speedup-best-network" and r.axis_value == 10000.0)
    assert at_recorded.measured == res.speedups["best"].interval  # the recorded network: nothing re-priced
    assert rows["FLUX final score within 2 points of FMD"].measured.mean == pytest.approx(-0.025)
    assert rows["time-to-accuracy speedup over the best of FMD/FMQ/FMES"].verdict == MET  # lo ~2.18 > 2
    slowest = rows["time-to-accuracy speedup over the slowest of them"]
    assert slowest.measured.hi < 4.75 and slowest.verdict == UNRESOLVED  # below the goal, but only a lower bound
    overhead = rows["FLUX overhead <= 5% of a round"]
    server = fx.flux_config("flux", "gsm", scale="smoke").cost.server_seconds
    assert overhead.measured.mean == pytest.approx(2.0 / (100.0 + server))
    assert overhead.verdict == MET
    rows = fx.head_to_head(folders)
    assert [r.method for r in rows] == ["flux", "fmd", "fmq", "fmes", "fedit-nf4 (outside the paper)"]
    assert {r.benchmark.split(",")[0] for r in rows} == {"gsm"}


def test_target_rows_name_the_commands_that_regenerate_their_suite(tmp_path):
    """The headline suite comes from the notebook's defaults; any other suite is a side study the notebook writes
    only when told to run that suite alone."""
    folders = _grid(tmp_path)
    assert {r.command for r in fx.targets(folders)} == {
        "python -m fedmoe.studies flux --suites gsm  (or notebooks/flux/01_time_to_accuracy.ipynb)"}
    as_mmlu = {(m, "mmlu"): fs for (m, _), fs in folders.items()}
    assert {r.command for r in fx.targets(as_mmlu, "mmlu")} == {
        "python -m fedmoe.studies flux --suites mmlu  (or notebooks/flux/01_time_to_accuracy.ipynb with "
        "suites=[mmlu])"}


def test_eps_targets_pair_the_ramp_with_each_fixed_eps(tmp_path):
    """Ramp 24/40 items on every seed; fixed 0.3 20/40 (the ramp leads by 4 items, 10 points, on each seed:
    MET); fixed 0.7 the same items as the ramp (a zero difference decides nothing: UNRESOLVED)."""
    def runs(name, score):
        return [_run(tmp_path, "flux", s, [(0, 0.0), (100, score)], name=name) for s in (0, 1, 2)]
    rows = fx.eps_targets(runs("ramp", 0.6), {0.7: runs("fixed-0.7", 0.6), 0.3: runs("fixed-0.3", 0.5)})
    assert [r.target for r in rows] == ["ramp eps schedule beats fixed eps (0.3)",
                                        "ramp eps schedule beats fixed eps (0.7)"]
    assert [r.axis_value for r in rows] == [0.3, 0.7]
    assert rows[0].measured.mean == pytest.approx(0.1) and rows[0].verdict == MET
    assert rows[1].measured.mean == 0.0 and rows[1].verdict == UNRESOLVED
    assert {r.seeds for r in rows} == {3}


def test_scalability_rows_pair_round_times_by_seed(tmp_path):
    """FLUX's round 10 s on every seed, FMD's 20/22/24 s: ratios 2.0/2.2/2.4, mean 2.2, t interval over seeds."""
    runs = {("flux", 10): [_run(tmp_path, "flux", s, [(0, 0.0), (10, 0.1)], round_seconds=10.0) for s in (0, 1, 2)],
            ("fmd", 10): [_run(tmp_path, "fmd", s, [(0, 0.0), (20, 0.1)], round_seconds=20.0 + 2 * s)
                          for s in (0, 1, 2)]}
    (row,) = fx.scalability_targets(runs)
    half = sps.t.ppf(0.975, 2) * 0.2 / math.sqrt(3)
    assert row.measured.mean == pytest.approx(2.2)
    assert (row.measured.lo, row.measured.hi) == pytest.approx((2.2 - half, 2.2 + half))
    assert row.verdict == MET and row.target.endswith("(10 participating clients)") and row.axis_value == 10
    runs["fmd", 10] = runs["fmd", 10][:2]
    with pytest.raises(ValueError, match="10 clients: flux and fmd needs the same seeds.*run the missing seeds first"):
        fx.round_time_ratios(runs)


def test_suite_result_refuses_unpaired_seeds(tmp_path):
    folders = _grid(tmp_path)
    folders["fmd", "gsm"] = folders["fmd", "gsm"][:2]
    with pytest.raises(ValueError, match="same seeds"):
        fx.suite_result(folders, "gsm")


def test_repriced_round_matches_a_hand_computed_round():
    """Two clients, server 1 s, no overlap: the slowest client's total with its transfers re-priced, plus S;
    a 30 s retry penalty recorded in round_seconds survives the re-pricing."""
    def parts(compute, up, down):
        return {"compute": compute, "forward": 0.0, "host_device": 0.0, "download": down, "upload": up,
                "total": compute + up + down, "host": 0.0}

    record = {"client_time_parts": {"0": parts(10.0, 4.0, 1.0), "1": parts(12.0, 1.0, 1.0)},
              "bytes_up": {"0": 400, "1": 100}, "bytes_down": {"0": 50, "1": 50},
              "overlap": 0.0, "wait_seconds": 0.0, "round_seconds": 15.0 + 1.0 + 30.0}
    assert fx.repriced_round_seconds(record, 1.0) == pytest.approx(46.0)
    # uplink 10 B/s, downlink 50 B/s: client 0 = 10 + 40 + 1 = 51 s, client 1 = 12 + 10 + 1 = 23 s
    assert fx.repriced_round_seconds(record, 1.0, net_up=10.0, net_down=50.0) == pytest.approx(51.0 + 1.0 + 30.0)


def test_bandwidth_sweep_reprices_a_real_flux_run_exactly(tmp_path):
    """At the fleet's own link speed the re-priced rounds equal the recorded ones (stale-profiling overlap
    included); a slower uplink never shortens a round."""
    from fedmoe.fl.devices import DC_NET, MBIT_S
    from fedmoe.results import load_rounds

    folder = fx.run_flux("flux", out_dir=tmp_path, scale="smoke", overrides={"fed.rounds": 2})
    rounds = [r for r in load_rounds(folder) if r["round"] > 0]
    assert any(r["overlap"] > 0 for r in rounds[1:])  # stale profiling hides work from round 2 on
    server = fx.flux_config("flux", scale="smoke").cost.server_seconds
    for rec in rounds:
        assert fx.repriced_round_seconds(rec, server, net_up=DC_NET, net_down=DC_NET) == pytest.approx(
            rec["round_seconds"], rel=1e-12)
    sweep = fx.bandwidth_sweep({"flux": [folder]}, [10, 100, DC_NET / MBIT_S])
    secs = [row["round_seconds"] for row in sweep]
    assert secs[0] > secs[1] > secs[2]
    assert secs[2] == pytest.approx(sum(r["round_seconds"] for r in rounds) / len(rounds))


def _merge_rows(seed, errors):
    """Merge-ablation rows of one seed: ``errors`` maps a variant ``budget/weights`` to its error per client."""
    rows = []
    for variant, per_client in errors.items():
        budget, weights = variant.split("/")
        rows += [{"seed": seed, "client": c, "budget": budget, "weights": weights, "drop": False, "output_error": e}
                 for c, e in enumerate(per_client)]
    return rows


def test_merge_reductions_average_clients_within_a_seed_then_take_a_t_interval_over_seeds():
    rows = []
    for seed, la in ((0, [1.0, 3.0]), (1, [2.0, 2.0]), (2, [1.0, 1.0])):
        rows += _merge_rows(seed, {"layer_aware/freq_attention": la, "uniform/freq_attention": [4.0, 4.0],
                                   "one_per_layer/freq_attention": [8.0, 8.0], "layer_aware/frequency": [2.0, 2.0]})
    red = fx.merge_reductions(rows)
    per_seed = [1 - 2 / 4, 1 - 2 / 4, 1 - 1 / 4]  # client means 2, 2, 1 against uniform's 4
    half = sps.t.ppf(0.975, 2) * sps.sem(per_seed)
    got = red["layer-aware vs uniform budget"]
    assert got.mean == pytest.approx(sum(per_seed) / 3) and got.hi - got.mean == pytest.approx(half)
    assert red["frequency x attention vs frequency-only weights"].mean == pytest.approx((0 + 0 + 0.5) / 3)


def _diag_run(root, name, seed, round_seconds, stale_error):
    cfg = fx.flux_config("flux", scale="smoke", seed=seed)
    folder = root / name
    folder.mkdir()
    save_config(cfg, folder / "config.yaml")
    recs = [{"round": 0, "sim_time": 0.0}] + [
        {"round": r, "sim_time": r * round_seconds, "round_seconds": round_seconds,
         "server": {"stale_error": stale_error, "profile_error": 0.1, "merge_error": 0.2}} for r in (1, 2)]
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def test_stale_profiling_effect_pairs_seeds_and_judges_both_targets(tmp_path):
    stale = [_diag_run(tmp_path, f"s{s}", s, 70.0 + s, 0.01) for s in range(3)]
    fresh = [_diag_run(tmp_path, f"f{s}", s, 100.0, 0.0) for s in range(3)]
    effect = fx.stale_profiling_effect(stale, fresh)
    assert effect["round_time_saving"].mean == pytest.approx(1 - 71 / 100)
    rows = fx.ablation_targets(_merge_rows(0, {"layer_aware/freq_attention": [1.0], "uniform/freq_attention": [2.0],
                                               "one_per_layer/freq_attention": [3.0],
                                               "layer_aware/frequency": [1.5]}), stale, fresh)
    verdicts = {r.target: r.verdict for r in rows}
    assert verdicts["stale profiling cuts round time"] == MET
    assert verdicts["stale profiling adds < 2 points of profiling error"] == MET  # 1 point on every seed
    assert verdicts["layer-aware vs uniform budget: lower merge output error"] == UNRESOLVED  # one seed
    with pytest.raises(ValueError, match=r"same seeds on every side; got \[0, 1, 2\] and \[0, 1\]"):
        fx.stale_profiling_effect(stale, fresh[:2])


def test_budget_resolution_rounds_each_devices_priced_share_down_to_whole_experts():
    """Each device's tuned experts are floor(priced share x experts) of the candidate model (at least one), the
    merged slots at least one per layer, and the error is the tuned share against the priced one."""
    from fedmoe.fl.federation import Federation

    fed = Federation.from_config(fx.flux_config("flux", scale="smoke"))
    rows = fx.budget_resolution(fed, experts_per_layer=(4, 32))
    devices = {d.name for d in fed.devices}
    assert {r["device"] for r in rows} == devices and len(rows) == 2 * len(devices)
    layers = rows[0]["experts"] // rows[0]["experts_per_layer"]
    for r in rows:
        n = r["experts"]
        assert n == layers * r["experts_per_layer"]
        assert r["tune"] == max(1, math.floor(r["priced_tune_share"] * n + 1e-9))
        assert layers <= r["slots"] <= n - r["tune"]
        assert r["tune_share_error"] == pytest.approx(r["tune"] / n / r["priced_tune_share"] - 1)
    by_size = {(r["device"], r["experts_per_layer"]): abs(r["tune_share_error"]) for r in rows}
    assert all(by_size[d, 32] <= by_size[d, 4] for d in devices)  # finer experts never round worse here


def test_scalability_grid_runs_every_size_in_one_parallel_call(tmp_path, monkeypatch):
    from fedmoe.studies import grid

    calls = []

    def fake_run_configs(configs, *, out_dir, jobs=None, progress=True):
        calls.append([(c.method, c.fed.num_clients, c.fed.clients_per_round, c.fed.rounds, c.seed) for c in configs])
        return [tmp_path / f"{c.method}-{c.fed.num_clients}-{c.seed}" for c in configs]

    monkeypatch.setattr(grid, "run_configs", fake_run_configs)
    runs = fx.run_scalability([4, 6], out_dir=tmp_path, scale="smoke", seeds=(0, 1), overrides={"fed.rounds": 3})
    assert runs == {(m, n): [tmp_path / f"{m}-{n}-{s}" for s in (0, 1)] for n in (4, 6) for m in ("flux", "fmd")}
    assert calls == [[(m, n, n, 3, s) for n in (4, 6) for m in ("flux", "fmd") for s in (0, 1)]]

"""The FFT-MoE study's pure parts: the grid it builds, the budget match, and the numbers it reads from run folders
(retention, load CV, per-client loads, targets) against hand-made run folders."""

import json
import math

import numpy as np
import pytest

from fedmoe.config import save_config
from fedmoe.fl.pricing import lora_params
from fedmoe.methods.fftmoe.budget import adapter_params
from fedmoe.stats import FAILED, MET, UNRESOLVED, Interval
from fedmoe.studies import fftmoe as st
from fedmoe.studies.evidence import run_score

SEEDS = (0, 1, 2)


def test_grid_has_every_method_split_and_seed_once():
    grid = st.configs("smoke", SEEDS)
    main = {(v, s) for v, s in grid if v in st.METHODS}
    assert main == {(m, s) for m in ("fftmoe", "fedit", "hetlora") for s in
                    ("iid", "alpha10", "alpha1", "alpha0.3", "alpha0.1", "pathological")}
    assert {s for v, s in grid if v == st.NO_AUX} == {"iid", "alpha0.1"}
    assert {v for v, _ in grid if v.startswith("fftmoe-k")} == {"fftmoe-k1", "fftmoe-k2", "fftmoe-k4"}
    for runs in grid.values():
        assert [c.seed for c in runs] == list(SEEDS)
    digests = [c.digest() for runs in grid.values() for c in runs]
    assert len(digests) == len(set(digests)) == 23 * len(SEEDS)


def test_cells_set_split_method_and_variant_options():
    cfg = st.cell_config("hetlora", "alpha0.3", "smoke")
    assert (cfg.method, cfg.data.partition, cfg.data.alpha) == ("hetlora", "dirichlet", 0.3)
    assert cfg.method_args == st.BASELINE_ARGS["hetlora"]
    assert st.cell_config("fedit", "pathological", "smoke").data.partition == "pathological"
    assert st.cell_config(st.NO_AUX, "iid", "smoke").method_args["aux_loss"] is False
    assert st.cell_config("fftmoe", "iid", "smoke").method_args.get("aux_loss", True) is True
    k2 = st.cell_config("fftmoe-k2", "alpha1", "smoke")
    assert k2.method_args["top_k"] == 2 and k2.method_args["tiers"] == [0] * k2.fed.num_clients
    assert "tiers" not in st.cell_config("fftmoe", "alpha1", "smoke").method_args  # mixed: tiers from devices
    with pytest.raises(KeyError, match="unknown split"):
        st.cell_config("fftmoe", "alpha0.5", "smoke")
    with pytest.raises(KeyError, match="unknown variant"):
        st.cell_config("fftmoe-big", "iid", "smoke")


def test_bottleneck_matches_fedit_trainable_params():
    cfg = st.cell_config("fftmoe", "iid", "default")  # tiny Mixtral: d=128, 4 layers; adapter M=8
    b, fedit = st.matched_bottleneck(cfg, 8)
    # FedIT rank 8 per layer: 8 experts x (gate_up 8*(128+256) + down 8*(128+128)), q 8*(128+128), v 8*(128+2*32)
    assert fedit == 4 * (8 * (8 * 384 + 8 * 256) + 8 * 256 + 8 * 192) == 178_176
    assert b == 21 and cfg.method_args["bottleneck"] == 21  # 4*8*(128 + 2*128*21) = 176,128: the closest b
    arch = st.base_architecture(cfg)
    gaps = {w: abs(adapter_params(arch, 8, w, 4).total - fedit) for w in (20, 21, 22)}
    assert min(gaps, key=gaps.get) == 21
    assert st.trainable_params(cfg) == 176_128
    assert st.trainable_params(st.cell_config("fedit", "iid", "default")) == lora_params(arch, 8, attention=True).total


def _run_folder(root, variant, split, seed, scores, *, items=None, load_cv=None, loads=None):
    """A finished run folder by hand: the cell's real config, one record per round with a score (and optional
    per-item scores, client load CVs and adapter loads)."""
    cfg = st.cell_config(variant, split, "smoke")
    cfg.seed = seed
    folder = root / f"{variant}-{split}-{seed}"
    folder.mkdir()
    save_config(cfg, folder / "config.yaml")
    records = []
    for r, score in enumerate(scores):
        rec = {"round": r, "score": score, "sim_time": 10.0 * r, "wall_time": float(r),
               "bytes_up": {"0": 100} if r else {}}
        if items is not None:
            rec["item_scores"] = items[r]
        if r and load_cv is not None:
            rec["client_log"] = {str(c): {"load_cv": v, "adapter_load": (loads or {}).get((r, c), [[1, 1]])}
                                   for c, v in enumerate(load_cv[r - 1])}
        records.append(rec)
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_retention_is_a_per_seed_ratio_paired_by_seed(tmp_path):
    iid = [_run_folder(tmp_path, "fedit", "iid", s, [0.0, v]) for s, v in zip(SEEDS, (0.5, 0.4, 0.8), strict=True)]
    hard = [_run_folder(tmp_path, "fedit", "alpha0.1", s, [0.0, v]) for s, v in zip(SEEDS, (0.25, 0.3, 0.2),
                                                                                     strict=True)]
    ratios = st.retention_per_seed(hard[::-1], iid)  # order of folders does not matter: paired by seed
    assert ratios == pytest.approx([0.5, 0.75, 0.25])
    interval = st.retention({("fedit", "alpha0.1"): hard, ("fedit", "iid"): iid}, "fedit")
    assert interval.mean == pytest.approx(0.5) and interval.n == 3
    # Student t, 2 degrees of freedom: 0.5 +- 4.3027 * 0.25 / sqrt(3)
    assert interval.hi - interval.mean == pytest.approx(4.302653 * 0.25 / math.sqrt(3), rel=1e-5)
    with pytest.raises(ValueError, match="same seeds"):
        st.retention_per_seed(hard[:2], iid)
    zero = [_run_folder(tmp_path, "hetlora", "iid", 0, [0.0, 0.0])]
    assert math.isnan(st.retention_per_seed([hard[0]], zero)[0])  # a 0 IID score: the ratio is undefined
    undefined = st.mean_ci_defined([math.nan, math.nan])
    assert math.isnan(undefined.mean) and not undefined.defined and undefined.n == 2
    assert st.mean_ci_defined([0.5, math.nan, 0.7]).mean == pytest.approx(0.6)


def test_load_cv_uses_the_second_half_of_rounds_and_the_reduction_is_paired(tmp_path):
    # 4 training rounds, 2 clients each: the second half is rounds 3 and 4
    on = _run_folder(tmp_path, "fftmoe", "iid", 0, [0, 0, 0, 0, 0.1],
                     load_cv=[[9.0, 9.0], [9.0, 9.0], [0.2, 0.4], [0.1, 0.3]])
    off = _run_folder(tmp_path, "fftmoe-noaux", "iid", 0, [0, 0, 0, 0, 0.1],
                      load_cv=[[0.0, 0.0], [0.0, 0.0], [0.9, 0.7], [0.8, 0.6]])
    assert st.run_load_cv(on) == pytest.approx(0.25)
    assert st.run_load_cv(off) == pytest.approx(0.75)
    assert st.cv_reduction_per_seed([off], [on]) == pytest.approx([0.5])
    with pytest.raises(ValueError, match="no client diagnostics"):
        st.run_load_cv(_run_folder(tmp_path, "fedit", "iid", 0, [0.0, 0.1]))


def test_client_loads_take_each_clients_last_round_summed_over_layers(tmp_path):
    loads = {(1, 0): [[4, 0], [4, 0]], (1, 1): [[1, 1], [1, 1]], (2, 0): [[1, 3], [0, 4]]}
    folder = _run_folder(tmp_path, "fftmoe", "iid", 0, [0, 0, 0.1], load_cv=[[0.1, 0.1], [0.1]], loads=loads)
    got = st.client_loads(folder)
    assert list(got) == [0, 1]
    np.testing.assert_allclose(got[0], [1 / 8, 7 / 8])  # round 2 replaces round 1 for client 0
    np.testing.assert_allclose(got[1], [0.5, 0.5])


def test_targets_and_head_to_head_from_hand_made_runs(tmp_path):
    """FFT-MoE scores every item 1, the baselines half the items (a quarter at alpha 0.1): FFT-MoE leads
    everywhere and keeps more of its IID score; the aux loss lowers the CV by 0.2 + 0.005 * seed."""
    n = 40
    ones, halves, quarters = [1.0] * n, [1.0, 0.0] * (n // 2), [1.0, 0.0, 0.0, 0.0] * (n // 4)
    folders = {}
    for variant, split in st.cells():
        final = ones if variant.startswith("fftmoe") else quarters if split == "alpha0.1" else halves
        items = [halves, final]
        folders[variant, split] = [
            _run_folder(tmp_path, variant, split, s, [float(np.mean(x)) for x in items], items=items,
                        load_cv=[[0.4 + 0.01 * s, 0.4] if variant == st.NO_AUX else [0.2, 0.2]])
            for s in SEEDS]
    assert run_score(folders["fftmoe", "iid"][0]) == 1.0
    rows = st.targets(folders, deployed=False)
    assert len(rows) == len(st.SPLITS) + len(st.BASELINES) + 1 + len(st.AUX_SPLITS)
    by_target = {r.target: r for r in rows}
    lead = by_target["FFT-MoE leads the best baseline (alpha0.1)"]
    assert lead.verdict == MET and lead.measured.mean == pytest.approx(0.75)
    assert "fedit" in lead.note  # ties between baselines: the first one
    assert by_target["FFT-MoE matches the best baseline (iid)"].measured.mean == pytest.approx(0.5)
    retention = by_target["non-IID retention above the baseline's (hetlora)"]
    assert retention.verdict == MET and retention.measured.mean == pytest.approx(1.0 - 0.5)
    cv = by_target["auxiliary loss lowers the expert-load CV"]
    assert cv.verdict == MET and cv.measured.n == 6 and cv.seeds == 3 and cv.measured.mean == pytest.approx(0.205)
    no_loss = by_target["auxiliary loss does not lower the score (iid)"]
    assert no_loss.verdict == MET and no_loss.measured.mean == pytest.approx(0.0)
    h2h = st.head_to_head(folders)
    assert [r.method for r in h2h] == list(st.METHODS)
    assert h2h[0].benchmark.startswith("dolly, dirichlet alpha=1 · ") and h2h[0].columns["trainable params"] > 0


def test_strict_targets_need_the_whole_interval_above_zero():
    lead = next(c for c in st.CLAIMS if c.key == "lead-noniid").goal
    assert lead.judge(Interval(0.03, 0.0, 0.06, 3)) == UNRESOLVED  # touching 0 is no lead
    assert lead.judge(Interval(0.03, 0.001, 0.06, 3)) == MET
    assert lead.judge(Interval(-0.01, -0.02, 0.0, 3)) == UNRESOLVED  # nor a failure: the same rule as every study
    assert lead.judge(Interval(-0.01, -0.02, -0.001, 3)) == FAILED


def test_personalised_scores_cover_every_local_test_item_and_are_cached(tmp_path):
    from fedmoe.engines import run

    cfg = st.cell_config("fftmoe", "alpha1", "smoke")
    folder = run(cfg, out_dir=tmp_path, progress=False)
    result = st.personalised_scores(folder)
    assert sum(row["n"] for row in result["clients"].values()) == cfg.data.n_test  # local splits partition the test set
    for row in result["clients"].values():
        assert 0.0 <= row["personalised"] <= 1.0 and 0.0 <= row["global"] <= 1.0
    assert result["personalised"] == pytest.approx(np.mean([r["personalised"] for r in result["clients"].values()]))
    (folder / st.PERSONALISED_FILE).write_text(json.dumps({**result, "personalised": -1.0}))
    assert st.personalised_scores(folder)["personalised"] == -1.0  # read back, not recomputed
    baseline = run(st.cell_config("fedit", "alpha1", "smoke"), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="is a fedit run; this evaluation needs a fftmoe run"):
        st.personalised_scores(baseline)


def test_long_horizon_check_runs_three_times_longer_and_judges_the_last_two_evaluations(tmp_path):
    """The long check's cells are the main grid's methods on IID and the lead splits, 3x the rounds, own folders;
    its targets average each run's last two evaluations (here FFT-MoE's final evaluation alone would tie)."""
    grid = st.long_configs("smoke", SEEDS)
    assert set(grid) == {(m, s) for m in st.METHODS for s in ("iid", "alpha0.3", "alpha0.1")}
    short = st.cell_config("fedit", "iid", "smoke")
    cfg = grid["fedit", "iid"][0]
    assert cfg.fed.rounds == 3 * short.fed.rounds and cfg.name == "fftmoe-long-iid"
    assert (cfg.method_args, cfg.data) == (short.method_args, short.data)
    n = 40
    zeros, ones, halves = [0.0] * n, [1.0] * n, [1.0, 0.0] * (n // 2)
    folders = {}
    for (method, split), configs in grid.items():
        items = [zeros, ones, halves] if method == st.METHOD else [zeros, halves, halves]
        folders[method, split] = []
        for c in configs:
            folder = tmp_path / f"{method}-{split}-{c.seed}"
            folder.mkdir()
            save_config(c, folder / "config.yaml")
            lines = [{"round": r, "score": float(np.mean(x)), "item_scores": x} for r, x in enumerate(items)]
            (folder / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            folders[method, split].append(folder)
    rows = {r.target: r for r in st.long_targets(folders)}
    rounds = 3 * short.fed.rounds
    lead = rows[f"FFT-MoE leads the best baseline (alpha0.1, {rounds} rounds)"]
    assert lead.measured.mean == pytest.approx(0.25) and lead.verdict == MET
    assert "last 2 evaluations" in lead.note
    assert rows[f"non-IID retention above the baseline's (fedit, {rounds} rounds)"].measured.mean == pytest.approx(0.0)
    assert len(rows) == 3 + len(st.BASELINES)


def test_every_method_is_tuned_on_one_grid_and_none_keeps_a_hand_picked_lr():
    """The YAML holds no method-specific lr; the chosen values reach every cell of their method (the aux ablation
    and the K sweep are FFT-MoE), and the study's validation items are carved at every scale."""
    for scale in ("smoke", "default"):
        cfg = st.cell_config("fftmoe", "alpha1", scale)
        assert "lr" not in cfg.method_args and cfg.data.n_val > 0 and cfg.fed.eval_split == "test"
    chosen = {"fftmoe": {"fed.lr": 0.03}, "fedit": {"fed.lr": 0.01}, "hetlora": {"fed.lr": 0.003}}
    grid = st.configs("smoke", (0,), chosen=chosen)
    for (variant, _), runs in grid.items():
        assert runs[0].fed.lr == chosen[st.base_method(variant)]["fed.lr"], variant
    assert set(st.TUNING_GRID) == {"fed.lr"} and len(st.TUNING_GRID["fed.lr"]) >= 3

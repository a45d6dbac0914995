"""FLAME's study verdicts from run folders: "no collapse" against each seed's best round, and the rescaler
ordering as paired differences."""

import json

import numpy as np
import pytest
import yaml

from fedmoe.stats import FAILED, MET, UNRESOLVED, Interval
from fedmoe.studies import flame as ex
from fedmoe.studies.evidence import Comparison, seed_of


def _runs(fake_run, root, per_seed_rounds):
    return [fake_run(root / f"s{seed}", seed, rounds) for seed, rounds in enumerate(per_seed_rounds)]


def test_collapse_targets_judge_the_drop_from_the_best_round(tmp_path, fake_run):
    rng = np.random.default_rng(0)
    peak = [rng.integers(0, 2, 400).tolist() for _ in range(3)]
    steady = _runs(fake_run, tmp_path / "steady", [[[0] * 400, p, p] for p in peak])
    # every seed falls from its peak to nothing: a drop of ~50 points, far beyond the 5-point tolerance
    collapsed = _runs(fake_run, tmp_path / "collapsed", [[[0] * 400, p, [0] * 400] for p in peak])
    rows = ex.collapse_targets({"t=0": steady, "t=8": collapsed}, command="cmd")
    assert [r.target for r in rows] == ["no collapse: ends near its best round (t=0)",
                                        "no collapse: ends near its best round (t=8)"]
    assert rows[0].measured.mean == 0.0 and rows[0].verdict == MET
    assert rows[1].measured.mean == -np.mean(peak) and rows[1].verdict == FAILED
    assert rows[1].goal.text() == "> -5.0 points" and rows[1].seeds == 3


def test_collapse_within_noise_of_the_tolerance_is_unresolved(tmp_path, fake_run):
    # 20 items, the final round loses one item (5 points) on each seed: the interval straddles -5
    peak = [1] * 20
    rows = ex.collapse_targets({"x": _runs(fake_run, tmp_path, [[peak, [0] + peak[1:]]] * 2)}, command="cmd")
    assert rows[0].measured.mean == pytest.approx(-0.05) and rows[0].verdict == UNRESOLVED


def test_rescaler_targets_order_learnable_fixed_none(tmp_path, fake_run):
    items = {"none": [0] * 300, "fixed": [0] * 150 + [1] * 150, "learnable": [1] * 300}
    runs = {r: _runs(fake_run, tmp_path / r, [[v]] * 2) for r, v in items.items()}
    rows = ex.rescaler_targets(runs, "heavy-tail", command="cmd")
    assert [r.target for r in rows] == ["learnable rescaler beats fixed (heavy-tail)", "fixed rescaler beats none (heavy-tail)"]
    assert [r.measured.mean for r in rows] == [0.5, 0.5] and {r.verdict for r in rows} == {MET}
    swapped = ex.rescaler_targets({"learnable": runs["none"], "fixed": runs["fixed"], "none": runs["learnable"]},
                                  "heavy-tail", command="cmd")
    assert {r.verdict for r in swapped} == {FAILED}


def test_tier_scores_of_a_finished_run(tmp_path):
    from fedmoe.engines import run
    from fedmoe.results import load_rounds

    cfg = ex.make_config("flame", "uniform", scale="smoke", method_args={"tiers": [0, 1, 2, 1]})
    folder = run(cfg, out_dir=tmp_path, progress=False)
    tiers = ex.tier_scores(folder)["tiers"]
    final = load_rounds(folder)[-1]
    # tier 0 runs the full top-k without a rescaler: the run's own final evaluation, item by item
    assert tiers["0"]["top_k"] == 2 and tiers["0"]["item_scores"] == final["item_scores"]
    assert {t: v["top_k"] for t, v in tiers.items() if t != "0"} == {t: 1 for t in tiers if t != "0"}
    table = ex.tier_table([folder], jobs=1)
    assert table["global"].mean == final["score"] and table["tier 0 (top-2) - global"].mean == 0.0
    assert (folder / ex.TIER_SCORES_FILE).is_file()


def test_deployed_targets_compare_each_weak_tier_with_both_global_models(tmp_path, fake_run):
    """Per weak tier: its own model minus FLAME's global model and minus the baseline's, paired on the final round
    (hand-computed); tier 0 (full top-k) is the global model and gets no row; unequal seeds are refused."""
    glob_items, tier1, base = [0] * 10 + [1] * 10, [1] * 20, [1] * 15 + [0] * 5
    flame = _runs(fake_run, tmp_path / "flame", [[[0] * 20, glob_items]] * 2)
    flora = _runs(fake_run, tmp_path / "flora", [[base]] * 2)
    for folder in flame:
        (folder / ex.TIER_SCORES_FILE).write_text(json.dumps({"tiers": {
            "0": {"top_k": 4, "score": 0.5, "item_scores": glob_items},
            "1": {"top_k": 2, "score": 1.0, "item_scores": tier1}}}))
    rows = ex.deployed_targets(flame, flora, "flora", "heavy-tail", "24 rounds", command="cmd", jobs=1)
    assert [r.target for r in rows] == [
        "diagnostic: a weak tier's own model beats a global model (tier 1 (top-2) vs FLAME's global model (full "
        "top-k), heavy-tail, 24 rounds)",
        "diagnostic: a weak tier's own model beats a global model (tier 1 (top-2) vs flora's global model, heavy-tail, "
        "24 rounds)"]
    assert {r.protocol for r in rows} == {"deployed"}
    assert [r.measured.mean for r in rows] == [pytest.approx(0.5), pytest.approx(0.25)]
    assert {r.verdict for r in rows} == {MET} and {r.seeds for r in rows} == {2}
    with pytest.raises(ValueError, match="same seeds.*run the missing seeds first"):
        ex.deployed_targets(flame, flora[:1], "flora", "heavy-tail", "24 rounds", command="cmd", jobs=1)


def test_tier_costs_price_each_tier_on_the_paper_model(tmp_path):
    """FLAME's weak tiers upload the full-rank LoRA and compute less; HetLoRA's upload their own rank. Bytes are
    bf16 LoRA parameters of OLMoE-1B-7B (hand formula below); the 12 GB RTX 3060 of the uniform fleet only holds
    OLMoE at the 4-bit base the projection prices."""
    from fedmoe.fl.paper_configs import paper_config
    from fedmoe.fl.pricing import lora_params

    runs = ex.projection_runs("uniform", out_dir=tmp_path, scale="smoke", methods=("flame", "hetlora", "fedit"),
                              jobs=1)
    rows = {(r["method"], r["tier"]): r for r in ex.tier_costs(runs)}
    olmoe = paper_config("olmoe-1b-7b")
    per_expert = lambda r: r * (olmoe.hidden_size + 2 * olmoe.intermediate_size) + r * (  # noqa: E731
        olmoe.intermediate_size + olmoe.hidden_size)
    full = olmoe.num_hidden_layers * olmoe.num_experts * per_expert(8)
    assert lora_params(olmoe, 8).total == full
    tiers = sorted({t for m, t in rows if m == "flame"})
    assert len(tiers) >= 2
    for tier in tiers:
        assert rows["flame", tier]["mb_up"] == pytest.approx(2 * full / 1e6)
        assert rows["hetlora", tier]["mb_up"] == pytest.approx(2 * full / 2 ** tier / 1e6)
        assert rows["hetlora", tier]["rank"] == 8 // 2 ** tier and rows["flame", tier]["rank"] == 8
    weak = tiers[-1]
    assert rows["flame", weak]["priced_top_k"] < rows["flame", 0]["priced_top_k"] == olmoe.num_experts_per_tok
    assert rows["flame", weak]["train_tflops"] < rows["hetlora", weak]["train_tflops"]
    assert "rtx-3060-12gb" in {r["devices"] for r in rows.values()}
    # FedIT: every client at the weakest tier's rank, grouped by the tier its device has; no tiered budgets
    assert {rows["fedit", t]["rank"] for t in tiers} == {8 // 2 ** weak}
    assert ex.client_budgets(runs["fedit"]) == [] and len(ex.client_budgets(runs["flame"])) == 4


def test_tier_costs_refuse_runs_priced_on_the_trained_model(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "rounds.jsonl").write_text(json.dumps({"round": 1, "cost_mode": "trained", "client_log": {"0": {}}}))
    with pytest.raises(ValueError, match="cost mode 'trained'.*projection_runs"):
        ex.tier_costs({"flame": folder})


def test_long_horizon_targets_average_the_last_two_evaluations(tmp_path, fake_run):
    """FLAME ends level with FLoRA but was ahead one evaluation before: judged on its final evaluation the lead is
    0, on the mean of the last two it is +25 points (in both settings, so the lead does not grow)."""
    n = 40
    zeros, ones, halves = [0] * n, [1] * n, [1, 0] * (n // 2)
    folders = {}
    for setting in ex.LONG_SETTINGS:
        for method in ex.LONG_METHODS:
            curve = [zeros, ones, halves] if method == "flame" else [zeros, halves, halves]
            folders[method, setting] = _runs(fake_run, tmp_path / setting / method, [curve] * 3)
    held = Comparison(Interval(0.05, 0.02, 0.08, 3), "leads")
    premise = ex.preconditions({"rank-costs": held, "top-k-cheaper": held})
    final = {r.target: r for r in ex.targets(folders, ex.LONG_SETTINGS, premise, deployed=False)}
    long = {r.target: r for r in ex.targets(folders, ex.LONG_SETTINGS, premise, last=2, horizon="24 rounds",
                                            deployed=False)}
    for runs in folders.values():  # what run_long writes: 3x the smoke rounds in config.yaml
        for folder in runs:
            (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed_of(folder), "fed": {"rounds": 6}}))
    assert [r.target for r in ex.long_targets(folders, premise, deployed=False)] == [t.replace("24", "6") for t in long]
    assert final["FLAME beats the best heterogeneous-LoRA baseline (heavy-tail)"].measured.mean == 0.0
    row = long["FLAME beats the best heterogeneous-LoRA baseline (heavy-tail, 24 rounds)"]
    assert row.measured.mean == pytest.approx(0.25) and row.verdict == MET and "last 2 evaluations" in row.note
    assert long["FLAME's lead grows from homogeneous to heavy-tail (24 rounds)"].measured.mean == 0.0
    # a setting where activating fewer experts costs more than a lower rank cannot show FLAME's mechanism
    failed = ex.preconditions({"rank-costs": held,
                               "top-k-cheaper": Comparison(Interval(-0.05, -0.08, -0.02, 3), "trails")})
    judged = ex.targets(folders, ex.LONG_SETTINGS, failed, deployed=False)
    assert {r.verdict for r in judged} == {"NOT TESTABLE"}
    assert all([p.verdict for p in r.preconditions] == [MET, FAILED] for r in judged)


def test_long_horizon_configs_run_three_times_the_rounds_in_their_own_folders():
    from fedmoe.studies.grid import LONG_FACTOR

    grid = ex.long_configs(scale="smoke", seeds=(0, 1))
    assert set(grid) == {(m, s) for m in ("flame", "flora", "hetlora") for s in ("homogeneous", "heavy-tail")}
    cfg, short = grid["flora", "heavy-tail"][1], ex.make_config("flora", "heavy-tail", scale="smoke", seed=1)
    assert cfg.fed.rounds == LONG_FACTOR * short.fed.rounds and cfg.name == "flame-long-heavy-tail"
    assert (cfg.seed, cfg.method_args, cfg.cost, cfg.data) == (1, short.method_args, short.cost, short.data)


def test_gap_anatomy_separates_the_aggregation_edge_from_heterogeneity(tmp_path, fake_run):
    """Homogeneous: FLAME = FedIT, FLoRA +50 points over both; heavy-tail: FLAME - HetLoRA = -25 points."""
    n = 40
    zeros, ones, halves, quarters = [0] * n, [1] * n, [1, 0] * (n // 2), [1, 0, 0, 0] * (n // 4)
    final = {("flame", "homogeneous"): halves, ("fedit", "homogeneous"): halves, ("flora", "homogeneous"): ones,
             ("hetlora", "homogeneous"): halves, ("flame", "heavy-tail"): quarters, ("hetlora", "heavy-tail"): halves,
             ("fedit", "heavy-tail"): quarters, ("flora", "heavy-tail"): halves}
    folders = {key: _runs(fake_run, tmp_path / "-".join(key), [[zeros, items]] * 3) for key, items in final.items()}
    gaps = ex.gap_anatomy(folders, ["homogeneous", "heavy-tail"])
    assert {k: v.difference.mean for k, v in gaps.items()} == pytest.approx({
        "FLAME - FedIT (homogeneous)": 0.0, "flora - FedIT (homogeneous)": 0.5,
        "FLAME - HetLoRA (homogeneous)": 0.0, "FLAME - HetLoRA (heavy-tail)": -0.25})


def test_sampling_and_variant_grids_run_in_one_parallel_call_each(tmp_path, monkeypatch):
    from fedmoe.studies import grid

    calls = []

    def fake_run_configs(configs, *, out_dir, jobs=None, progress=True):
        calls.append(configs)
        return [tmp_path / str(i) for i in range(len(configs))]

    monkeypatch.setattr(grid, "run_configs", fake_run_configs)
    runs = ex.run_sampling([2, 4], ["flame", "hetlora"], "uniform", out_dir=tmp_path, scale="smoke", seeds=(0, 1))
    assert list(runs) == [("flame", 2), ("hetlora", 2), ("flame", 4), ("hetlora", 4)]
    assert [(c.method, c.fed.clients_per_round, c.seed) for c in calls[0]] == [
        (m, n, s) for n in (2, 4) for m in ("flame", "hetlora") for s in (0, 1)]
    variants = ex.run_variants({r: {"rescaler": r} for r in ex.RESCALERS}, "heavy-tail", out_dir=tmp_path,
                               scale="smoke", seeds=(0, 1))
    assert list(variants) == list(ex.RESCALERS) and len(calls) == 2
    assert [(c.method_args["rescaler"], c.cost.fleet, c.seed) for c in calls[1]] == [
        (r, "heavy-tail", s) for r in ex.RESCALERS for s in (0, 1)]


def test_the_top_k_premise_scores_the_full_rank_weights_at_the_weakest_top_k(tmp_path):
    """Smoke FedIT runs: the premise pairs the full-rank model at the weakest tier's top-k (through FLAME's starting
    rescaler, cached per run) with FedIT trained at the weakest rank; rows and preconditions follow the claims."""
    premises = ex.premise_comparisons(out_dir=tmp_path, scale="smoke", seeds=[0, 1], jobs=1)
    assert set(premises) == set(ex.PREMISES)
    cached = sorted(tmp_path.glob("*/top_k_tier*.json"))
    assert len(cached) == 2
    record = json.loads(cached[0].read_text())
    assert record["top_k"] < record["full_top_k"] and len(record["item_scores"]) == premises["top-k-cheaper"].difference.n
    rows = ex.precondition_rows(premises, 2)
    assert [r.claim for r in rows] == list(ex.PREMISES) and all(r.target.startswith("precondition: ") for r in rows)
    assert [p.statement for p in ex.preconditions(premises)] == [r.target for r in rows]


def test_the_granularity_study_maps_the_top_k_premise_over_zoo_models(tmp_path):
    """At smoke every zoo model is the scale's own: one point of the map, labelled with it, in its own section."""
    outcome = ex.granularity_study("smoke", [0, 1], out_dir=tmp_path, jobs=1, progress=False)
    (row,) = outcome.rows
    assert outcome.section == "flame-granularity" and row.axis == "zoo model" and row.axis_value == "smoke"
    assert row.claim == "top-k-cheaper-by-granularity" and "rank costs" in outcome.tables[0]
    assert ex.GRANULARITIES == ("default-top4", "default-e32")

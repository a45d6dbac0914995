"""The seed-grid runner and the evidence helpers: parallel equals sequential, each config runs once, and
paired comparisons read the per-item scores of run folders."""

import json

import numpy as np
import pytest

from fedmoe.config import load_config
from fedmoe.studies import grid
from fedmoe.studies.evidence import (
    by_seed,
    compare,
    drop_from_best,
    late_gain,
    paired_by_seed,
    run_score,
    score_interval,
)
from fedmoe.studies.grid import long_horizon, run_cells, run_configs, seeds_for, with_seeds


def _smoke(**over):
    return load_config(None, {"fed.rounds": 1, "fed.local_steps": 1, **over}, scale="smoke")


def test_with_seeds_varies_only_the_run_seed():
    cfgs = with_seeds([_smoke(), _smoke(method="central")], [0, 3])
    assert [(c.method, c.seed, c.data_seed) for c in cfgs] == [("fedit", 0, 0), ("fedit", 3, 0),
                                                              ("central", 0, 0), ("central", 3, 0)]


def test_unknown_scale_names_the_valid_ones():
    with pytest.raises(ValueError, match="smoke"):
        seeds_for("huge")


def test_run_cells_runs_the_study_in_one_call_and_regroups_the_folders(tmp_path, monkeypatch):
    calls = []

    def fake_run_configs(configs, *, out_dir, jobs=None, progress=True):
        calls.append(len(configs))
        return [tmp_path / f"{c.method}-{c.seed}" for c in configs]

    monkeypatch.setattr(grid, "run_configs", fake_run_configs)
    cells = {("a", "iid"): with_seeds([_smoke()], [0, 1]), ("b", "iid"): with_seeds([_smoke(method="central")], [2])}
    assert run_cells(cells, out_dir=tmp_path) == {("a", "iid"): [tmp_path / "fedit-0", tmp_path / "fedit-1"],
                                                  ("b", "iid"): [tmp_path / "central-2"]}
    assert calls == [3]


def test_long_horizon_multiplies_the_rounds_only():
    assert long_horizon(_smoke(**{"fed.rounds": 4})) == {"fed.rounds": 12}
    assert long_horizon(_smoke(**{"fed.rounds": 4}), factor=2) == {"fed.rounds": 8}


@pytest.mark.slow
def test_parallel_grid_equals_sequential_and_runs_each_config_once(tmp_path):
    cfgs = with_seeds([_smoke()], [0, 1])
    par = run_configs(cfgs + cfgs[:1], out_dir=tmp_path / "par", jobs=2, progress=False)
    seq = run_configs(cfgs, out_dir=tmp_path / "seq", jobs=1, progress=False)
    assert par[0] == par[2] and len({p.name for p in par}) == 2
    for a, b in zip(par, seq, strict=False):
        rounds = [[(r["round"], r.get("score"), r.get("train_loss")) for r in map(json.loads, f.read_text().splitlines())]
                  for f in (a / "rounds.jsonl", b / "rounds.jsonl")]
        assert rounds[0] == rounds[1]


def test_run_score_averages_the_last_evaluations(tmp_path, fake_run):
    f = fake_run(tmp_path / "a", 0, [[0, 0], [1, 0], [1, 1]])
    assert run_score(f) == 1.0
    assert run_score(f, last=2) == 0.75
    assert score_interval([f]).n == 1


def test_compare_pairs_by_seed_and_item(tmp_path, fake_run):
    rng = np.random.default_rng(0)
    items_b = [rng.integers(0, 2, 200).tolist() for _ in range(3)]
    a = [fake_run(tmp_path / f"a{s}", s, [[1] * 200]) for s in range(3)]
    b = [fake_run(tmp_path / f"b{s}", s, [items_b[s]]) for s in range(3)]
    result = compare(a, b)
    expected = 1 - np.mean(items_b)
    assert result.difference.mean == pytest.approx(expected)
    assert result.verdict == "leads"
    assert compare(b, a).verdict == "trails"
    assert compare(a, a).difference.mean == 0.0 and compare(a, a).verdict == "unresolved"


def test_compare_refuses_unpaired_seeds(tmp_path, fake_run):
    a = [fake_run(tmp_path / "a0", 0, [[1, 0]])]
    b = [fake_run(tmp_path / "b1", 1, [[1, 0]])]
    with pytest.raises(ValueError, match="same seeds"):
        compare(a, b)


def test_paired_by_seed_matches_runs_given_in_any_order_and_refuses_unmatched_or_repeated_seeds(tmp_path, fake_run):
    a = [fake_run(tmp_path / f"a{s}", s, [[1]]) for s in (2, 0, 1)]
    b = [fake_run(tmp_path / f"b{s}", s, [[0]]) for s in (1, 2, 0)]
    assert paired_by_seed(a, b) == [(s, tmp_path / f"a{s}", tmp_path / f"b{s}") for s in (0, 1, 2)]
    assert list(by_seed(a)) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"lead: needs the same seeds on every side; got \[0, 1, 2\] and \[1, 2\]: "
                                          "run the missing seeds first"):
        paired_by_seed(a, b[:2], what="lead:")
    with pytest.raises(ValueError, match="both runs of seed 0; give each seed's run once"):
        paired_by_seed(a + a[1:2], b)


def test_drop_from_best_pairs_the_final_round_with_each_seeds_peak(tmp_path, fake_run):
    # seed 0 peaks at round 1 (items 1, 1) and ends at (1, 0); seed 1 never falls: its drop is 0.
    runs = [fake_run(tmp_path / "s0", 0, [[0, 0], [1, 1], [1, 0]]),
            fake_run(tmp_path / "s1", 1, [[0, 0], [0, 1], [1, 1]])]
    drop = drop_from_best(runs)
    assert drop.mean == pytest.approx(((0.5 - 1.0) + 0.0) / 2)
    assert drop.lo <= drop.mean <= drop.hi <= 0.0
    flat = drop_from_best([runs[1]])
    assert (flat.mean, flat.lo, flat.hi) == (0.0, 0.0, 0.0)


def test_late_gain_pairs_the_final_round_with_the_round_at_two_thirds(tmp_path, fake_run):
    # rounds 0..3: two thirds of round 3 is round 2; seed 0 gains (0, 0) -> (1, 1), seed 1 (1, 0) -> (1, 1).
    runs = [fake_run(tmp_path / "s0", 0, [[0, 0], [0, 0], [0, 0], [1, 1]]),
            fake_run(tmp_path / "s1", 1, [[0, 0], [0, 0], [1, 0], [1, 1]])]
    gain = late_gain(runs)
    assert gain.mean == pytest.approx((1.0 + 0.5) / 2)
    assert gain.lo <= gain.mean <= gain.hi
    assert late_gain(runs, fraction=0.1).mean == pytest.approx(((1.0 - 0.0) + (1.0 - 0.0)) / 2)  # vs round 1
    with pytest.raises(ValueError, match="fed.eval_every"):
        late_gain([fake_run(tmp_path / "short", 0, [[0, 0], [1, 1]])], fraction=0.9)
    with pytest.raises(ValueError, match="fraction must lie in"):
        late_gain(runs, fraction=1.0)


def test_notebook_setup_fills_the_defaults_and_prints_the_banner(tmp_path, capsys):
    from fedmoe.studies.grid import notebook_setup, seeds_for

    out, figures, report, seeds = notebook_setup("smoke", None, tmp_path, None, None, "flame")
    assert (out, figures, report) == (tmp_path, tmp_path / "figures" / "flame", tmp_path / "report")
    assert seeds == list(seeds_for("smoke")) and "plumbing check" in capsys.readouterr().out
    assert notebook_setup("default", [3], tmp_path, tmp_path / "f", tmp_path / "r")[1:] == (tmp_path / "f",
                                                                                          tmp_path / "r", [3])

"""End to end at smoke scale: a run writes its results, resumes exactly, and refuses to clobber."""

import json

import pytest

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.results import load_rounds, load_summary

DETERMINISTIC = ("round", "clients", "sim_time", "train_loss", "score", "round_seconds", "bytes_up")


def _cfg(**overrides):
    return load_config(None, {"method": "fedit", "fed.rounds": 3, **overrides}, scale="smoke")


def _strip(rounds):
    return [{k: r[k] for k in DETERMINISTIC if k in r} for r in rounds]


def test_resumed_run_matches_uninterrupted(tmp_path):
    cfg = _cfg()
    full = run(cfg, out_dir=tmp_path / "a", progress=False)
    part = run(cfg, out_dir=tmp_path / "b", stop_after=1, progress=False)
    assert not (part / "summary.json").exists()
    assert [r["round"] for r in load_rounds(part)] == [0, 1]
    resumed = run(cfg, out_dir=tmp_path / "b", progress=False)
    assert _strip(load_rounds(resumed)) == _strip(load_rounds(full))
    assert load_summary(resumed)["final_score"] == load_summary(full)["final_score"]


def test_time_budget_ends_the_run_after_the_round_that_spends_it(tmp_path):
    """A run with ``fed.sim_time_budget`` stops after the first round whose cumulative simulated time reaches
    it (scored there, summary written); resumed from a checkpoint it matches the uninterrupted run."""
    capped = load_rounds(run(_cfg(**{"fed.rounds": 4}), out_dir=tmp_path / "ref", progress=False))
    budget = (capped[1]["sim_time"] + capped[2]["sim_time"]) / 2  # spent during round 2
    cfg = _cfg(**{"fed.rounds": 4, "fed.sim_time_budget": budget, "fed.eval_every": 3})
    full = run(cfg, out_dir=tmp_path / "a", progress=False)
    rounds = load_rounds(full)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert "score" in rounds[-1] and "score" not in rounds[1]
    assert load_summary(full)["rounds"] == 2
    part = run(cfg, out_dir=tmp_path / "b", stop_after=1, progress=False)
    assert not (part / "summary.json").exists()
    assert _strip(load_rounds(run(cfg, out_dir=tmp_path / "b", progress=False))) == _strip(rounds)


def test_run_records_rounds_and_costs(tmp_path):
    folder = run(_cfg(**{"fed.rounds": 2}), out_dir=tmp_path, progress=False)
    rounds = load_rounds(folder)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    last = rounds[-1]
    assert last["sim_time"] > rounds[1]["sim_time"] > 0
    assert set(last["client_seconds"]) == {str(c) for c in last["clients"]}
    assert all(v > 0 for v in last["bytes_up"].values())
    assert 0.0 <= last["score"] <= 1.0
    json.loads((folder / "summary.json").read_text())


def test_existing_run_with_other_config_is_left_untouched(tmp_path):
    folder = run(_cfg(**{"fed.rounds": 1}), out_dir=tmp_path, run_name="x", progress=False)
    before = (folder / "rounds.jsonl").read_text()
    with pytest.raises(ValueError, match="different config"):
        run(_cfg(**{"fed.rounds": 2}), out_dir=tmp_path, run_name="x", progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        run(_cfg(**{"fed.rounds": 1}), out_dir=tmp_path, run_name="x", resume=False, progress=False)
    assert (folder / "rounds.jsonl").read_text() == before


def test_task_that_does_not_fit_its_device_is_a_clear_error(tmp_path):
    from fedmoe.fl.cost import DoesNotFitError

    cfg = _cfg(**{"fed.rounds": 1, "cost.fleet": "rtx-3060-12gb", "cost.mode": "projection",
                  "cost.projection": "mixtral-8x7b"})
    with pytest.raises(DoesNotFitError, match="rtx-3060-12gb.*quantize"):
        run(cfg, out_dir=tmp_path, progress=False)


def test_cli_runs_and_plots(tmp_path, capsys):
    from fedmoe.cli import main

    assert main(["run", "--scale", "smoke", "--set", "fed.rounds=1", "--out", str(tmp_path), "--name", "r"]) == 0
    assert "final_score" in capsys.readouterr().out
    out = tmp_path / "fig.png"
    assert main(["plot", str(tmp_path / "r"), "--x", "sim_time", "-o", str(out)]) == 0
    assert out.exists() and out.with_suffix(".pdf").exists()
    assert main(["run", "--scale", "smoke", "--set", "fed.roundz=1", "--out", str(tmp_path)]) == 2
    assert "roundz" in capsys.readouterr().err


def test_cli_runs_one_folder_per_seed_on_the_same_data(tmp_path, capsys):
    from fedmoe.cli import main
    from fedmoe.results import load_config_dict

    argv = ["run", "--scale", "smoke", "--set", "fed.rounds=1", "--seeds", "0,1", "--out", str(tmp_path), "--name", "r"]
    assert main(argv) == 0
    configs = [load_config_dict(tmp_path / f"r-seed{s}") for s in (0, 1)]
    assert [c["seed"] for c in configs] == [0, 1] and [c["data_seed"] for c in configs] == [0, 0]
    rounds = [load_rounds(tmp_path / f"r-seed{s}") for s in (0, 1)]
    assert rounds[0][1]["clients"] != rounds[1][1]["clients"]  # the seed samples the clients

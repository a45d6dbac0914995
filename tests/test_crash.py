"""Crash safety: a run killed with SIGKILL at random points (one in the middle of a checkpoint write) and restarted
each time ends as the uninterrupted run, with either engine (``reproduce/bench_crash.py``); and the checks of that
harness fail when they should."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from fedmoe.results import CHECKPOINT_FILE, RunFolder

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "reproduce" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _script("bench_crash")


def test_only_wall_clock_keys_are_ignored_at_any_depth():
    a = {"round": 1, "wall_time": 1.0, "score": 0.5, "client_log": {"0": {"measured_seconds": 2.0, "top_k": 2}}}
    b = {**a, "wall_time": 9.0, "client_log": {"0": {"measured_seconds": 7.0, "top_k": 2}}}
    assert bench.without_wall_clock(a) == bench.without_wall_clock(b)
    assert bench.without_wall_clock(a) != bench.without_wall_clock({**b, "score": 0.25})
    assert bench.without_wall_clock(a) != bench.without_wall_clock({**b, "client_log": {"0": {"top_k": 1}}})


def test_compare_names_duplicated_differing_and_recomputed_rounds_and_leftovers(tmp_path):
    ref, run = RunFolder(tmp_path / "ref"), RunFolder(tmp_path / "run")
    for folder in (ref, run):
        folder.create()
        folder.write_summary({"final_score": 0.5, "wall_time": float(folder is run)})
    for r in range(3):
        ref.append_round({"round": r, "wall_time": r, "score": 0.5})
    for record in ({"round": 0, "wall_time": 9, "score": 0.5}, {"round": 1, "wall_time": 1, "score": 0.25},
                   {"round": 1, "wall_time": 1, "score": 0.25}):
        run.append_round(record)
    (run.path / f".{CHECKPOINT_FILE}.x.tmp").write_bytes(b"")
    held = {0: json.dumps({"round": 0, "wall_time": 0, "score": 0.5})}  # what the checkpoint held at a kill
    problems = bench.compare(ref.path, run.path, held, total_rounds=2)
    assert problems == [
        "rounds [0, 1, 1], expected 0..2 once each",
        "round 1 differs from the reference in ['score']",
        "round 2 differs from the reference in ['round', 'score']",
        "rounds [0] were checkpointed before a kill but written anew (not resumed)",
        f"temporary files left in {run.path}: ['.{CHECKPOINT_FILE}.x.tmp']",
    ]
    assert bench.compare(ref.path, ref.path, {}, total_rounds=2) == []


def test_a_round_lasts_as_in_the_reference_and_a_resumed_start_repays_round_1():
    # reference: ready at 0, round records at 1, 41 (Ray's workers started in round 1), 44, 47; exit at 48
    timeline = bench.Timeline({0: 1.0, 1: 41.0, 2: 44.0, 3: 47.0}, end=48.0)
    assert [timeline.duration(r) for r in range(5)] == [1.0, 40.0, 3.0, 3.0, 1.0]  # round 4: the summary
    assert timeline.duration(2, first=True) == 40.0  # a start resuming at round 2 starts Ray's workers again
    assert timeline.duration(0, first=True) == 1.0


def test_paused_save_cuts_only_a_checkpoint_write_in_two(tmp_path, monkeypatch):
    paused_save = _script("paused_save")
    folder, seen = RunFolder(tmp_path), []

    def sleep(seconds):  # the moment the harness kills: half the bytes are on disk
        seen.append([p.stat().st_size for p in tmp_path.glob(f".{CHECKPOINT_FILE}.*.tmp")])

    monkeypatch.setattr(paused_save.time, "sleep", sleep)
    monkeypatch.setattr(torch, "save", paused_save.paused(torch.save, 1.0))
    folder.save_checkpoint({"round": 2, "w": torch.arange(1000.0)})
    torch.save({"w": torch.ones(3)}, tmp_path / "other.pt")  # not a checkpoint: never paused
    size = folder.checkpoint_path.stat().st_size
    assert seen == [[size // 2]]
    assert torch.equal(folder.load_checkpoint()["w"], torch.arange(1000.0))


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "kills", "rounds"), [("inprocess", 3, 4), ("flower", 2, 3)])
def test_run_killed_repeatedly_ends_as_the_uninterrupted_run(tmp_path, engine, kills, rounds):
    report = bench.crash_test(engine, kills=kills, seed=0, workdir=tmp_path, checkpoint_kills=1,
                              overrides=(f"fed.rounds={rounds}",))
    assert report.problems == []
    assert (report.sigkills, report.restarts) == (kills, kills)
    assert report.kills_during_checkpoint >= 1

"""The run folder: one owner of the file names, atomic checkpoint/summary, no silent loss of finished rounds."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.results import (
    CHECKPOINT_FILE,
    ENVIRONMENT_FILE,
    ROUNDS_FILE,
    CheckpointError,
    RunFolder,
    RunFolderLockedError,
    load_rounds,
)


def test_checkpoint_round_trip_is_weights_only_and_atomic(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create()
    state = {"round": 3, "method": {"global": {"w": torch.ones(2)}, "profiles": {0: {"freq": [[0.5]]}}}}
    folder.save_checkpoint(state)
    assert list(folder.path.iterdir()) == [folder.checkpoint_path]  # no temporary file left behind
    loaded = folder.load_checkpoint()
    assert loaded["round"] == 3 and torch.equal(loaded["method"]["global"]["w"], torch.ones(2))


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    folder = RunFolder(tmp_path)
    folder.save_checkpoint({"round": 1, "w": torch.zeros(1000)})
    data = folder.checkpoint_path.read_bytes()
    folder.checkpoint_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT_FILE}.*delete it to restart.*{ROUNDS_FILE}.bak"):
        folder.load_checkpoint()


def test_rounds_are_set_aside_never_deleted(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.set_rounds_aside() is None
    for text in ("first", "second"):
        folder.append_round({"round": 0, "note": text})
        kept = folder.set_rounds_aside()
        assert json.loads(kept.read_text())["note"] == text and not folder.rounds_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{ROUNDS_FILE}.bak", f"{ROUNDS_FILE}.bak.1"]


def test_truncate_keeps_rounds_up_to_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    for r in range(4):
        folder.append_round({"round": r})
    folder.truncate_rounds(1)
    assert [r["round"] for r in folder.rounds()] == [0, 1]


def test_truncate_drops_a_last_line_cut_short_by_a_kill(tmp_path):
    folder = RunFolder(tmp_path)
    for r in range(2):
        folder.append_round({"round": r})
    with folder.rounds_path.open("a") as fh:
        fh.write('{"round": 2, "sco')  # killed mid-append: no newline
    folder.truncate_rounds(1)
    assert folder.rounds_path.read_text() == '{"round": 0}\n{"round": 1}\n'


def test_truncate_refuses_a_damaged_line_before_the_last(tmp_path):
    folder = RunFolder(tmp_path)
    folder.rounds_path.write_text('{"round": 0}\n{"rou\n{"round": 1}\n')
    with pytest.raises(ValueError, match=f"{ROUNDS_FILE}, line 2: not a JSON round record"):
        folder.truncate_rounds(1)


def test_lock_of_a_run_killed_with_sigkill_does_not_block_the_restart(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fedmoe.results import RunFolder; "
         "RunFolder(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderLockedError):  # alive: it holds the folder
            RunFolder(tmp_path).lock()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.stdout.close()
    RunFolder(tmp_path).lock()  # dead: its lock went with it, though its .lock file stays
    assert (tmp_path / ".lock").exists()


def test_lock_holder_removes_temporaries_of_writes_a_kill_cut_short(tmp_path):
    folder = RunFolder(tmp_path)
    folder.create()
    stale = [tmp_path / f".{CHECKPOINT_FILE}.a1b2.tmp", tmp_path / f".{ROUNDS_FILE}.c3d4.tmp"]
    others = [tmp_path / ".notes.x.tmp", tmp_path / CHECKPOINT_FILE]  # not the kit's temporaries
    for path in stale + others:
        path.write_bytes(b"half")
    folder.lock()
    assert [p.exists() for p in stale + others] == [False, False, True, True]


def test_run_writes_environment_item_scores_and_sets_orphan_rounds_aside(tmp_path):
    cfg = load_config(None, {"fed.rounds": 1}, scale="smoke")
    path = run(cfg, out_dir=tmp_path, run_name="r", progress=False)
    env = json.loads((path / ENVIRONMENT_FILE).read_text())
    assert env["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert {"python", "transformers", "peft", "flwr", "numpy", "torch_threads", "cpu_capability", "machine",
            "device"} <= set(env)
    rounds = load_rounds(path)
    for record in rounds:  # per-item scores: one per test example, averaging to the score
        assert len(record["item_scores"]) == record["n"]
        assert sum(record["item_scores"]) / record["n"] == pytest.approx(record["score"])
    (path / CHECKPOINT_FILE).unlink()  # a finished run that lost its checkpoint restarts, keeping its rounds aside
    run(cfg, out_dir=tmp_path, run_name="r", progress=False)
    assert json.loads((path / f"{ROUNDS_FILE}.bak").read_text().splitlines()[0]) == rounds[0]
    assert [r["round"] for r in load_rounds(path)] == [0, 1]

"""Inputs without a bound and errors without a message, through the CLI: every error the kit raises on purpose
ends in ONE ``fedmoe: error:`` line (exit 2, no traceback), a run name stays inside ``--out``, ``threads`` is
bounded by the cores, seeds are distinct, and a run refused its folder never deletes or changes the files of
the run that holds it (even when the lock is taken late, as a scheduler stall would)."""

import importlib
import inspect
import os
import pkgutil
import sys
from dataclasses import replace

import pytest
from test_bad_input import _fails_cleanly

import fedmoe
from fedmoe import cli
from fedmoe.config import ConfigError, RunConfig, load_config, validate
from fedmoe.experiment import check_config
from fedmoe.results import LOCK_FILE, RunFolder, RunFolderLockedError
from fedmoe.studies.grid import with_seeds

QUICKSTART = "reproduce/configs/quickstart.yaml"
SMOKE = ["--scale", "smoke"]


def _kit_exception_classes():
    """Every exception class the kit defines (its modules imported)."""
    for info in pkgutil.walk_packages(fedmoe.__path__, "fedmoe."):
        importlib.import_module(info.name)
    found = set()
    for name, module in list(sys.modules.items()):
        if name == "fedmoe" or name.startswith("fedmoe."):
            found |= {obj for _, obj in inspect.getmembers(module, inspect.isclass)
                      if issubclass(obj, BaseException) and obj.__module__.startswith("fedmoe")}
    return sorted(found, key=lambda c: c.__qualname__)


def test_every_kit_exception_class_ends_in_one_cli_line(monkeypatch, capsys):
    classes = _kit_exception_classes()
    names = {c.__name__ for c in classes}
    assert {"RoundFailedError", "CheckpointError", "RunFolderLockedError", "ConfigError"} <= names, names
    for cls in classes:
        def fail(args, cls=cls):
            raise cls(f"{cls.__name__}: the problem\nand the fix")

        monkeypatch.setattr(cli, "_run", fail)
        _fails_cleanly(capsys, ["run"], rf"{cls.__name__}: the problem and the fix")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the kit's own errors are shortened: any other exception still propagates."""
    def bug(args):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setattr(cli, "_run", bug)
    with pytest.raises(RuntimeError, match="invariant"):
        cli.main(["run"])


def test_a_round_no_client_answers_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "results"
    _fails_cleanly(capsys, ["run", QUICKSTART, *SMOKE, "--set", "fed.dropout=0.999", "--out", str(out)],
                    r"round 1: fewer than 1 of \d+ sampled clients .*lower fed\.min_fit_fraction / fed\.dropout",
                    progress=True)
    assert not out.exists()  # it failed before its first checkpoint: what it wrote is gone


def test_an_unreadable_checkpoint_is_one_line_and_is_left_as_it_was(tmp_path, capsys):
    folder = RunFolder(tmp_path / "results" / "run")
    folder.create()
    folder.write_config(check_config(load_config(QUICKSTART, [], scale="smoke")))
    folder.checkpoint_path.write_bytes(b"not a checkpoint")
    _fails_cleanly(capsys, ["run", QUICKSTART, *SMOKE, "--out", str(folder.path.parent), "--name", "run"],
                    r"cannot read the checkpoint .*checkpoint\.pt .*delete it to restart", progress=True)
    assert folder.checkpoint_path.read_bytes() == b"not a checkpoint" and folder.has_config()


def test_a_hub_dataset_that_cannot_load_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "results"
    _fails_cleanly(capsys, ["run", *SMOKE, "--set", "data.source=no-such-org/no-such-set", "--out", str(out)],
                    r"could not load Hub dataset 'no-such-org/no-such-set'.*Fix:", progress=True)
    assert not out.exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "/tmp/x", "a\\b"])
def test_run_names_stay_inside_out(name, tmp_path, capsys):
    out = tmp_path / "results"
    _fails_cleanly(capsys, ["run", QUICKSTART, *SMOKE, "--name", name, "--out", str(out)],
                    r"run name .* is invalid: expected one folder name inside out_dir.*--name my-run")
    assert list(tmp_path.iterdir()) == []


def test_a_run_name_given_to_the_api_stays_inside_out_dir(tmp_path):
    from fedmoe.engines import run

    with pytest.raises(ConfigError, match=r"run name '\.\./x' is invalid"):
        run(check_config(load_config(QUICKSTART, [], scale="smoke")), out_dir=tmp_path / "r", run_name="../x")
    assert list(tmp_path.iterdir()) == []


def test_threads_are_bounded_by_the_cores(tmp_path, capsys):
    cores = os.cpu_count() or 1
    _fails_cleanly(capsys, ["run", QUICKSTART, *SMOKE, "--set", "threads=1000", "--out", str(tmp_path / "r")],
                    rf"threads=1000 is invalid: expected at most this machine's {cores} CPU cores "
                    r"\(fix: e\.g\. --set threads=1\)")
    assert validate(replace(RunConfig(scale="smoke"), threads=cores)).threads == cores  # the bound itself is fine
    assert not (tmp_path / "r").exists()


def test_repeated_seeds_are_an_error(tmp_path, capsys):
    _fails_cleanly(capsys, ["run", QUICKSTART, *SMOKE, "--seeds", "0,00", "--out", str(tmp_path / "r")],
                    r"--seeds '0,00' is invalid: expected distinct")
    cfg = RunConfig(scale="smoke")
    with pytest.raises(ConfigError, match=r"seeds \[0, 0\] repeat a seed.*seeds=\[0, 1, 2\]"):
        with_seeds([cfg], [0, 0])
    assert [c.seed for c in with_seeds([cfg], [0, 1])] == [0, 1]


def _winner_files(folder):
    return {p.name: p.read_bytes() for p in folder.path.iterdir()}


def test_a_refused_run_never_harms_the_run_that_took_its_folder_late(tmp_path, capsys, monkeypatch):
    """The loser checks the folder (absent), stalls, and takes the lock late: in the stall the winner makes the
    folder, locks it and writes its first files. The loser must refuse in one line and touch none of them."""
    out, cfg = tmp_path / "results", check_config(load_config(QUICKSTART, [], scale="smoke"))
    winner = RunFolder(out / "race")
    real_lock = RunFolder.lock

    def stalled_lock(self):
        if self is not winner and not winner.path.exists():  # the loser, between its check and its lock
            real_lock(winner)
            winner.write_config(cfg)
            winner.append_round({"round": 0, "score": 0.5})
        real_lock(self)

    monkeypatch.setattr(RunFolder, "lock", stalled_lock)
    _fails_cleanly(capsys, ["run", QUICKSTART, *SMOKE, "--out", str(out), "--name", "race"],
                    r"race is being written by another run .*another run name or out_dir")
    assert winner._lock_fd is not None, "the stall never happened"
    files = _winner_files(winner)
    assert set(files) == {LOCK_FILE, "config.yaml", "rounds.jsonl"}
    monkeypatch.setattr(RunFolder, "lock", real_lock)
    with pytest.raises(RunFolderLockedError):  # the winner still holds its folder
        RunFolder(winner.path).lock()
    assert _winner_files(winner) == files
    winner.unlock()


def test_a_failed_run_removes_only_what_it_wrote(tmp_path):
    """:meth:`RunFolder.discard` in a folder that existed: its earlier files stay, the run's own go."""
    folder = RunFolder(tmp_path / "mine")
    folder.create()
    (folder.path / "notes.txt").write_text("the user's")
    folder.lock()
    folder.write_config(RunConfig())
    folder.append_round({"round": 0})
    folder.discard()
    folder.unlock()
    assert sorted(p.name for p in folder.path.iterdir()) == [LOCK_FILE, "notes.txt"]


def test_a_folder_discarded_by_its_holder_is_locked_afresh(tmp_path):
    """A run that made the folder and discards it removes the folder and its lock file; a next run locks a
    new one even while the first still holds the removed lock file."""
    first, second = RunFolder(tmp_path / "a" / "run"), RunFolder(tmp_path / "a" / "run")
    first.lock()
    first.write_config(RunConfig())
    first.discard()
    assert not (tmp_path / "a").exists()
    second.lock()  # the removed lock file held by `first` does not block the new folder
    with pytest.raises(RunFolderLockedError):
        RunFolder(second.path).lock()
    first.unlock()
    second.unlock()


def test_discard_is_for_the_lock_holder_only(tmp_path):
    folder = RunFolder(tmp_path / "x")
    folder.create()
    folder.config_path.write_text("name: someone-else\n")
    with pytest.raises(RuntimeError, match="without holding its lock"):
        folder.discard()
    assert folder.config_path.read_text() == "name: someone-else\n"

"""Run folders: the one place that names, writes and reads the files of ``results/<run-id>/``.

:class:`RunFolder` owns the file names (:data:`CONFIG_FILE`, :data:`ROUNDS_FILE`, :data:`SUMMARY_FILE`,
:data:`CHECKPOINT_FILE`, :data:`ENVIRONMENT_FILE`), appending and truncating the round log, and atomic writes
(temporary file, fsync, rename) of the checkpoint and the summary, so a run killed mid-write never leaves a
half-written file behind, and the folder's write lock (one run writes a folder at a time; a run refused it changes
nothing, and a run that fails before its first checkpoint removes only what it wrote). Plots and notebooks read
results through the functions below, never live objects.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from fedmoe.environment import environment
from fedmoe.errors import FedmoeError

CONFIG_FILE = "config.yaml"
ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
ENVIRONMENT_FILE = "environment.json"
LOCK_FILE = ".lock"
#: The files a run writes into its folder (besides :data:`LOCK_FILE` and the backups of set-aside round logs).
RUN_FILES = (CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE, CHECKPOINT_FILE, ENVIRONMENT_FILE)
BACKUP_SUFFIX = ".bak"
#: The key of ``config.yaml`` that records every option of the run's method as it ran, defaults included. It is no
#: part of the run's config: :meth:`RunFolder.config_dict` leaves it out, so the run id, ``from_dict`` and the
#: check that a folder holds a config read what they always read.
RESOLVED_METHOD_ARGS = "resolved_method_args"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CheckpointError(FedmoeError):
    """A checkpoint that cannot be read (truncated, corrupt, or not written by this version)."""


class RunFolderLockedError(FedmoeError):
    """Another run is writing the run folder."""


class RunFolder:
    """The folder of one run (see the module docstring); ``path`` need not exist yet."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # the folders this holder's lock() made, deepest first
        self._found: set[str] = set()  # the folder's entries when this holder took the lock

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        """The resolved config the run was made with."""
        return self.path / CONFIG_FILE

    @property
    def rounds_path(self) -> Path:
        """One JSON line per round (round 0 is the evaluation before training)."""
        return self.path / ROUNDS_FILE

    @property
    def summary_path(self) -> Path:
        """Final and best scores and totals, written when the last round finishes."""
        return self.path / SUMMARY_FILE

    @property
    def checkpoint_path(self) -> Path:
        """The state to resume from (server state, round, clocks)."""
        return self.path / CHECKPOINT_FILE

    @property
    def environment_path(self) -> Path:
        """Library versions, threads and hardware of the session that ran it."""
        return self.path / ENVIRONMENT_FILE

    def create(self) -> list[Path]:
        """Create the folder (and its parents) if needed; returns the folders this call made, deepest first
        (each ``mkdir`` is atomic, so a folder another process made meanwhile is never counted as made here)."""
        missing = []
        for path in (self.path, *self.path.parents):
            if path.is_dir():
                break
            missing.append(path)
        made = []
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            made.append(path)
        return made[::-1]

    # --- lock -----------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder's write lock (an exclusive ``flock`` on its ``.lock`` file, released by
        :meth:`unlock` or when the process ends, however it ends: a run killed with SIGKILL leaves no stale
        lock); a run holding it already is a :class:`RunFolderLockedError`. The holder then removes the
        temporary files of writes a killed run left unfinished (:meth:`remove_temporaries`).

        The lock is the first thing a run does to its folder, and a refused run has touched nothing there (its
        ``mkdir`` and ``open`` of an existing folder and lock file change nothing). A lock file that its holder
        removed (:meth:`discard`) while this call waited is not taken: the folder's current one is."""
        made: list[Path] = []
        while True:
            made += self.create()
            try:
                fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # its holder removed the folder meanwhile (discard): make it again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderLockedError(
                    f"{self.path} is being written by another run (it holds {self.path / LOCK_FILE}); wait for it "
                    "to finish, or run into another folder (another run name or out_dir)") from None
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path / LOCK_FILE))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        self._lock_fd, self._made = fd, made
        self.remove_temporaries()
        self._found = set(os.listdir(self.path))

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files :func:`atomic_write` leaves when its process is killed mid-write (they
        are never read; a checkpoint's can be as large as the model); returns what was deleted. Only the
        lock's holder calls it: a live writer's temporary file looks the same."""
        stale = [tmp for name in RUN_FILES for tmp in self.path.glob(f".{name}.*.tmp")]
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        return stale

    def discard(self) -> None:
        """Undo what this holder's run did to the folder (a run that failed before its first checkpoint): delete
        the run files (:data:`RUN_FILES`) that were not there when it took the lock, the lock file too if the
        folder held nothing else then, and the folders its :meth:`lock` made, if empty. Files that were there
        before, set-aside round logs and anything of another run are left as they are; only the lock's holder
        may call it (it keeps the lock until :meth:`unlock`)."""
        if self._lock_fd is None:
            raise RuntimeError(f"discard() of {self.path} without holding its lock")
        for name in RUN_FILES:
            if name not in self._found:
                (self.path / name).unlink(missing_ok=True)
        if self._found == {LOCK_FILE}:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        for path in self._made:
            try:
                path.rmdir()
            except OSError:  # not empty: something else lives there
                break

    def unlock(self) -> None:
        """Release the lock taken by :meth:`lock` (nothing if not held)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- config ---------------------------------------------------------------------------------------
    def has_config(self) -> bool:
        """Whether a run was started in this folder."""
        return self.config_path.exists()

    def write_config(self, cfg, method_options: dict[str, Any] | None = None) -> None:
        """Write the resolved config of ``cfg`` (a :class:`fedmoe.config.RunConfig`) and, under
        :data:`RESOLVED_METHOD_ARGS`, ``method_options`` (every field of the method's options), atomically."""
        text = config_text(cfg)
        if method_options is not None:
            text += yaml.safe_dump({RESOLVED_METHOD_ARGS: method_options}, sort_keys=False)
        atomic_write(self.config_path, lambda fh: fh.write(text))

    def holds_config(self, cfg) -> bool:
        """Whether the folder's config is exactly the resolved config of ``cfg`` (the recorded method options, which
        follow from it, aside)."""
        return self.config_dict() == yaml.safe_load(config_text(cfg))

    def config_text(self) -> str:
        """The resolved config as written."""
        return self.config_path.read_text()

    def config_dict(self) -> dict:
        """The resolved config as a dict, without :data:`RESOLVED_METHOD_ARGS` (what ``fedmoe.config.from_dict``
        reads back); a missing or damaged file is an error naming the way out."""
        data = self._config_file()
        data.pop(RESOLVED_METHOD_ARGS, None)
        return data

    def method_options(self) -> dict[str, Any] | None:
        """Every option of the run's method as it ran (:data:`RESOLVED_METHOD_ARGS`), or ``None`` for a folder
        written before they were recorded."""
        return self._config_file().get(RESOLVED_METHOD_ARGS)

    def _config_file(self) -> dict:
        """``config.yaml`` as written (a missing or damaged file is an error naming the way out)."""
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.config_path} not found: is {self.path} a run folder written by `fedmoe run`?")
        try:
            data = yaml.safe_load(self.config_text())
        except yaml.YAMLError:
            data = None
        if not isinstance(data, dict):
            raise ValueError(f"{self.config_path} is damaged (not a YAML mapping of the run's config); "
                             "re-run it with `fedmoe run`")
        return data

    # --- rounds ---------------------------------------------------------------------------------------
    def append_round(self, record: dict) -> None:
        """Append one round's record to the round log."""
        with self.rounds_path.open("a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def rounds(self) -> list[dict]:
        """Every round record, in order (a damaged line is an error naming the file and line)."""
        path = self.rounds_path
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {self.path} a run folder written by `fedmoe run`?")
        return self._parse_rounds(path.read_text().splitlines())

    def _parse_rounds(self, lines: list[str]) -> list[dict]:
        """The round records of the round log's ``lines`` (see :meth:`rounds`)."""
        path = self.rounds_path
        rounds = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: not a JSON round record ({err.msg}); the file is "
                                 "damaged: re-run the config with `fedmoe run` into a new folder") from None
            if not isinstance(rounds[-1], dict) or "round" not in rounds[-1]:
                raise ValueError(f"{path}, line {lineno}: not a round record (no 'round' key); is {self.path} a "
                                 "run folder written by `fedmoe run`?")
        return rounds

    def truncate_rounds(self, last_round: int) -> None:
        """Drop records after ``last_round`` (a run killed between writing a line and a checkpoint), and a last
        line without its newline (a run killed while appending it: :meth:`append_round` writes a record and its
        newline in one write, so only a cut write leaves none)."""
        if not self.rounds_path.exists():
            return
        text = self.rounds_path.read_text()
        lines = text.splitlines()[:-1] if text and not text.endswith("\n") else text.splitlines()
        lines = [line for line in lines if line.strip()]
        keep = [line for line, record in zip(lines, self._parse_rounds(lines), strict=True)
                if record["round"] <= last_round]
        atomic_write(self.rounds_path, lambda fh: fh.write("".join(line + "\n" for line in keep)))

    def set_rounds_aside(self) -> Path | None:
        """Move a round log that no checkpoint can continue to ``rounds.jsonl.bak`` (never delete it);
        returns where it went, ``None`` if there was none."""
        if not self.rounds_path.exists():
            return None
        target, n = self.rounds_path.with_name(ROUNDS_FILE + BACKUP_SUFFIX), 1
        while target.exists():
            target, n = self.rounds_path.with_name(f"{ROUNDS_FILE}{BACKUP_SUFFIX}.{n}"), n + 1
        self.rounds_path.rename(target)
        return target

    # --- summary --------------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        """Write ``summary.json`` atomically."""
        atomic_write(self.summary_path, lambda fh: fh.write(json.dumps(summary, indent=2)))

    def has_summary(self) -> bool:
        """Whether the run finished (its summary was written)."""
        return self.summary_path.exists()

    def summary(self) -> dict:
        """The run's summary (written when the last round finished)."""
        if not self.summary_path.exists():
            raise FileNotFoundError(f"{self.summary_path} not found: the run has not finished; resume it with `fedmoe run`")
        return json.loads(self.summary_path.read_text())

    # --- checkpoint -----------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """Write the checkpoint atomically (plain tensors, numbers, strings, lists and dicts only)."""
        import torch

        atomic_write(self.checkpoint_path, lambda fh: torch.save(state, fh), mode="wb")

    def load_checkpoint(self) -> dict | None:
        """The checkpoint, or ``None`` if there is none; a file that cannot be read is a :class:`CheckpointError`
        naming it and the way out."""
        import torch

        if not self.checkpoint_path.exists():
            return None
        try:
            return torch.load(self.checkpoint_path, weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise CheckpointError(
                f"cannot read the checkpoint {self.checkpoint_path} ({type(exc).__name__}: {exc}); delete it to "
                f"restart the run from round 0 (its {ROUNDS_FILE} is then kept aside as {ROUNDS_FILE}{BACKUP_SUFFIX})"
            ) from exc

    # --- environment ----------------------------------------------------------------------------------
    def write_environment(self, device: str, dtype: str = "float32") -> dict:
        """Write ``environment.json`` (:func:`fedmoe.environment.environment`: library versions, torch threads,
        CPU capability, device, dtype, the lock's status) of this session (a resumed run records the session that
        resumed it)."""
        env = environment(device, dtype)
        atomic_write(self.environment_path, lambda fh: fh.write(json.dumps(env, indent=2)))
        return env


def config_text(cfg) -> str:
    """The resolved config of ``cfg`` as :func:`fedmoe.config.save_config` writes it."""
    from fedmoe.config import save_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_FILE
        save_config(cfg, path)
        return path.read_text()


#: Run folders whose results this process has read (:func:`load_rounds`): a report section records their
#: environment fingerprints (:func:`read_environments`).
READ_RUNS: set[Path] = set()


def load_rounds(folder: str | Path) -> list[dict]:
    """Every round record of a run, in order (round 0 is the evaluation before training); the folder joins
    :data:`READ_RUNS`."""
    READ_RUNS.add(Path(folder).resolve())
    return RunFolder(folder).rounds()


def read_environments(folders: Iterable[str | Path] | None = None) -> list[dict]:
    """The ``environment.json`` of each folder (default: every folder in :data:`READ_RUNS`) that has one."""
    found = []
    for folder in sorted(READ_RUNS if folders is None else {Path(f).resolve() for f in folders}):
        path = RunFolder(folder).environment_path
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def load_config_dict(folder: str | Path) -> dict:
    """The resolved config a run was made with."""
    return RunFolder(folder).config_dict()


def load_summary(folder: str | Path) -> dict:
    """The run's ``summary.json`` (written when the last round finished)."""
    return RunFolder(folder).summary()


def curve(folder: str | Path, x: str = "round", y: str = "score") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of the evaluated rounds, e.g. score against ``round`` or ``sim_time``."""
    rows = [r for r in load_rounds(folder) if y in r]
    return [r[x] for r in rows], [r[y] for r in rows]


def is_finished(folder: str | Path) -> bool:
    """Whether a run folder holds a finished run (its summary is written after the last round)."""
    return RunFolder(folder).has_summary()

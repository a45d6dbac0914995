"""Crash safety: SIGKILL a run at seeded random points, restart it each time, and compare it with an uninterrupted run.

    python reproduce/bench_crash.py --engine inprocess --kills 10 --seed 0
    python reproduce/bench_crash.py --engine flower --kills 10 --seed 0      (Flower's simulation engine, Ray)

Every run is the ``fedmoe run`` command in a subprocess leading a session of its own, so a kill reaches the whole
process group and every descendant (Ray's processes included). First the reference: the config, uninterrupted;
its *working time* is from ``environment.json`` being written (the model is loaded, the folder locked) to its exit.
Then the same config in a fresh folder, started ``--kills`` times and killed with SIGKILL each time, then started
once more and left to finish. Kill points: ``--kills`` points of the run's progress drawn uniformly (seeded) over its
rounds and sorted; the start is killed at the next one, the same fraction into that round as in the reference's
clock, or in the first round it has to do if its checkpoint is already past the point (a resumed start's first round
repays what every start pays, e.g. Flower's Ray workers starting): see :class:`KillRule`. Work since the
checkpoint is lost and redone, as after a real crash. ``--checkpoint-kills`` starts (seeded, among the first half)
run ``paused_save.py`` instead, which pauses each checkpoint write halfway, and are killed in their first checkpoint
write as soon as its temporary file holds bytes: in the middle of the write, every time.

Checks (each failure is a ``problem`` line; ``identical_rounds`` is 1 only when there is none):
- after each kill the checkpoint, if any, loads (it is written atomically);
- every start exits 0 unless killed, the last one included (a dead run's lock or temporary files never block);
- the final ``rounds.jsonl`` equals the reference's in every key except the wall-clock ones (:data:`WALL_CLOCK_KEYS`),
  and so does ``summary.json``;
- rounds 0..R appear once each, and every record a checkpoint held when a kill landed is in the final log verbatim,
  wall clock included (resumed from the checkpoint, never recomputed);
- no temporary file is left in the run folder.

Output: one line per kill on stderr (when it landed, the checkpoint's round before and after); then one ``key value``
line each: ``sigkills``, ``kills_during_checkpoint`` (kills that left a checkpoint's
temporary file behind, planned or not), ``restarts``, ``identical_rounds`` (1|0), ``problems``, ``seconds`` (the
killed run's starts, all together) and ``reference_seconds``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fedmoe.config import SCALES
from fedmoe.results import CHECKPOINT_FILE, ENVIRONMENT_FILE, ROUNDS_FILE, CheckpointError, RunFolder

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "reproduce" / "configs" / "quickstart.yaml"
WALL_CLOCK_KEYS = frozenset({"wall_time", "server_wall_seconds", "measured_seconds"})
POLL_SECONDS = 0.01
CHECKPOINT_PAUSE_SECONDS = 3.0


@dataclass
class CrashReport:
    """What :func:`crash_test` saw (see the module docstring)."""

    sigkills: int = 0
    kills_during_checkpoint: int = 0
    restarts: int = 0
    seconds: float = 0.0
    reference_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    kill_log: list[str] = field(default_factory=list)  # one line per kill: when, and what the checkpoint held

    @property
    def identical_rounds(self) -> bool:
        """Whether the killed run ended as the reference did, every check passing."""
        return not self.problems

    def lines(self) -> list[str]:
        """The ``key value`` lines the benchmark prints."""
        return [f"sigkills {self.sigkills}", f"kills_during_checkpoint {self.kills_during_checkpoint}",
                f"restarts {self.restarts}", f"identical_rounds {int(self.identical_rounds)}",
                f"problems {len(self.problems)}", f"seconds {self.seconds:.1f}",
                f"reference_seconds {self.reference_seconds:.1f}"]


def without_wall_clock(value):
    """``value`` (a round record, or anything in one) without the keys in :data:`WALL_CLOCK_KEYS`, at any depth."""
    if isinstance(value, dict):
        return {k: without_wall_clock(v) for k, v in value.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(value, list):
        return [without_wall_clock(v) for v in value]
    return value


class Child:
    """One ``fedmoe run`` subprocess leading its own session, its output in ``log``."""

    def __init__(self, command: list[str], log: Path):
        self.log = log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)
        self.started = time.perf_counter()

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group and every descendant (some may have left the group), and reap them."""
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()
        psutil.wait_procs(family, timeout=30)

    def tail(self, chars: int = 600) -> str:
        return self.log.read_text(errors="replace")[-chars:].strip()


def fedmoe_command(config: Path, scale: str, overrides: list[str], engine: str, out: Path, name: str,
                   pause: float | None = None) -> list[str]:
    """``fedmoe run`` of the config into ``out/name``; through ``paused_save.py`` when ``pause`` is given."""
    prefix = ([sys.executable, str(REPO / "reproduce" / "paused_save.py"), str(pause)] if pause is not None
              else [sys.executable, "-m", "fedmoe.cli"])
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [*prefix, "run", str(config), "--scale", scale, *sets, "--engine", engine, "--out", str(out),
            "--name", name]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _checkpoint_temporaries(folder: Path) -> set[Path]:
    return set(folder.glob(f".{CHECKPOINT_FILE}.*.tmp"))


def _wait(child: Child, condition, timeout: float) -> bool:
    """Poll until ``condition()`` holds while ``child`` runs (True), or it exits or time runs out (False)."""
    deadline = time.perf_counter() + timeout
    while child.running() and time.perf_counter() < deadline:
        if condition():
            return True
        time.sleep(POLL_SECONDS)
    return False


class KillRule:
    """When to kill the start about to be launched into ``folder`` (call it: true means now).

    With ``nth`` (the start pauses its checkpoint writes): as soon as the ``nth`` checkpoint temporary it writes
    holds bytes. Otherwise at ``point`` of the run's progress, in round units: the work of round ``u`` (its training,
    evaluation, record) is ``[u, u + 1)``, so the kill lands in the round ``int(point)`` (or in the start's first
    round, if the checkpoint is past it), the fraction ``point % 1`` of that round's time in the reference
    (:meth:`Timeline.duration`) after the start began it (at ready, or when the previous round's record appeared).
    If the start appends the round's record before, the kill lands then (``clamped``)."""

    def __init__(self, folder: Path, timeline: Timeline, done: int, point: float = 0.0, nth: int | None = None):
        self.folder, self.nth = folder, nth
        self.env_before, self.tmp_before = _identity(folder / ENVIRONMENT_FILE), _checkpoint_temporaries(folder)
        self.written: set[Path] = set()  # checkpoint temporaries seen holding bytes
        self.round = max(int(point), done)
        self.seconds = (point % 1) * timeline.duration(self.round, first=self.round == done)
        self.done, self.began, self.rounds_seen, self.clamped = done, None, None, False

    def __call__(self) -> bool:
        if self.nth is not None:
            self.written |= {p for p in _checkpoint_temporaries(self.folder) - self.tmp_before if _size(p) > 0}
            return len(self.written) >= self.nth
        rounds = _identity(self.folder / ROUNDS_FILE)
        if self.rounds_seen is None:  # not ready yet
            if _identity(self.folder / ENVIRONMENT_FILE) == self.env_before:
                return False
            self.rounds_seen = rounds
            if self.round == self.done:
                self.began = time.perf_counter()
        elif rounds != self.rounds_seen:  # the log was written (or truncated) since last seen
            self.rounds_seen = rounds
            last = max(_round_lines(self.folder / ROUNDS_FILE), default=-1)
            if self.began is None and last >= self.round - 1:
                self.began = time.perf_counter()
            if last >= self.round:
                self.clamped = True
                return True
        return self.began is not None and time.perf_counter() >= self.began + self.seconds


@dataclass
class Timeline:
    """The reference run's clock in seconds after it was ready: when each round's record appeared, and its end."""

    records: dict[int, float]
    end: float

    def duration(self, round_: int, first: bool = False) -> float:
        """Seconds of round ``round_``'s work in the reference (round 0: its evaluation after ready); the ``first``
        round of a resumed start lasts at least as long as the reference's round 1, which holds what every start
        pays before its first round is done (with Flower, Ray's workers starting and building client halves)."""
        seconds = self.records.get(round_, self.end) - self.records.get(round_ - 1, 0.0)  # past the last: the end
        return max(seconds, self.records[1] - self.records[0]) if first and round_ >= 1 else seconds


def reference_run(command: list[str], folder: Path, log: Path) -> tuple[Timeline, float]:
    """Run the reference uninterrupted, watching its round log; returns its :class:`Timeline` and total seconds."""
    child, seen = Child(command, log), {}
    ready: list[float] = []

    def watch() -> bool:
        if not ready and (folder / ENVIRONMENT_FILE).exists():
            ready.append(time.perf_counter())
        for r in _round_lines(folder / ROUNDS_FILE):
            seen.setdefault(r, time.perf_counter())
        return False

    _wait(child, watch, timeout=24 * 3600)
    end = time.perf_counter()
    if child.proc.wait() != 0 or not ready:
        raise RuntimeError(f"the reference run failed (see {child.log}):\n{child.tail()}")
    return Timeline({r: t - ready[0] for r, t in seen.items()}, end - ready[0]), end - child.started


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _round_lines(path: Path) -> dict[int, str]:
    """Round -> its line as written, for the readable lines of a round log (a cut last line is skipped)."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out[json.loads(line)["round"]] = line
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return out


def crash_test(engine: str = "inprocess", kills: int = 10, seed: int = 0, workdir: str | Path | None = None, *,
               checkpoint_kills: int = 2, config: str | Path = CONFIG, scale: str = "smoke",
               overrides: tuple[str, ...] = ("fed.rounds=6",)) -> CrashReport:
    """Run the reference, then the killed-and-restarted run, and check them (see the module docstring)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedmoe-crash-"))
    config, overrides = Path(config), list(overrides)
    taken = [p for p in (workdir / "reference", workdir / "crashed") if p.exists()]
    if taken:
        raise FileExistsError(f"{taken[0]} exists: give a fresh --workdir (both runs must start from nothing)")
    workdir.mkdir(parents=True, exist_ok=True)
    report = CrashReport()

    ref_folder = workdir / "reference"
    timeline, report.reference_seconds = reference_run(
        fedmoe_command(config, scale, overrides, engine, workdir, ref_folder.name), ref_folder, workdir / "reference.log")
    limit = 3 * report.reference_seconds + 300
    total_rounds = RunFolder(ref_folder).config_dict()["fed"]["rounds"]

    rng = random.Random(seed)
    points = sorted(rng.uniform(0, total_rounds + 1) for _ in range(kills))
    early = math.ceil(kills / 2)
    at_checkpoint = set(rng.sample(range(early), min(checkpoint_kills, early)))

    folder = RunFolder(workdir / "crashed")
    held: dict[int, str] = {}  # records a checkpoint held when a kill landed
    attempt = 0
    while True:
        ckpt = folder.load_checkpoint() if folder.checkpoint_path.exists() else None
        done = ckpt["round"] + 1 if ckpt else 0  # rounds 0..done-1 are checkpointed
        killing = attempt < kills
        pause = CHECKPOINT_PAUSE_SECONDS if killing and attempt in at_checkpoint and done <= total_rounds else None
        tmp_before = _checkpoint_temporaries(folder.path)
        due = None
        if killing and done <= total_rounds:
            due = (KillRule(folder.path, timeline, done, nth=1) if pause is not None
                   else KillRule(folder.path, timeline, done, point=points[attempt]))
        elif killing:  # every round is checkpointed, only the summary is left: kill as soon as it is ready
            due = KillRule(folder.path, timeline, done, point=done)
        child = Child(fedmoe_command(config, scale, overrides, engine, workdir, folder.path.name, pause),
                      workdir / f"crashed-{attempt}.log")
        killed = due is not None and _wait(child, due, limit)
        if killed:
            child.kill()
            report.sigkills += 1
        else:
            try:
                child.proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                child.kill()
                report.problems.append(f"start {attempt} did not finish within {limit:.0f} s (log {child.log})")
                break
        report.seconds += time.perf_counter() - child.started
        attempt += 1
        if not killed:
            if child.proc.returncode != 0:
                report.problems.append(f"start {attempt - 1} exited {child.proc.returncode}: {child.tail()}")
            break
        report.restarts += 1
        mid_write = bool(_checkpoint_temporaries(folder.path) - tmp_before)
        report.kills_during_checkpoint += mid_write
        try:
            ckpt = folder.load_checkpoint()
        except CheckpointError as err:
            report.problems.append(f"after kill {report.sigkills}: {err}")
            break
        how = (f"in checkpoint write {due.nth} of the start" if pause is not None
               else f"in round {due.round}, {due.seconds:.1f} s in" + (", at its record" if due.clamped else ""))
        report.kill_log.append(f"kill {report.sigkills}: {time.perf_counter() - child.started:.1f} s after its start "
                               f"({how}); it began at round {done}, the checkpoint now holds round "
                               f"{ckpt['round'] if ckpt else None}{' (a checkpoint write cut short)' if mid_write else ''}")
        if ckpt is not None:
            lines = _round_lines(folder.rounds_path)
            held.update({r: line for r, line in lines.items() if r <= ckpt["round"]})
    report.problems += compare(ref_folder, folder.path, held, total_rounds)
    return report


def compare(reference: Path, crashed: Path, held: dict[int, str], total_rounds: int) -> list[str]:
    """The problems of the finished ``crashed`` run against the ``reference`` (see the module docstring)."""
    problems = []
    ref, run = RunFolder(reference), RunFolder(crashed)
    if not run.has_summary():
        return [f"{crashed} has no summary: the run never finished"]
    rounds = [r["round"] for r in run.rounds()]
    if rounds != list(range(total_rounds + 1)):
        problems.append(f"rounds {rounds}, expected 0..{total_rounds} once each")
    expected, got = map(without_wall_clock, ref.rounds()), map(without_wall_clock, run.rounds())
    for r, (a, b) in enumerate(zip(expected, got, strict=False)):  # a length mismatch is named above
        if a != b:
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            problems.append(f"round {r} differs from the reference in {keys}")
    if without_wall_clock(ref.summary()) != without_wall_clock(run.summary()):
        problems.append("summary.json differs from the reference")
    final = _round_lines(run.rounds_path)
    recomputed = sorted(r for r, line in held.items() if final.get(r) != line)
    if recomputed:
        problems.append(f"rounds {recomputed} were checkpointed before a kill but written anew (not resumed)")
    leftovers = sorted(p.name for p in crashed.glob(".*.tmp"))
    if leftovers:
        problems.append(f"temporary files left in {crashed}: {leftovers}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run :func:`crash_test` and print its ``key value`` lines (and each problem)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["inprocess", "flower"], default="inprocess")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs before the run is left to finish")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and of the checkpoint kills")
    parser.add_argument("--checkpoint-kills", type=int, default=2,
                        help="kills planned in the middle of a checkpoint write (among the first half)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                        help="config override (repeatable; default: fed.rounds=6)")
    parser.add_argument("--workdir", type=Path, help="where the two run folders and the logs go (default: a new "
                                                     "temporary folder, kept)")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.checkpoint_kills < 0:
        parser.error("--kills and --checkpoint-kills must be >= 0")
    report = crash_test(args.engine, args.kills, args.seed, args.workdir, checkpoint_kills=args.checkpoint_kills,
                        config=args.config, scale=args.scale, overrides=tuple(args.overrides or ["fed.rounds=6"]))
    print("\n".join(report.kill_log), file=sys.stderr)
    print("\n".join(report.lines()))
    for problem in report.problems:
        print(f"problem {problem}")
    return 0 if report.identical_rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())

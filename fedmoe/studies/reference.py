"""The reference run: one small run whose every logged number is committed, so a machine can check it reproduces
the kit exactly before anyone trusts its report.

FedIT, seed 0, on the quickstart at the classroom scale: its scores are far from zero (a run that learns nothing
would agree everywhere and prove nothing), and it takes a couple of CPU minutes with pretraining. The committed
file (``tests/data/reference_run.json``) holds the environment fingerprint it was made in and, per round, the train
loss, the score with its bootstrap interval over test items, and every item's score. :func:`check` then says which
promise applies here: in the same environment (:func:`fedmoe.environment.drift` finds nothing) every number must
be identical; elsewhere (another CPU capability or library version) every score must fall inside its committed
interval. ``python -m fedmoe.studies.reference [--write]`` measures (and rewrites the file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.environment import drift
from fedmoe.results import RunFolder
from fedmoe.stats import bootstrap_ci
from fedmoe.studies.quickstart import CONFIG

REFERENCE_FILE = CONFIG.parents[2] / "tests" / "data" / "reference_run.json"
SCALE = "classroom"
OVERRIDES = {"method": "fedit", "seed": 0}


def measure(out_dir: str | Path) -> dict:
    """Run the reference config in this process into ``out_dir``; its fingerprint and per-round numbers."""
    folder = RunFolder(run(load_config(CONFIG, OVERRIDES, scale=SCALE), out_dir=out_dir, progress=False))
    rounds = []
    for record in folder.rounds():
        row = {"round": record["round"], "train_loss": record.get("train_loss")}
        if "score" in record:
            interval = bootstrap_ci(record["item_scores"])
            row |= {"score": record["score"], "score_lo": interval.lo, "score_hi": interval.hi,
                    "item_scores": record["item_scores"]}
        rounds.append(row)
    return {"scale": SCALE, "overrides": OVERRIDES, "environment": json.loads(folder.environment_path.read_text()),
            "rounds": rounds}


def check(reference: dict, measured: dict) -> tuple[str, list[str]]:
    """``(promise, problems)``: ``"exact"`` where the environment matches the reference's (every number
    identical), else ``"within intervals"`` (every score inside its committed bootstrap interval); ``problems``
    lists each violation in words (empty: reproduced)."""
    differences = drift(reference["environment"], measured["environment"])
    ref_rounds, got_rounds = reference["rounds"], measured["rounds"]
    if [r["round"] for r in ref_rounds] != [r["round"] for r in got_rounds]:
        return ("exact" if not differences else "within intervals"), [
            f"rounds differ: reference {[r['round'] for r in ref_rounds]}, here {[r['round'] for r in got_rounds]}"]
    problems = []
    if not differences:
        for ref, got in zip(ref_rounds, got_rounds, strict=True):
            problems += [f"round {ref['round']} {key}: reference {ref.get(key)!r}, here {got.get(key)!r}"
                         for key in ("train_loss", "score", "item_scores") if ref.get(key) != got.get(key)]
        return "exact", problems
    for ref, got in zip(ref_rounds, got_rounds, strict=True):
        if "score" in ref and not ref["score_lo"] <= got["score"] <= ref["score_hi"]:
            problems.append(f"round {ref['round']} score {got['score']:.4f} outside the reference's interval "
                            f"[{ref['score_lo']:.4f}, {ref['score_hi']:.4f}] (here: {'; '.join(differences)})")
    return "within intervals", problems


def main(argv: list[str] | None = None) -> int:
    """Measure the reference run; print the promise that applies and any violation; ``--write`` rewrites the
    committed file instead (after a deliberate change: a new lock, a kit change that moves numbers)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {REFERENCE_FILE.name} with this machine's run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedmoe-reference-") as tmp:
        measured = measure(tmp)
    if args.write:
        REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE_FILE.write_text(json.dumps(measured, indent=1, sort_keys=True) + "\n")
        print(f"wrote {REFERENCE_FILE}")
        return 0
    promise, problems = check(json.loads(REFERENCE_FILE.read_text()), measured)
    print(f"reference run: promise {promise}: " + ("reproduced" if not problems else "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""The environment fingerprint: the lock is read and checked, runs' fingerprints fold into a section's, and a
changed library version is said before a reproduction runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedmoe import environment as envmod
from fedmoe.environment import common_fingerprint, drift, drift_meaning, environment, lock_pins, lock_status
from fedmoe.report import drift_notice, load_sections, save_section
from fedmoe.results import READ_RUNS, load_rounds

REPO = Path(__file__).resolve().parents[1]


def test_lock_pins_read_hashed_lines(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nNumPy==2.4.6 \\\n    --hash=sha256:ab\ntorch==2.13.0+cpu \\\n    --hash=sha256:cd\n")
    assert lock_pins(lock) == {"numpy": "2.4.6", "torch": "2.13.0+cpu"}


def test_lock_status_names_each_package_that_differs(tmp_path):
    import numpy

    lock = tmp_path / "requirements.lock"
    lock.write_text(f"numpy=={numpy.__version__}\npytest==0.0.1\n")
    status = lock_status(lock)
    assert not status["matches"]
    assert status["differs"] == {"pytest": {"locked": "0.0.1", "installed": pytest.__version__}}
    lock.write_text(f"numpy=={numpy.__version__}\n")
    assert lock_status(lock)["matches"] and lock_status(lock)["differs"] == {}
    assert lock_status(tmp_path / "missing.lock") is None


def test_the_repository_lock_pins_what_pyproject_needs():
    pins = lock_pins(envmod.LOCK_FILE)
    for name in ("torch", "transformers", "peft", "flwr", "bitsandbytes", "numpy", "papermill", "nbval", "pytest"):
        assert name in pins, f"{name} missing from {envmod.LOCK_FILE.name}: run `make lock`"
    assert pins["flwr"] == "1.41.0" and pins["torch"].startswith("2.13.0")
    assert all("--hash=sha256:" in block for block in envmod.LOCK_FILE.read_text().split("==")[1:]), \
        "every pin carries its hashes"


def test_environment_yml_pins_the_lock():
    yml = (REPO / "environment.yml").read_text()
    pins = lock_pins(envmod.LOCK_FILE)
    listed = dict(line.strip()[2:].split("==", 1) for line in yml.splitlines() if "==" in line)
    assert {envmod._normalise(k): v for k, v in listed.items()} == pins


def fingerprint(**changes):
    base = {key: "x" for key in envmod.EXACT_FIELDS} | {"torch_threads": 1, "lock": {"sha256": "s", "matches": True}}
    return base | changes


def test_common_fingerprint_keeps_agreement_and_lists_disagreement():
    env = common_fingerprint([fingerprint(), fingerprint(transformers="5.25.0")])
    assert env["runs"] == 2 and env["torch"] == "x" and env["lock_sha256"] == "s" and env["lock_matches"]
    assert env["transformers"] == ["5.25.0", "x"]
    assert common_fingerprint([]) is None


def test_drift_names_a_changed_version_and_ignores_the_callers_threads():
    recorded = common_fingerprint([fingerprint()])
    assert drift(recorded, fingerprint(torch_threads=2)) == []
    lines = drift(recorded, fingerprint(transformers="9.9.9"))
    assert lines == ["transformers: recorded x, here 9.9.9"]
    assert "will not reproduce" in drift_meaning(lines) and "library version" in drift_meaning(lines)
    assert "CPU capability" in drift_meaning(drift(recorded, fingerprint(cpu_capability="AVX512")))
    assert "exactly" in drift_meaning([])


def test_a_section_records_the_fingerprint_of_the_runs_it_read(tmp_path, fake_run):
    READ_RUNS.clear()
    here = environment()
    for seed in (0, 1):
        folder = fake_run(tmp_path / f"run{seed}", seed, [[0, 1], [1, 1]])
        (folder / "environment.json").write_text(json.dumps(here))
        load_rounds(folder)
    save_section(tmp_path / "report", "demo")
    READ_RUNS.clear()
    section, = load_sections(tmp_path / "report")
    assert section.environment["runs"] == 2 and section.environment["torch"] == here["torch"]
    assert drift_notice([section], here).startswith("environment: matches")
    changed = here | {"peft": "0.0.0-changed"}
    notice = drift_notice([section], changed)
    assert "demo: peft: recorded" in notice and "0.0.0-changed" in notice and "will not reproduce" in notice


def test_run_notebooks_says_a_changed_library_version_before_running(tmp_path):
    here = environment()
    recorded = common_fingerprint([here | {"transformers": "0.0.1"}])
    save_section(tmp_path / "report", "quickstart", environment=recorded)
    out = subprocess.run([sys.executable, str(REPO / "reproduce" / "run_notebooks.py"), "--list", "--report",
                          str(tmp_path / "report"), "--only", "quickstart"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    first, *_ = out.splitlines()
    assert first.startswith("environment: 1 of 1 report sections were measured elsewhere")
    assert f"transformers: recorded 0.0.1, here {here['transformers']}" in out
    assert out.strip().endswith("notebooks/00_quickstart.ipynb")

"""What a run's numbers depend on beyond its config: the environment fingerprint, the lock file, and drift.

A run is a deterministic function of its resolved config and of this fingerprint (library versions, the CPU
capability torch dispatches to, torch threads, device and dtype). :func:`environment` reads it for the current
process (each run writes it to ``environment.json``); :func:`lock_status` says whether the installed packages are
exactly those of the repository's lock file (``reproduce/requirements.lock``, written by ``make lock``);
:func:`common_fingerprint` folds many runs' fingerprints into the one a report section records; and
:func:`drift` lists, in words, how a recorded fingerprint differs from another, and :func:`drift_meaning` what
that means for reproducing its numbers exactly.
"""

from __future__ import annotations

import hashlib
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: The lock file ``make setup`` installs and ``make lock`` writes (repository checkouts only).
LOCK_FILE = Path(__file__).resolve().parents[1] / "reproduce" / "requirements.lock"
#: Packages whose version is recorded by name: the ones that compute (a full list is in the lock).
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "tokenizers", "flwr", "numpy", "scipy",
            "scikit-learn", "rouge-score")
#: Fields that decide bit-identical scores (threads are fixed at one per run by the study grid).
EXACT_FIELDS = ("python", *PACKAGES, "cpu_capability", "machine", "device", "dtype", "gpu", "torch_threads")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def lock_pins(path: str | Path = LOCK_FILE) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a lock file."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_normalise(match.group(1))] = match.group(2)
    return pins


def lock_status(path: str | Path = LOCK_FILE) -> dict[str, Any] | None:
    """The lock file's short hash and the pinned packages whose installed version differs (``None`` without a
    lock file, e.g. when the kit is installed from a wheel into the user's own environment)."""
    path = Path(path)
    if not path.is_file():
        return None
    differs = {name: {"locked": version, "installed": installed_version(name)}
               for name, version in lock_pins(path).items() if installed_version(name) != version}
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "matches": not differs,
            "differs": dict(sorted(differs.items()))}


def environment(device: str = "cpu", dtype: str = "float32") -> dict[str, Any]:
    """The fingerprint of this process: ``device`` and ``dtype`` as resolved (``auto`` already replaced by the
    device used), the GPU's name on a CUDA device, and the lock's status."""
    import torch

    return {
        "python": sys.version.split()[0],
        **{name: installed_version(name) for name in PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "device": device,
        "dtype": dtype,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
        "lock": lock_status(),
    }


def common_fingerprint(fingerprints: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """What many runs' fingerprints share: each :data:`EXACT_FIELDS` value, or the sorted list of values where the
    runs disagree; the lock hash the same way, and ``runs``, how many fingerprints went in (``None`` for none)."""
    prints = list(fingerprints)
    if not prints:
        return None
    out: dict[str, Any] = {"runs": len(prints)}
    lock_hashes = [(p.get("lock") or {}).get("sha256") for p in prints]
    for key, values in [*((k, [p.get(k) for p in prints]) for k in EXACT_FIELDS), ("lock_sha256", lock_hashes)]:
        distinct = sorted({str(v) for v in values}) if len({str(v) for v in values}) > 1 else None
        out[key] = distinct if distinct else values[0]
    out["lock_matches"] = all((p.get("lock") or {}).get("matches", False) for p in prints)
    return out


def drift(recorded: dict[str, Any], current: dict[str, Any], fields: Sequence[str] = EXACT_FIELDS) -> list[str]:
    """One line per field that differs between a recorded fingerprint and ``current`` (``[]`` when they agree
    on every field both record); a recorded list (runs that disagreed) counts as a difference."""
    lines = []
    for key in fields:
        if key not in recorded or key not in current:
            continue
        if key == "torch_threads" and recorded[key] == 1:  # runs use one thread whatever the caller's count
            continue
        was, now = recorded[key], current[key]
        if isinstance(was, list):
            lines.append(f"{key}: the recorded runs disagree ({', '.join(map(str, was))}); here {now}")
        elif was != now:
            lines.append(f"{key}: recorded {was}, here {now}")
    return lines


def drift_meaning(lines: Sequence[str]) -> str:
    """What a drift means for exact reproduction, in one sentence."""
    if not lines:
        return "This environment matches the recorded one: the runs should reproduce every score exactly."
    capability_only = all(line.startswith(("cpu_capability", "processor")) for line in lines)
    why = ("another CPU capability makes torch pick other kernels, whose float round-off differs"
           if capability_only else "another library version or device can change any float operation")
    return (f"Scores will not reproduce to the last digit ({why}, and fine-tuning amplifies round-off); the "
            f"promise that holds is weaker: the same verdicts, with every score inside its recorded interval.")

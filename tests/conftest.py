"""Shared test setup: offline Hugging Face, quiet warnings, the `tiny_moe` model factory and the `fake_run`
run-folder factory."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Nothing leaves the machine: no Flower/Ray/HF telemetry, Ray bound to loopback.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tiny models run fastest single-threaded; with 2 threads on a busy 2-core machine OpenMP spin-waiting
# made a millisecond forward pass take over a second.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def build_tiny_moe(family: str, *, seed: int = 0, **config_overrides):
    """A tiny random-init causal LM of ``family`` in eval mode (see fedmoe.moe.families.tiny_config)."""
    import transformers

    from fedmoe.moe.families import tiny_config

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, **config_overrides))
    return model.eval()


@pytest.fixture
def tiny_moe():
    """Factory fixture: ``tiny_moe(family, seed=0, **tiny_config_overrides) -> model`` (fresh each call)."""
    return build_tiny_moe


def write_fake_run(folder, seed, items_per_round):
    """A run folder as the runner writes it (config.yaml + rounds.jsonl), one evaluated round per entry of
    ``items_per_round`` (hand-chosen per-item scores)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "method": "m"}))
    lines = [{"round": r, "score": float(np.mean(items)), "item_scores": items, "sim_time": r, "wall_time": r}
             for r, items in enumerate(items_per_round)]
    (folder / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


@pytest.fixture
def fake_run():
    """Factory fixture: ``fake_run(folder, seed, items_per_round) -> folder`` (see :func:`write_fake_run`)."""
    return write_fake_run


@pytest.fixture(autouse=True)
def _fresh_read_runs():
    """Each test starts with no run folders read: a report section records the environment of the runs this
    process has read (``fedmoe.results.READ_RUNS``), which must not leak from one test into another."""
    from fedmoe.results import READ_RUNS

    READ_RUNS.clear()
    yield
    READ_RUNS.clear()

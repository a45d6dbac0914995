"""FLUX's experiments as functions (the notebooks and ``reproduce/bench_flux.py`` narrate and print them).

Every run goes through :func:`fedmoe.experiment.run` (finished runs are reused), configured from
``reproduce/configs/flux.yaml`` (which holds the sizes of every scale). Tables are computed from run folders only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.fl.devices import get_device
from fedmoe.results import curve, load_rounds, load_summary

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "reproduce" / "configs" / "flux.yaml"
METHODS = ("flux", "fmd", "fmq", "fmes", "fedit-nf4")
BASELINES = ("fmd", "fmq", "fmes", "fedit-nf4")
SUITES = ("dolly", "gsm", "mmlu")



def flux_config(method: str, suite: str = "gsm", *, scale: str = "default", seed: int = 0,
                overrides: dict[str, Any] | None = None, method_args: dict[str, Any] | None = None):
    """The run config of ``method`` on ``suite`` at ``scale`` (the YAML with its ``scale`` block <- ``overrides``).

    ``paper`` expects ``model.path`` (and ``data.source``) in ``overrides``: real checkpoints and datasets.
    """
    over = {"method": method, "seed": seed, "data.suite": suite, **(overrides or {})}
    if method_args:
        over["method_args"] = dict(method_args)
    return load_config(CONFIG, over, scale=scale)


def run_flux(method: str, suite: str = "gsm", *, out_dir: str | Path, progress: bool = False, **kwargs) -> Path:
    """Run (or reuse) one configuration; returns its results folder."""
    return run(flux_config(method, suite, **kwargs), out_dir=out_dir, progress=progress)


def target_score(folders: dict[str, Path], fraction: float = 0.9, reference: str = "fmd") -> float:
    """The time-to-accuracy target, fixed before comparing times: the base model's score plus ``fraction`` of
    the improvement the reference method (FMD, the whole model) reaches by its last round."""
    summary = load_summary(folders[reference])
    return summary["initial_score"] + fraction * (summary["final_score"] - summary["initial_score"])


def trained_time_to_target(folder: Path, target: float) -> float | None:
    """First simulated time at which a *trained* round (round >= 1) scores at least ``target``; None if never."""
    for rec in load_rounds(folder):
        if rec["round"] >= 1 and "score" in rec and rec["score"] >= target:
            return rec["sim_time"]
    return None


def fits_devices(folder: Path) -> bool:
    """Whether every client's peak memory in the run fits its device (FedIT does not check)."""
    for rec in load_rounds(folder):
        for c, mem in rec.get("peak_memory", {}).items():
            if mem > get_device(rec["devices"][c]).memory_bytes:
                return False
    return True


def speedup_table(folders: dict[str, Path], target: float, flux: str = "flux") -> list[dict[str, Any]]:
    """One row per method: time to ``target`` (simulated s, None if never), speedup of FLUX over it
    (time_method / time_flux; a lower bound ``>= total / time_flux`` when the method never reaches the
    target), final score, mean round seconds and whether it fits every device."""
    t_flux = trained_time_to_target(folders[flux], target)
    rows = []
    for name, folder in folders.items():
        t = trained_time_to_target(folder, target)
        summary = load_summary(folder)
        rounds = [r for r in load_rounds(folder) if r["round"] > 0]
        row = {"method": name, "time_to_target": t, "final_score": summary["final_score"],
               "sim_time": summary["sim_time"], "round_seconds": summary["sim_time"] / max(len(rounds), 1),
               "fits": fits_devices(folder), "speedup": None, "reached": t is not None}
        if t_flux is not None and name != flux:
            row["speedup"] = (t if t is not None else summary["sim_time"]) / t_flux
        rows.append(row)
    return rows


def headline(rows: list[dict[str, Any]], baselines=BASELINES) -> dict[str, float | None]:
    """Speedup over the best (fastest to target) and the slowest of ``baselines``."""
    sp = [r["speedup"] for r in rows if r["method"] in baselines and r["speedup"] is not None]
    return {"best": min(sp) if sp else None, "slowest": max(sp) if sp else None}


def client_memory(folder: Path, full_model_bytes: int) -> list[dict[str, Any]]:
    """Each client's peak memory (max over rounds), its device memory and the share of the full model's."""
    peak, device = {}, {}
    for rec in load_rounds(folder):
        for c, mem in rec.get("peak_memory", {}).items():
            peak[c] = max(peak.get(c, 0), mem)
            device[c] = rec["devices"][c]
    return [{"client": int(c), "device": device[c], "peak_gib": peak[c] / 2**30,
             "device_gib": get_device(device[c]).memory_bytes / 2**30, "vs_full_model": peak[c] / full_model_bytes}
            for c in sorted(peak, key=int)]


def round_shares(folder: Path, server_seconds: float | None = None) -> dict[str, float]:
    """Shares of the simulated round (mean over rounds) taken by FLUX's own work.

    ``profiling``: the slowest client's profiling seconds (before any hiding) / round. ``overhead``: what
    profiling adds to the round, ``(round - R0) / round`` with ``R0 = max_i(total_i - profiling_i) + S`` the
    round without it (merging and assignment take no priced device time). ``overhead_wall``: FLUX's measured
    CPU wall-clock (profiling + merging + assignment) / the rounds' wall-clock.
    """
    from fedmoe.results import load_config_dict

    s = load_config_dict(folder)["cost"]["server_seconds"] if server_seconds is None else server_seconds
    prof, over = [], []
    for rec in load_rounds(folder):
        if rec["round"] == 0:
            continue
        seconds = rec["client_seconds"]
        profile = {c: rec["client_log"].get(c, {}).get("profile_sim_seconds", 0.0) for c in seconds}
        slowest = max(seconds, key=lambda c: seconds[c])
        base = max(seconds[c] - profile[c] for c in seconds) + s
        prof.append(profile[slowest] / rec["round_seconds"])
        over.append(max(0.0, rec["round_seconds"] - base) / rec["round_seconds"])
    n = max(len(prof), 1)
    return {"profiling": sum(prof) / n, "overhead": sum(over) / n, "overhead_wall": _wall_shares(folder)}


def _wall_shares(folder: Path) -> float:
    """FLUX's own measured wall-clock (profiling + merging + assignment) / the clients' round wall-clock."""
    recs = [r for r in load_rounds(folder) if r["round"] > 0]
    own = total = 0.0
    prev = 0.0
    for rec in recs:
        own += sum(e.get(k, 0.0) for e in rec["client_log"].values()
                   for k in ("profile_wall", "merge_wall", "assign_wall"))
        total += rec["wall_time"] - prev
        prev = rec["wall_time"]
    return own / total if total else 0.0


def diagnostics(folder: Path) -> dict[str, float]:
    """Mean profiling error (quantized vs full precision), staleness error, merge output error and round
    seconds over the run's rounds."""
    recs = [r for r in load_rounds(folder) if r["round"] > 0]
    out = {}
    for key in ("profile_error", "stale_error", "merge_error"):
        vals = [r["server"][key] for r in recs if key in r.get("server", {})]
        out[key] = sum(vals) / len(vals) if vals else float("nan")
    out["round_seconds"] = sum(r["round_seconds"] for r in recs) / max(len(recs), 1)
    return out


def merge_ablation(fed, clients: list[int], *, examples: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """Output error of merging each client's non-tuning experts (no tuning experts, its FLUX slot budget) on the
    global base model, for every budget strategy, weighting and drop; profiled at full precision."""
    from fedmoe.methods.flux.budget import flux_budget, layer_merge_budget, priced_model, tiny_count
    from fedmoe.methods.flux.merging import apply_merge, output_error, plan_merge
    from fedmoe.methods.flux.profiling import example_batches, profile_model, profile_subset
    from fedmoe.moe.layers import moe_layers

    base = fed.base_model().eval()
    layers = moe_layers(base)
    num_layers, num_experts = len(layers), layers[0].num_router_experts
    pm = priced_model(fed)
    variants = [("layer_aware", "freq_attention", False), ("uniform", "freq_attention", False),
                ("one_per_layer", "freq_attention", False), ("layer_aware", "frequency", False),
                ("layer_aware", "freq_attention", True)]
    rows = []
    for c in clients:
        batches = example_batches(fed.tokenizer, profile_subset(fed.client_data(c), examples, seed + c),
                                  max_length=fed.cfg.fed.max_length, batch_size=fed.cfg.fed.batch_size)
        prof = profile_model(base, batches)
        b = flux_budget(pm, fed.devices[c], 0.5, 0.25)
        total = min(num_layers * num_experts, tiny_count(b.slots, num_layers * num_experts, num_layers))
        for mode, weights, drop in variants:
            model = copy.deepcopy(base)
            budget = layer_merge_budget(prof.freq, [num_experts] * num_layers, total, mode)
            apply_merge(model, plan_merge(model, [[] for _ in range(num_layers)], budget, prof, weights=weights,
                                          drop=drop, seed=seed))
            rows.append({"client": c, "device": fed.devices[c].name, "slots": total, "budget": mode,
                         "weights": weights, "drop": drop, "per_layer": budget,
                         "output_error": output_error(base, model.eval(), batches)})
    return rows


def score_curve(folder: Path, x: str = "sim_time") -> tuple[list[float], list[float]]:
    """Score against ``x`` (re-exported for notebooks)."""
    return curve(folder, x)

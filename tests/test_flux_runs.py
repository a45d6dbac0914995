"""FLUX and its baselines through one round on the smoke federation, and FLUX's exact resume."""

import json

import pytest
import torch

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.fl.cost import ClientWork, check_fits
from fedmoe.fl.federation import Federation
from fedmoe.methods.base import get_method
from fedmoe.methods.experts.base import parse_key
from fedmoe.results import load_rounds

CONFIG = "reproduce/configs/flux.yaml"


def _cfg(method="flux", **over):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return load_config(root / CONFIG, {"method": method, "fed.rounds": 2, "fed.local_steps": 2, **over}, scale="smoke")


@pytest.fixture(scope="module")
def fed():
    return Federation.from_config(_cfg())


def _halves(fed, name, args=None):
    spec = get_method(name)
    return spec.server(fed, args), spec.client(fed, args)


def test_flux_client_uploads_only_tuning_experts_and_fits(fed):
    method, client = _halves(fed, "flux", {"profile_examples": 8})
    tasks = method.plan(1, [0, 1])
    updates = [client.update(t) for t in tasks]
    before = {k: v.clone() for k, v in method.global_state.items()}
    for task, update in zip(tasks, updates, strict=True):
        tuning = {(layer, e) for layer, t in enumerate(task.plan["tuning"]) for e in t}
        assert {parse_key(k)[:2] for k in update.tensors} == tuning
        assert len(tuning) == method.budget(task.client_id).tune
        check_fits(ClientWork.from_dict(update.work), fed.devices[task.client_id])
        assert sum(update.diagnostics["slots"]) <= len(tuning) + method.budget(task.client_id).slots
        assert 0 <= update.diagnostics["profile_error"] <= 2 and update.diagnostics["stale"] is False
        assert set(update.payload["grad_sq"]) == {f"{layer}.{e}" for layer, e in tuning}
    method.aggregate(1, updates)
    uploaded = {parse_key(k)[:2] for u in updates for k in u.tensors}
    for key, value in method.global_state.items():
        layer = int(key.split(".")[0])
        for e in range(value.shape[0]):
            if (layer, e) not in uploaded:
                assert torch.equal(value[e], before[key][e])  # nobody trained it: unchanged
    assert not torch.isnan(method.utilities[tasks[0].client_id]).all()
    assert set(method.profiles) == {0, 1}
    nxt = method.plan(2, [0])[0]
    assert nxt.plan["profile"] == method.profiles[0]  # stale profiling: round 2 merges with round 1's profile


def test_baselines_price_offloading_dropping_and_quantization(fed):
    fmd, fmd_client = _halves(fed, "fmd")
    task = fmd.plan(1, [0])[0]
    u = fmd_client.update(task)
    pm, res = fmd_client.pm, fmd_client.budget(0)
    steps = u.metrics["steps"]
    assert u.work["host_device_bytes"] == (pm.total_experts - res) * (2 * pm.expert_bytes[16] + pm.expert_bytes[16]) * steps
    check_fits(ClientWork.from_dict(u.work), fed.devices[0])
    assert len(u.tensors) == 2 * len(u.expert_tokens) * len(u.expert_tokens[0])  # every expert, both tensors
    fmq, fmq_client = _halves(fed, "fmq")
    uq = fmq_client.update(fmq.plan(1, [0])[0])
    assert uq.work["host_device_bytes"] < u.work["host_device_bytes"] and uq.work["bytes_down"] < u.work["bytes_down"]
    assert uq.work["memory_bytes"] <= fed.devices[0].memory_bytes
    fmes, fmes_client = _halves(fed, "fmes", {"profile_examples": 8})
    ue = fmes_client.update(fmes.plan(1, [0])[0])
    kept = ue.diagnostics["kept"]
    assert {parse_key(k)[:2] for k in ue.tensors} == {(layer, e) for layer, idx in enumerate(kept) for e in idx}
    assert all(len(idx) == fmes.budget(0).kept for idx in kept)
    for layer, row in enumerate(ue.expert_tokens):
        assert all(row[e] == 0 for e in range(len(row)) if e not in kept[layer])  # dropped experts saw nothing
    check_fits(ClientWork.from_dict(ue.work), fed.devices[0])


@pytest.mark.slow
def test_flux_resume_is_exact(tmp_path):
    cfg = _cfg(**{"method_args": {"profile_examples": 8}})
    full = run(cfg, out_dir=tmp_path / "a", progress=False)
    run(cfg, out_dir=tmp_path / "b", progress=False, stop_after=1)
    resumed = run(cfg, out_dir=tmp_path / "b", progress=False)
    keys = ("round", "score", "sim_time", "round_seconds", "peak_memory", "server")
    a = [{k: r.get(k) for k in keys} for r in load_rounds(full)]
    b = [{k: r.get(k) for k in keys} for r in load_rounds(resumed)]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    sa = torch.load(full / "checkpoint.pt", weights_only=True)["method"]
    sb = torch.load(resumed / "checkpoint.pt", weights_only=True)["method"]
    assert torch.equal(torch.nan_to_num(sa["utilities"], -1.0), torch.nan_to_num(sb["utilities"], -1.0))
    assert all(torch.equal(sa["global"][k], sb["global"][k]) for k in sa["global"])


def test_fedit_nf4_fits_the_smallest_device_where_bf16_fedit_does_not(fed):
    from fedmoe.fl.cost import DoesNotFitError

    small = min(range(len(fed.devices)), key=lambda c: fed.devices[c].memory_bytes)
    q, q_client = _halves(fed, "fedit-nf4")
    u = q_client.update(q.plan(1, [small])[0])
    check_fits(ClientWork.from_dict(u.work), fed.devices[small])
    plain, plain_client = _halves(fed, "fedit")
    up = plain_client.update(plain.plan(1, [small])[0])
    with pytest.raises(DoesNotFitError):
        check_fits(ClientWork.from_dict(up.work), fed.devices[small])
    base_w = fed.base_model().model.layers[0].self_attn.q_proj.weight
    q_w = q.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.equal(base_w, q_w) and torch.allclose(base_w, q_w, atol=0.2 * float(base_w.abs().max()))

"""FLUX and its baselines through one round on the smoke federation, and FLUX's exact resume."""

import json

import pytest
import torch

from fedmoe.config import load_config
from fedmoe.engines import run
from fedmoe.fl.cost import ClientWork, check_fits
from fedmoe.fl.federation import Federation
from fedmoe.fl.pricing import lora_params
from fedmoe.methods.base import get_method
from fedmoe.methods.experts.attention import split_attention
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
    method, client = _halves(fed, "flux", {"profile_examples": 8, "exploration": "train", "zo_probes": 0,
                                           "attention": "none"})
    tasks = method.plan(1, [0, 1])
    updates = [client.update(t) for t in tasks]
    before = {k: v.clone() for k, v in method.global_state.items()}
    for task, update in zip(tasks, updates, strict=True):
        tuning = {(layer, e) for layer, t in enumerate(update.diagnostics["roles"]["trained"]) for e in t}
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
    experts, attention = split_attention(u.tensors)
    assert len(experts) == 2 * len(u.expert_tokens) * len(u.expert_tokens[0])  # every expert, both tensors
    assert len(attention) == 2 * 2 * len(u.expert_tokens)  # LoRA A and B on q and v of every layer
    fmq, fmq_client = _halves(fed, "fmq")
    uq = fmq_client.update(fmq.plan(1, [0])[0])
    assert uq.work["host_device_bytes"] < u.work["host_device_bytes"] and uq.work["bytes_down"] < u.work["bytes_down"]
    assert uq.work["memory_bytes"] <= fed.devices[0].memory_bytes
    fmes, fmes_client = _halves(fed, "fmes", {"profile_examples": 8})
    ue = fmes_client.update(fmes.plan(1, [0])[0])
    kept = ue.diagnostics["kept"]
    assert {parse_key(k)[:2] for k in split_attention(ue.tensors)[0]} == {(layer, e) for layer, idx in enumerate(kept)
                                                                            for e in idx}
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


def test_flux_scores_exploration_experts_without_training_them_and_downloads_bf16(fed):
    """Paper defaults: utilities start from activation frequency, exploration experts are only scored by
    zeroth-order probes (not trained, not uploaded, left bit-identical), and the client, which merges, is
    priced for downloading every expert in bf16 (old code: tuning + merged slots in bf16 plus a 4-bit copy of
    every expert)."""
    method, client = _halves(fed, "flux", {"profile_examples": 8, "eps_start": 0.5, "attention": "none"})
    task = method.plan(1, [0])[0]
    task.plan["tune_budget"] = 4  # the smoke model's budgets allow one tuning expert; give the roles room
    update = client.update(task)
    roles = update.diagnostics["roles"]
    exploit = {(layer, e) for layer, row in enumerate(roles["exploit"]) for e in row}
    explore = {(layer, e) for layer, row in enumerate(roles["explore"]) for e in row}
    assert exploit and explore and roles["trained"] == roles["exploit"]
    assert {parse_key(k)[:2] for k in update.tensors} == exploit  # only exploitation experts uploaded
    assert {tuple(int(x) for x in k.split(".")) for k in update.payload["grad_sq"]} == exploit | explore  # all scored
    pm = client.pm
    assert update.work["bytes_down"] == pm.total_experts * pm.expert_bytes[16]
    # frequency initialisation: with nothing known, exploitation takes the most-routed experts of the profile
    tokens = update.payload["profile"]["tokens"]
    others = [tokens[layer][e] for layer, row in enumerate(tokens) for e in range(len(row)) if (layer, e) not in exploit]
    assert min(tokens[layer][e] for layer, e in exploit) >= max(others)


def test_attention_lora_is_trained_aggregated_and_priced(fed):
    fmd, fmd_client = _halves(fed, "fmd")
    experts0, attention0 = split_attention(fmd.global_state)
    assert attention0 and all("lora_" in k for k in attention0)
    tasks = fmd.plan(1, [0, 1])
    updates = [fmd_client.update(t) for t in tasks]
    for u in updates:
        _, attention = split_attention(u.tensors)
        assert set(attention) == set(attention0)
        assert any(not torch.equal(attention[k], attention0[k]) for k in attention)  # trained (B starts at 0)
    expected = {k: (updates[0].num_examples * updates[0].tensors[k].double()
                    + updates[1].num_examples * updates[1].tensors[k].double())
                / (updates[0].num_examples + updates[1].num_examples) for k in attention0}
    fmd.aggregate(1, updates)
    for k, v in expected.items():
        assert torch.allclose(fmd.global_state[k].double(), v, atol=1e-6)  # FedAvg by example counts
    frozen, frozen_client = _halves(fed, "fmd", {"attention": "none"})
    u_none = frozen_client.update(frozen.plan(1, [0])[0])
    assert not split_attention(u_none.tensors)[1]
    lora = lora_params(fed.priced_config, 8, attention=True, experts=False).total
    assert updates[0].work["bytes_up"] - u_none.work["bytes_up"] == 2 * lora
    assert fmd.budget(0) <= frozen.budget(0)  # the adapter's training state takes device memory first
    check_fits(ClientWork.from_dict(updates[0].work), fed.devices[0])
    assert fmd.eval_model()(input_ids=torch.tensor([[5, 6, 7]])).logits.shape[-1] > 0  # eval model carries it

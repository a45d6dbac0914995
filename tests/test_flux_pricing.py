"""Pricing of FLUX's baselines and of the options shared by the expert methods, against hand-computed values:
offloading (host link, host RAM, host optimizer step), FMQ's master copy and dequantisation, effective PCIe,
attention training, gradient checkpointing, the paper-setting fleet and stale profiling's hiding window."""

from types import SimpleNamespace

import pytest
from transformers import MixtralConfig

from fedmoe.config import CostConfig
from fedmoe.fl.cost import (
    ClientTime,
    ClientWork,
    CostModel,
    DoesNotFitError,
    check_fits,
    client_time,
    round_time,
)
from fedmoe.fl.devices import PCIE4_X16, GiB, get_device, get_fleet
from fedmoe.fl.pricing import activation_bytes, lora_params, training_work
from fedmoe.methods.experts.attention import AttentionArgs, priced_attention
from fedmoe.methods.experts.priced import priced_model
from fedmoe.methods.flux.budget import (
    HOST_ADAM_BYTES,
    TRAIN_STATE_BYTES,
    expert_work,
    flux_budget,
    offload_resident,
    offload_work,
)

X, W16, W4 = 3 * 4096 * 688, 16908288, 4755456  # LLaMA-MoE-3.5B: params and bf16 / NF4 bytes of one expert


def _fed(fleet="consumer", config="llama-moe-3.5b", **cost_options):
    cost = CostModel.build(fleet, mode="projection", arch=config) if isinstance(config, str) else None
    priced = cost.priced_config(None) if cost else config
    cfg = SimpleNamespace(fed=SimpleNamespace(batch_size=8, max_length=128), cost=CostConfig(**cost_options))
    return SimpleNamespace(priced_config=priced, cost=cost, cfg=cfg)


def test_priced_expert_sizes():
    pm = priced_model(_fed())
    assert (pm.expert_params, pm.expert_bytes[16], pm.expert_bytes[4], pm.total_experts) == (X, W16, W4, 512)


def test_offload_work_fmd_by_hand():
    pm = priced_model(_fed())
    w = offload_work(pm, resident=100, bits=16, steps=5, transfers_per_step=3)
    off = 512 - 100
    assert w["host_device_bytes"] == off * (2 * W16 + W16) * 5  # weights in twice, bf16 gradients out
    assert w["host_memory_bytes"] == off * (W16 + X * (2 + 8))  # weights + gradient + Adam moments
    assert HOST_ADAM_BYTES == 22 and w["host_memory_traffic"] == off * X * 22 * 5
    assert w["device_memory_traffic"] == 0


def test_offload_work_fmq_master_copy_and_dequantisation_by_hand():
    pm = priced_model(_fed())
    w = offload_work(pm, resident=100, bits=4, steps=5, transfers_per_step=3)
    off, q = 512 - 100, W4 / X
    assert w["host_device_bytes"] == off * (2 * W4 + W16) * 5
    assert w["host_memory_bytes"] == off * (W4 + X * (2 + 2 + 8))  # NF4 + bf16 master + gradient + Adam
    assert w["host_memory_traffic"] == int(off * X * (22 + q + 2) * 5)  # Adam + re-quantising the master
    assert w["device_memory_traffic"] == int((2 * 512 + 100) * X * (q + 2) * 5)  # dequant fwd + bwd, requant


def test_fmq_resident_experts_pay_for_a_bf16_master_copy():
    fed = _fed()
    pm = priced_model(fed)
    dev = get_device("rtx-3090-24gb")
    free = dev.memory_bytes - pm.shared_bytes[4] - pm.activation_bytes
    assert offload_resident(pm, dev, 4) == free // (W4 + X * (2 + TRAIN_STATE_BYTES))  # old code: W4 + 10X
    stats = SimpleNamespace(tokens=1000, examples=10, steps=2)
    four = expert_work(fed, pm, stats, trainable=10, slots=10, tuned_token_share=1.0, bits=4, bytes_down=0, bytes_up=0)
    plain = training_work(fed, tokens=1000, seq_len=100, batch_tokens=8 * 128, trainable_params=10 * X,
                          trainable_active=32 * 4 * X, bytes_down=0, bytes_up=0,
                          experts_per_layer=_spread(10),
                          bits={"experts": 4, "linears": 4})
    assert four["memory_bytes"] - plain["memory_bytes"] == 10 * X * 2


def _spread(n, layers=32):
    return [max(1, n // layers + (1 if i < n % layers else 0)) for i in range(layers)]


@pytest.mark.parametrize("device", ["rtx-3060-12gb", "jetson-orin-nx-16gb"])
def test_fmd_cannot_hold_its_offloaded_training_state_on_small_hosts(device):
    """A 32 GiB desktop host (3060) or a 16 GiB unified-memory Jetson cannot hold FMD's offloaded experts
    with their training state (old code never checked host memory)."""
    fed = _fed()
    pm = priced_model(fed)
    dev = get_device(device)
    res = offload_resident(pm, dev, 16)
    stats = SimpleNamespace(tokens=1000, examples=10, steps=2)
    work = expert_work(fed, pm, stats, trainable=res, slots=res, tuned_token_share=1.0, bytes_down=0, bytes_up=0,
                       offload=offload_work(pm, res, 16, 2, 3))
    assert work["host_memory_bytes"] == (512 - res) * (W16 + 10 * X) > 32 * GiB
    with pytest.raises(DoesNotFitError, match="host memory"):
        check_fits(ClientWork.from_dict(work), dev)
    check_fits(ClientWork.from_dict(work), get_device("l20-48gb").replace(memory_bytes=dev.memory_bytes))


def test_unified_memory_host_share_is_what_the_accelerator_leaves():
    jetson = get_device("jetson-orin-nx-16gb")
    check_fits(ClientWork(memory_bytes=10 * GiB, host_memory_bytes=6 * GiB), jetson)
    with pytest.raises(DoesNotFitError, match="unified memory"):
        check_fits(ClientWork(memory_bytes=10 * GiB, host_memory_bytes=7 * GiB), jetson)


def test_client_time_prices_host_optimizer_and_dequantisation_traffic():
    dev = get_device("rtx-3060-12gb")  # 51.2 GB/s host DRAM, 360 GB/s GDDR6
    t = client_time(ClientWork(host_memory_traffic=102.4e9, device_memory_traffic=36e9), dev)
    assert t.host == pytest.approx(2.0) and t.compute == pytest.approx(0.1) and t.total == pytest.approx(2.1)
    with pytest.raises(ValueError, match="host_memory_bandwidth"):
        client_time(ClientWork(host_memory_traffic=1.0), dev.replace(host_memory_bandwidth=0.0))


def test_pcie_is_priced_at_its_effective_rate():
    assert PCIE4_X16 == pytest.approx(31.5e9, rel=1e-3)
    for name in ("rtx-3060-12gb", "rtx-3090-24gb", "rtx-4090-24gb", "l20-48gb", "a100-80gb"):
        assert get_device(name).host_device_bandwidth == 25e9  # old code: 31.5e9 (link rate)
    t = client_time(ClientWork(host_device_bytes=50e9), get_device("rtx-3090-24gb"))
    assert t.host_device == pytest.approx(2.0)


def test_attention_pricing_by_hand():
    config = _fed().priced_config  # 32 layers, H = 4096, 32 heads (MHA)
    lora = priced_attention(config, AttentionArgs("lora", attention_rank=8))
    per_layer = 8 * (4096 + 4096) * 2  # q and v: r * (H + heads * head_dim) each
    assert lora.params == lora.adapter_active == 32 * per_layer == lora_params(config, 8, attention=True,
                                                                              experts=False).total
    assert lora.memory_bytes == lora.params * (2 + 10) and lora.wire_bytes == 2 * lora.params
    full = priced_attention(config, AttentionArgs("full"))
    assert full.params == 32 * 4 * 4096 * 4096 and full.adapter_active == 0 and full.memory_bytes == full.params * 10
    assert priced_attention(config, AttentionArgs("none")).params == 0
    with pytest.raises(ValueError, match="attention="):
        AttentionArgs("q_only")


def test_expert_work_adds_attention_to_bytes_memory_and_flops():
    fed = _fed()
    pm = priced_model(fed)
    stats = SimpleNamespace(tokens=1000, examples=10, steps=2)
    common = dict(trainable=20, slots=100, tuned_token_share=0.25, bytes_down=7, bytes_up=3)
    base = expert_work(fed, pm, stats, **common)
    lora = priced_attention(fed.priced_config, AttentionArgs("lora"))
    with_lora = expert_work(fed, pm, stats, **common, attention=lora)
    assert with_lora["bytes_up"] == 3 + 2 * lora.params and with_lora["bytes_down"] == 7 + 2 * lora.params
    assert with_lora["memory_bytes"] - base["memory_bytes"] == 12 * lora.params
    # forward + 2 * adapter params, backward + 2 * adapter params (its weight gradients) + 2 * adapter (activation)
    assert with_lora["train_flops"] - base["train_flops"] == pytest.approx(1000 * 6 * lora.params)
    full = priced_attention(fed.priced_config, AttentionArgs("full"))
    with_full = expert_work(fed, pm, stats, **common, attention=full)
    assert with_full["train_flops"] - base["train_flops"] == pytest.approx(1000 * 2 * full.params)  # weight grads
    assert flux_budget(pm, get_device("l20-48gb"), 0.5, 0.25, full.memory_bytes).tune_priced < flux_budget(
        pm, get_device("l20-48gb"), 0.5, 0.25).tune_priced


TINY = MixtralConfig(vocab_size=100, hidden_size=16, intermediate_size=8, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)


def test_gradient_checkpointing_activations_and_recompute_by_hand():
    # per token: per layer 8H + E + k(3I + H) = 128 + 4 + 2 * 40 = 212; + head H + V = 116 -> 540 elements
    assert activation_bytes(TINY, 10) == 10 * 540 * 2
    # checkpointed: layer inputs L * H = 32, one layer's 212 recomputed, head 116 -> 360 elements
    assert activation_bytes(TINY, 10, checkpointing=True) == 10 * 360 * 2
    work = {}
    for ck in (False, True):
        fed = _fed(config=TINY, gradient_checkpointing=ck)
        work[ck] = training_work(fed, tokens=100, seq_len=10, batch_tokens=10, trainable_params=0,
                                 trainable_active=None, bytes_down=0, bytes_up=0)
    assert work[False]["memory_bytes"] - work[True]["memory_bytes"] == 10 * (540 - 360) * 2
    # token_flops(TINY, seq 10): forward 10400, train 31200 (test_cost); + one recomputed forward per token
    assert (work[False]["train_flops"], work[True]["train_flops"]) == (100 * 31200.0, 100 * 41600.0)


def test_paper_fleet_forces_merging_and_offloading():
    fleet = get_fleet("paper")
    assert {p.name: p.memory_bytes // GiB for p, _ in fleet.mix} == {
        "l20-48gb-cap12": 12, "l20-48gb-cap16": 16, "l20-48gb-cap20": 20}
    fed = _fed(fleet="paper")
    pm = priced_model(fed)
    lora = priced_attention(fed.priced_config, AttentionArgs()).memory_bytes
    for device, _ in fleet.mix:
        assert device.bf16_flops == 119.5e12 and device.net_up == device.net_down == 10e9 / 8
        b = flux_budget(pm, device, 0.5, 0.25, lora)
        assert b.tune_priced + b.slots_priced < pm.total_experts  # FLUX must merge on every tier
        assert offload_resident(pm, device, 16, lora) < pm.total_experts / 4  # FMD offloads most experts
    assert flux_budget(pm, get_device("l20-48gb"), 0.5, 0.25, lora).slots_priced == 512 - 128  # uncapped: no merging


def _ct(total, forward=0.0, upload=0.0, download=0.0):
    return ClientTime(compute=total - upload - download, forward=forward, host_device=0.0, download=download,
                      upload=upload, total=total)


def test_stale_profiling_hides_in_straggler_wait_and_own_network_time():
    # Client 1 (no hidden work) arrives at 100; client 0 trains until 50 - 30 = 20 ... see below.
    # Client 0: download 5, training 15, profiling 30, upload 10 -> total 60, arrives at 30; its profiling runs
    # from 20 (training done) to 50, inside the straggler wait (client 1 arrives at 100): round = 100 + 1.
    r = round_time([_ct(60.0, 30.0, upload=10.0, download=5.0), _ct(100.0)], server_seconds=1.0, overlap=1.0)
    assert r.total == pytest.approx(101.0) and r.slowest == 1
    # The straggler's own profiling: training ends at 5 + 60 = 65, profiling 40 until 105, upload 10 -> arrives
    # at 75, server until 76; the next download (5) overlaps it, so the round ends at 105 - 5 = 100
    # (old code: max(76, 115) = 115, only the server's second hid anything).
    r = round_time([_ct(115.0, 40.0, upload=10.0, download=5.0)], server_seconds=1.0, overlap=1.0)
    assert r.client_phase == pytest.approx(75.0) and r.total == pytest.approx(100.0)
    assert r.hidden == pytest.approx(116.0 - 100.0)

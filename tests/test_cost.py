"""Cost model: every formula against hand-computed values; paper-scale configs against published sizes."""


import pytest
from transformers import MixtralConfig

from fedmoe.fl.cost import (
    ClientTime,
    ClientWork,
    CostModel,
    DoesNotFitError,
    check_fits,
    client_time,
    matmul_params,
    round_time,
    token_flops,
)
from fedmoe.fl.devices import DeviceProfile, GiB, get_device, get_fleet
from fedmoe.fl.paper_configs import PAPER_ARCHS, paper_arch, paper_config
from fedmoe.moe.memory import param_counts

DEVICE = DeviceProfile(
    name="test", memory_bytes=10 * GiB, bf16_flops=100e12, host_device_bandwidth=25e9,
    net_up=2.5e6, net_down=12.5e6, host_memory_bytes=0, mfu=0.5,
)


def test_client_time_hand_computed():
    work = ClientWork(train_flops=3e15, forward_flops=1e15, bytes_down=25e6, bytes_up=5e6,
                      host_device_bytes=50e9, memory_bytes=1e9)
    t = client_time(work, DEVICE)
    # effective 100e12 * 0.5 = 50e12 FLOP/s: (3e15 + 1e15) / 50e12 = 80 s, of which 1e15 / 50e12 = 20 s forward-only.
    assert t.compute == pytest.approx(80.0)
    assert t.forward == pytest.approx(20.0)
    assert t.host_device == pytest.approx(2.0)  # 50e9 / 25e9
    assert t.download == pytest.approx(2.0)  # 25e6 / 12.5e6
    assert t.upload == pytest.approx(2.0)  # 5e6 / 2.5e6
    assert t.total == pytest.approx(86.0)


def test_client_time_on_real_profile():
    # 1e15 FLOPs on an RTX 3090 (71e12 x 0.4) and 100 MB up over 20 Mbit/s.
    t = client_time(ClientWork(train_flops=1e15, bytes_up=100e6), get_device("rtx-3090-24gb"))
    assert t.compute == pytest.approx(1e15 / 28.4e12)
    assert t.upload == pytest.approx(40.0)
    assert t.total == pytest.approx(1e15 / 28.4e12 + 40.0)


def _ct(total: float, forward: float = 0.0) -> ClientTime:
    return ClientTime(compute=total, forward=forward, host_device=0.0, download=0.0, upload=0.0, total=total)


def test_round_time_synchronous():
    r = round_time([_ct(86.0, 20.0), _ct(50.0)], server_seconds=10.0)
    assert (r.total, r.client_phase, r.server, r.slowest, r.hidden) == (96.0, 86.0, 10.0, 0, 0.0)


def test_round_time_overlap_hides_forward_work_behind_server():
    # Client 0 arrives at 86 - 20 = 66, client 1 at 50; server until 76; client 0 profiles until 86.
    r = round_time([_ct(86.0, 20.0), _ct(50.0)], server_seconds=10.0, overlap=1.0)
    assert r.client_phase == pytest.approx(66.0)
    assert r.total == pytest.approx(86.0)
    assert r.hidden == pytest.approx(10.0)  # against 86 + 10
    # Longer server phase: all 20 s of profiling hidden; round = 66 + 30.
    r = round_time([_ct(86.0, 20.0), _ct(50.0)], server_seconds=30.0, overlap=1.0)
    assert r.total == pytest.approx(96.0) and r.hidden == pytest.approx(20.0)
    # Half the profiling hideable: arrival 76, round max(76 + 10, 86) = 86.
    r = round_time([_ct(86.0, 20.0), _ct(50.0)], server_seconds=10.0, overlap=0.5)
    assert r.client_phase == pytest.approx(76.0) and r.total == pytest.approx(86.0)
    # Hiding can change which client arrives last.
    r = round_time([_ct(86.0, 20.0), _ct(70.0)], server_seconds=10.0, overlap=1.0)
    assert r.slowest == 1 and r.total == pytest.approx(86.0)


def test_round_time_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        round_time([])
    with pytest.raises(ValueError, match="overlap"):
        round_time([_ct(1.0)], overlap=1.5)
    with pytest.raises(ValueError, match="server_seconds"):
        round_time([_ct(1.0)], server_seconds=-1.0)


def test_check_fits_names_bytes_and_fixes():
    check_fits(ClientWork(memory_bytes=10 * GiB), DEVICE)  # exactly fits
    with pytest.raises(DoesNotFitError) as err:
        check_fits(ClientWork(memory_bytes=12 * GiB), DEVICE, what="FMD on mixtral-8x7b")
    msg = str(err.value)
    assert "FMD on mixtral-8x7b needs 12.00 GiB" in msg and "test has 10.00 GiB" in msg
    assert str(12 * GiB) in msg and "quantize" in msg and "adapts" in msg
    assert isinstance(err.value, ValueError)


def test_client_work_dict_round_trip_and_validation():
    work = ClientWork(train_flops=1.0, bytes_up=2.0)
    assert ClientWork.from_dict(work.to_dict()) == work
    with pytest.raises(ValueError, match="bytes_sent"):
        ClientWork.from_dict({"bytes_sent": 1.0})
    with pytest.raises(ValueError, match="bytes_up"):
        ClientWork(bytes_up=-1.0)


# Tiny Mixtral whose parameters are counted by hand: V=100, H=16, I=8, L=2, 4 heads of 4, 2 KV heads,
# E=4 experts, top-2.
#   attention / layer: q 16*16 + k 16*8 + v 16*8 + o 16*16 = 768;  norms / layer: 2*16 = 32
#   router / layer: 4*16 = 64;  one expert: 3*16*8 = 384
#   total = 2*(768 + 32 + 64 + 4*384) + embed 1600 + lm_head 1600 + final norm 16 = 8016
#   active(top-2) = 2*(768 + 32 + 64 + 2*384) + 1600 + 1600 + 16 = 6480
TINY = dict(vocab_size=100, hidden_size=16, intermediate_size=8, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)


def test_matmul_params_hand_counted():
    config = MixtralConfig(**TINY)
    assert param_counts(config).total == 8016
    # active minus the input embedding (a lookup): 6480 - 1600.
    assert matmul_params(config) == 4880
    assert matmul_params(config, top_k=1) == 4880 - 2 * 384
    # Tied head: no separate lm_head parameters, but the matmul still happens.
    assert matmul_params(MixtralConfig(**{**TINY, "tie_word_embeddings": True})) == 4880


def test_token_flops_hand_computed():
    config = MixtralConfig(**TINY)
    # forward = 2 * 4880 + attention 2 * L * s * H = 2 * 2 * 10 * 16 = 640 -> 10400; full backward 2x.
    f = token_flops(config, seq_len=10)
    assert (f.forward, f.backward, f.train) == (10400.0, 20800.0, 31200.0)
    f = token_flops(config, seq_len=10, top_k=1)
    assert f.forward == 2 * (4880 - 768) + 640
    # LoRA-style: 100 adapter params per token, only they train:
    # forward = 2 * (4880 + 100) + 640 = 10600; backward = 10600 + 2 * 100 = 10800.
    f = token_flops(config, seq_len=10, adapter_active_params=100, trainable_active_params=100)
    assert (f.forward, f.backward) == (10600.0, 10800.0)
    with pytest.raises(ValueError, match="seq_len"):
        token_flops(config, seq_len=0)
    with pytest.raises(ValueError, match="top_k"):
        token_flops(config, seq_len=1, top_k=0)


def test_fewer_stored_experts_cap_top_k():
    # One expert slot per layer (e.g. all merged into one): a token can only use that one.
    config = MixtralConfig(**TINY)
    assert matmul_params(config, experts_per_layer=1) == 4880 - 2 * 384
    assert matmul_params(config, top_k=1, experts_per_layer=[3, 3]) == 4880 - 2 * 384


def test_token_flops_olmoe_hand_computed():
    # OLMoE-1B-7B per layer: attention 4 * 2048^2 + q/k norms 2 * 2048 = 16,781,312; norms 4,096;
    # router 64 * 2048 = 131,072; one expert 3 * 2048 * 1024 = 6,291,456.
    # top-8: 16 * (16,781,312 + 4,096 + 131,072 + 8 * 6,291,456) + lm_head 50304 * 2048 + final norm 2048
    #      = 1,075,970,048 + 103,022,592 + 2,048 = 1,178,994,688 matmul parameters.
    olmoe = paper_config("olmoe-1b-7b")
    assert matmul_params(olmoe) == 1_178_994_688
    attention = 2 * 16 * 2048 * 2048  # seq 2048
    assert token_flops(olmoe, seq_len=2048).forward == 2 * 1_178_994_688 + attention
    # top-1 drops 7 experts in each of 16 layers.
    top1 = 1_178_994_688 - 16 * 7 * 6_291_456
    assert token_flops(olmoe, seq_len=2048, top_k=1).forward == 2 * top1 + attention


@pytest.mark.parametrize("name", sorted(PAPER_ARCHS))
def test_paper_configs_match_published_sizes(name):
    arch = paper_arch(name)
    counts = param_counts(arch.build())
    assert counts.total == pytest.approx(arch.published_total, rel=0.03)
    active = counts.active - (0 if arch.active_counts_embedding else counts.embeddings)
    assert active == pytest.approx(arch.published_active, rel=0.03)


def test_published_sizes_are_the_papers():
    # The table the test above checks against, spelled out for the headline models.
    assert (PAPER_ARCHS["olmoe-1b-7b"].published_total, PAPER_ARCHS["olmoe-1b-7b"].published_active) == (6.9e9, 1.3e9)
    assert (PAPER_ARCHS["mixtral-8x7b"].published_total, PAPER_ARCHS["mixtral-8x7b"].published_active) == (
        46.7e9, 12.9e9)
    olmoe = paper_config("allenai/OLMoE-1B-7B-0924")
    assert (olmoe.num_hidden_layers, olmoe.hidden_size, olmoe.num_experts, olmoe.num_experts_per_tok,
            olmoe.intermediate_size, olmoe.vocab_size) == (16, 2048, 64, 8, 1024, 50304)
    with pytest.raises(KeyError, match="olmoe-1b-7b"):
        paper_config("gpt-4")


def test_cost_model_modes_and_record():
    trained = MixtralConfig(**TINY)
    cm = CostModel.build("consumer", seed=3)
    assert cm.priced_config(trained) is trained
    assert cm.devices(10) == get_fleet("consumer").assign(10, seed=3)
    proj = CostModel.build("datacenter", mode="projection", arch="mixtral-8x7b")
    assert proj.priced_config(trained).num_local_experts == 8
    assert proj.priced_config(trained).hidden_size == 4096
    with pytest.raises(ValueError, match="arch="):
        CostModel.build("consumer", mode="projection")
    with pytest.raises(ValueError, match="mode"):
        CostModel.build("consumer", mode="estimate")
    with pytest.raises(KeyError, match="Known"):
        CostModel.build("consumer", mode="projection", arch="gpt-4")
    custom = CostModel.build("consumer", mode="projection", arch=paper_config("qwen1.5-moe-a2.7b"))
    assert custom.priced_config(trained).num_experts == 60

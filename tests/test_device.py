"""The device axis: config checks, placement, bf16 autocast, exact aggregation, measurements and their figure."""

import json

import pytest
import torch

from fedmoe.config import ConfigError, RunConfig, load_config, validate
from fedmoe.device import (
    autocast_for,
    measure,
    place_model,
    resolve_device,
    resolve_dtype,
    to_device,
)
from fedmoe.engines.inprocess import measured_update
from fedmoe.fl.aggregate import weighted_average
from fedmoe.fl.contract import ClientTask, ClientUpdate

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without CUDA gives")


def test_defaults_resolve_to_auto_and_float32():
    cfg = validate(RunConfig())
    assert (cfg.device, cfg.dtype) == ("auto", "float32")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("bfloat16") is torch.bfloat16


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_config_error_naming_the_fix(device):
    with pytest.raises(ConfigError, match=r"device='cuda.*CUDA is not available.*fix: --set device=cpu"):
        load_config(None, [f"device={device}"], scale="smoke")


@pytest.mark.parametrize("key,value,match", [("device", "gpu", "not a device.*device=auto"),
                                             ("device", "cuda:x", "not a device"),
                                             ("dtype", "float16", "dtype='float16' is not supported.*bfloat16")])
def test_bad_device_or_dtype_is_a_config_error(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"{key}={value}"])


def test_place_model_leaves_a_cpu_float32_model_untouched_and_casts_to_bf16(tiny_moe):
    model = tiny_moe("mixtral")
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    assert place_model(model, torch.device("cpu"), torch.float32) is model
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == before
    place_model(model, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_to_device_moves_tensors_and_keeps_other_values():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "x"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["note"] == "x" and moved["input_ids"].device.type == "cpu"


def test_autocast_only_for_bf16_models(tiny_moe):
    model = tiny_moe("mixtral")
    ids = torch.tensor([[1, 2, 3]])
    with autocast_for(model):
        assert model(input_ids=ids).logits.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")
    place_model(model, torch.device("cpu"), torch.bfloat16)
    with autocast_for(model):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_aggregation_of_bf16_states_is_the_float64_average_rounded_once():
    gen = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(64, generator=gen).to(torch.bfloat16)} for _ in range(5)]
    weights = [3, 1, 7, 2, 5]
    expected = sum(w * s["w"].double() for s, w in zip(states, weights, strict=True)) / sum(weights)
    out = weighted_average(states, weights)["w"]
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.to(torch.bfloat16))  # one rounding, not one per client


def test_measure_on_cpu_times_but_has_no_peak_memory():
    with measure(torch.device("cpu")) as seen:
        sum(range(10_000))
    assert seen.seconds > 0 and seen.peak_memory is None


def test_measured_update_adds_nothing_on_cpu():
    class Fixed:
        def update(self, task):
            return ClientUpdate(task.client_id, task.round, {}, num_examples=1, diagnostics={"a": 1})

    update = measured_update(Fixed(), ClientTask(0, 1, {}), torch.device("cpu"))
    assert update.diagnostics == {"a": 1}


def test_fedit_client_trains_a_float32_adapter_on_a_bf16_base():
    from fedmoe.fl.federation import Federation
    from fedmoe.methods.base import get_method

    cfg = load_config(None, ["method=fedit", "device=cpu", "dtype=bfloat16"], scale="smoke")
    fed = Federation.from_config(cfg)
    spec = get_method("fedit")
    server, client = spec.server(fed, {}), spec.client(fed, {})
    assert next(p for n, p in client.model.named_parameters() if "lora_" not in n).dtype == torch.bfloat16
    update = client.update(server.plan(1, [0])[0])
    assert {t.dtype for t in update.tensors.values()} == {torch.float32}
    assert torch.isfinite(torch.tensor(update.metrics["loss"]))
    assert any(not torch.equal(update.tensors[k], v) for k, v in server.global_state.items())


def test_environment_records_device_and_dtype(tmp_path):
    from fedmoe.results import RunFolder

    env = RunFolder(tmp_path).write_environment("cpu", "bfloat16")
    assert (env["device"], env["dtype"], env["gpu"]) == ("cpu", "bfloat16", None)


def _hand_made_run(path):
    gib = 2**30
    records = [{"round": 0, "score": 0.1},
               {"round": 1, "peak_memory": {"0": 2 * gib, "3": 4 * gib},
                "client_time_parts": {"0": {"compute": 1.0, "host_device": 0.5, "total": 9.0},
                                      "3": {"compute": 2.0, "host_device": 0.0, "total": 9.0}},
                "client_log": {"0": {"tier": 0, "measured_peak_memory": 3 * gib, "measured_seconds": 1.2},
                               "3": {"tier": 1, "measured_peak_memory": 4 * gib, "measured_seconds": 2.5}}}]
    path.mkdir()
    (path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_measured_vs_predicted_rows_and_figure(tmp_path):
    from fedmoe.plots import measured_vs_predicted, plot_measured_vs_predicted

    folder = _hand_made_run(tmp_path / "run")
    rows = measured_vs_predicted(folder)
    assert [(r["client"], r["memory_predicted"] / 2**30, r["memory_measured"] / 2**30, r["seconds_predicted"],
             r["seconds_measured"]) for r in rows] == [(0, 2.0, 3.0, 1.5, 1.2), (3, 4.0, 4.0, 2.0, 2.5)]
    fig = plot_measured_vs_predicted(folder, title="t")
    points = fig.axes[0].collections[0].get_offsets()
    assert points.tolist() == [[2.0, 3.0], [4.0, 4.0]]


def test_measured_vs_predicted_without_measurements_names_the_fix(tmp_path):
    from fedmoe.plots import plot_measured_vs_predicted

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "rounds.jsonl").write_text(json.dumps({"round": 1, "client_log": {"0": {"tier": 0}}}) + "\n")
    with pytest.raises(ValueError, match="device=cuda"):
        plot_measured_vs_predicted(folder)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fedit_client_update_on_cuda_matches_cpu_within_bf16_tolerance():
    from fedmoe.fl.federation import Federation
    from fedmoe.methods.base import get_method

    spec = get_method("fedit")
    updates = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):
        fed = Federation.from_config(load_config(None, ["method=fedit", f"device={device}", f"dtype={dtype}"],
                                                 scale="smoke"))
        server, client = spec.server(fed, {}), spec.client(fed, {})
        updates[device] = (server.global_state, client.update(server.plan(1, [0])[0]))
    (start, cpu), (_, gpu) = updates["cpu"], updates["cuda"]
    assert abs(cpu.metrics["loss"] - gpu.metrics["loss"]) < 0.05 * abs(cpu.metrics["loss"])
    for key, value in cpu.tensors.items():
        step_cpu, step_gpu = value - start[key], gpu.tensors[key].cpu() - start[key]
        if step_cpu.abs().max() > 0:
            cos = torch.nn.functional.cosine_similarity(step_cpu.flatten(), step_gpu.flatten(), dim=0)
            assert cos > 0.9, key
    assert gpu.diagnostics == cpu.diagnostics

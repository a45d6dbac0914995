"""fedmoe.moe.quant: bitsandbytes 4/8-bit quantization of experts (fake-quant) and linears (bnb modules)."""

import math

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from fedmoe.moe import SUPPORTED_FAMILIES, moe_layers, quantize_model, quantize_tensor, quantized_nbytes
from fedmoe.moe.layers import decoder_of

X = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(3))


def test_storage_formulas_by_hand():
    # [8, 64, 64] = 32768 values: 4-bit packs 2 per byte + one fp32 absmax per 64 values
    assert quantized_nbytes((8, 64, 64), "nf4") == 16384 + 4 * 512
    assert quantized_nbytes((8, 64, 64), "int8") == 32768 + 4 * 128  # blocks of 256
    assert quantized_nbytes((32, 64), "int8", "linear") == 2048 + 4 * 32  # one absmax per output row
    with pytest.raises(ValueError, match="Unknown quantization scheme 'int3'"):
        quantized_nbytes((4,), "int3")


@pytest.mark.parametrize("scheme", ["nf4", "fp4", "int8"])
def test_quantize_tensor_error_and_storage(scheme):
    w = torch.randn(4, 64, 32, generator=torch.Generator().manual_seed(0))
    deq, stored = quantize_tensor(w, scheme)
    assert deq.shape == w.shape and deq.dtype == w.dtype
    assert stored == quantized_nbytes(w.shape, scheme)
    rel = ((deq - w).norm() / w.norm()).item()
    assert (0.03 < rel < 0.15) if scheme != "int8" else (rel < 0.02)
    assert len(torch.unique(deq[0, :2].reshape(-1))) <= (16 if scheme != "int8" else 256)  # one block: a code


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_quantize_model(tiny_moe, family, scheme):
    model = tiny_moe(family)
    reference = model(X).logits
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = quantize_model(model, scheme)
    # the original model is untouched (profiling quantizes a copy of the global model)
    assert all(torch.equal(p, originals[n]) for n, p in model.named_parameters())
    qmodel = report.model
    linears = [m for layer in decoder_of(qmodel).layers for m in layer.modules() if isinstance(m, nn.Linear)]
    kind = bnb.nn.Linear8bitLt if scheme == "int8" else bnb.nn.Linear4bit
    # a 4-bit linear bitsandbytes would decode wrongly on this CPU (inputs not whole blocks) is fake-quantized
    assert linears and all(isinstance(m, kind) or (scheme != "int8" and type(m) is nn.Linear and m.in_features % 64)
                           for m in linears)
    assert isinstance(qmodel.lm_head, nn.Linear) and type(qmodel.lm_head) is nn.Linear
    experts = [t for t in report.tensors if t.kind == "experts"]
    assert len(experts) == 2 * len(moe_layers(model))
    for layer in moe_layers(qmodel):  # fake-quant: the parameter holds the dequantized values
        orig = originals[
            [n for n in originals if n.endswith(f"layers.{layer.layer_idx}.mlp.experts.down_proj")][0]
        ]
        assert torch.equal(layer.down_proj, quantize_tensor(orig, scheme)[0])
    for t in report.tensors:
        assert t.bytes_before == 4 * math.prod(t.shape)
        assert t.bytes_after == quantized_nbytes(t.shape, scheme, t.kind)
        assert 0 < t.rel_error < (0.15 if scheme == "nf4" else 0.02) and t.max_abs_error > 0
    total = math.sqrt(sum(t.sq_error for t in report.tensors) / sum(t.sq_norm for t in report.tensors))
    assert report.rel_error == pytest.approx(total)
    assert report.max_abs_error == max(t.max_abs_error for t in report.tensors)
    assert report.bytes_after < report.bytes_before / (6 if scheme == "nf4" else 3)
    out = qmodel(X).logits
    assert torch.isfinite(out).all()
    rel = ((out - reference).norm() / reference.norm()).item()
    assert 0 < rel < (0.2 if scheme == "nf4" else 0.05)


def test_linear_error_is_the_error_the_module_runs_with(tiny_moe):
    model = tiny_moe("mixtral")
    q_proj = decoder_of(model).layers[0].self_attn.q_proj
    report = quantize_model(model, "nf4", experts=False)
    assert all(t.kind == "linear" for t in report.tensors)
    qlin = decoder_of(report.model).layers[0].self_attn.q_proj
    x = torch.randn(5, 64)
    entry = next(t for t in report.tensors if t.name == "layers.0.self_attn.q_proj.weight")
    # the module's output equals x @ Q(W)^T with the Q(W) whose error was reported
    deq = bnb.functional.dequantize_4bit(qlin.weight.data, qlin.weight.quant_state)
    assert torch.allclose(qlin(x), x @ deq.T, atol=1e-5)
    err = deq.double() - q_proj.weight.detach().double()
    assert entry.max_abs_error == pytest.approx(err.abs().max().item())
    assert entry.rel_error == pytest.approx((err.norm() / q_proj.weight.double().norm()).item())


def test_quantize_in_place_and_experts_only(tiny_moe):
    model = tiny_moe("olmoe")
    report = quantize_model(model, "fp4", linears=False, copy_model=False)
    assert report.model is model and all(t.kind == "experts" for t in report.tensors)
    assert all(
        type(m) is nn.Linear for m in decoder_of(model).layers[0].modules() if isinstance(m, nn.Linear)
    )


@pytest.mark.parametrize("in_features", [32, 96, 128])
def test_4bit_linear_runs_with_the_reported_nf4_weight_on_every_cpu(in_features):
    """In eval mode without grad (FLUX's INT4 profiling, evaluating FMQ / fedit-nf4) a 4-bit linear computes
    x @ Q(W)^T + b with Q(W) at NF4's error level, whatever the input width and the CPU (bitsandbytes 0.50's native
    CPU decoder gets widths that are not whole 64-blocks wrong, and AVX512-BF16 CPUs would switch kernels)."""
    from fedmoe.moe.quant import _quantized_linear

    torch.manual_seed(0)
    linear = nn.Linear(in_features, 64)
    qlin, deq, stored = _quantized_linear(linear, "nf4")
    assert stored == quantized_nbytes(tuple(linear.weight.shape), "nf4", "linear")
    rel = ((deq - linear.weight).norm() / linear.weight.norm()).item()
    assert 0.03 < rel < 0.15
    if isinstance(qlin, bnb.nn.Linear4bit):
        assert qlin.support_avx512bf16_for_cpu is False
    qlin.eval()
    x = torch.randn(3, in_features)
    with torch.no_grad():
        assert torch.allclose(qlin(x), x @ deq.T + linear.bias, atol=1e-5)


def test_only_the_offline_hub_kernel_probe_warnings_are_dropped(caplog):
    import logging

    import fedmoe  # noqa: F401  (installs the filters)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline")
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]

"""The step benchmarks: the ratio summary, the plain loop, and bench_gpu's whole path on the CPU (dry run)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from fedmoe.bench import Timed, interleaved_ratio

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "reproduce" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_ratio_is_kit_over_plain_throughput_per_repetition():
    kit = iter([Timed(100, 1.0), *[Timed(100, s) for s in (1.0, 2.0, 1.0)]])
    plain = iter([Timed(100, 1.0), *[Timed(200, 1.0)] * 3])
    ratio = interleaved_ratio(lambda: next(kit), lambda: next(plain), reps=3)
    assert ratio.values == [0.5, 0.25, 0.5]  # the warm-up pair is dropped
    assert ratio.median == 0.5 and ratio.interval.lo < ratio.interval.mean < ratio.interval.hi


def test_interleaved_ratio_needs_two_repetitions():
    with pytest.raises(ValueError, match="--reps"):
        interleaved_ratio(lambda: Timed(1, 1.0), lambda: Timed(1, 1.0), reps=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_bench_gpu_without_cuda_says_so_and_exits_0(capsys):
    assert _script("bench_gpu").main([]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_bench_gpu_dry_run_prints_every_figure(capsys):
    assert _script("bench_gpu").main(["--dry-run", "--method", "fedit", "--method", "flame", "--batch", "2",
                                      "--seq", "32", "--steps", "1", "--reps", "2"]) == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines() if line.startswith("tiny_"))
    assert not [k for k in lines if k.endswith("_skipped")]
    for name in ("fedit", "flame_k8", "flame_k4", "flame_k2", "flame_k1"):
        for key in ("tokens_per_s", "mfu", "time_ratio", "kit_step_throughput_ratio"):
            assert float(lines[f"tiny_olmoe_{name}_{key}"]) > 0


def test_bench_step_prints_the_ratio_lines(capsys):
    assert _script("bench_step").main(["--scale", "smoke", "--reps", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    for method in ("fedit", "flame"):
        for suffix in ("", "_lo", "_hi"):
            assert f"kit_step_throughput_ratio_{method}{suffix} " in out


def test_bench_dropout_refuses_unknown_methods_and_impossible_dropouts(capsys):
    bench = _script("bench_dropout")
    for argv in (["--methods", "fedavg"], ["--dropout", "1.0"]):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert "choose methods among fedit" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_dropout_runs_each_method_with_and_without_failures(tmp_path, capsys):
    assert _script("bench_dropout").main(["--methods", "fedit", "--scale", "smoke", "--seeds", "0,1",
                                          "--results", str(tmp_path), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "completed_fedit 1" in out and "dropout_minus_clean_fedit_lo" in out
    configs = sorted(p.read_text() for p in tmp_path.glob("*/config.yaml"))
    assert len(configs) == 4 and sum("dropout: 0.3" in c for c in configs) == 2

"""The kit's client-step overhead on this machine: FedIT's and FLAME's client update against a plain PyTorch + PEFT loop.

For each method, the client half is built as an engine builds it (``get_method(name).client(fed, args)``)
and its ``update(task)`` is timed on a round-1 task; a plain loop (peft LoRA of the same rank on the same
modules of the same base model, same batch size, sequence length, steps and learning rate, FLAME's client at
the same top-k) is timed beside it. Repetitions interleave kit and plain runs after a warm-up; the ratio of
their throughputs (tokens/s) is reported as the median over repetitions and a 95% Student-t interval of the
mean, one ``key value`` line each::

    kit_step_throughput_ratio_fedit <median>   (kit tokens/s / plain tokens/s; 1 = no overhead)
    kit_step_throughput_ratio_fedit_lo <lower end of the interval>
    kit_step_throughput_ratio_fedit_hi <upper end>
    ... and the same for _flame

    python reproduce/bench_step.py                  # default scale (the default tiny model), 7 repetitions
    python reproduce/bench_step.py --scale smoke    # a quick check
"""

from __future__ import annotations

import argparse
import sys

import torch

from fedmoe.bench import interleaved_ratio, kit_update, plain_lora_model, plain_steps
from fedmoe.config import SCALES, load_config
from fedmoe.fl.federation import Federation
from fedmoe.methods.base import get_method
from fedmoe.moe.layers import set_top_k

METHODS = ("fedit", "flame")


def bench_method(name: str, scale: str, reps: int, steps: int | None, device: str):
    """The kit/plain throughput ratio of method ``name``'s client update (see the module docstring)."""
    overrides = [f"method={name}", f"device={device}"] + ([f"fed.local_steps={steps}"] if steps else [])
    cfg = load_config(None, overrides, scale=scale)
    torch.set_num_threads(cfg.threads)
    fed = Federation.from_config(cfg)
    spec = get_method(name)
    server, client = spec.server(fed, cfg.method_args), spec.client(fed, cfg.method_args)
    task = server.plan(1, [0])[0]
    plain = plain_lora_model(fed.base_model(), client.args.rank, client.args.alpha, client.args.attention)
    top_k = task.plan.get("top_k") if isinstance(task.plan, dict) else None
    if top_k is not None:
        set_top_k(plain, top_k)
    examples, train_cfg = fed.client_data(0), fed.train_config(0, 1)
    ratio = interleaved_ratio(lambda: kit_update(client, task)[0],
                              lambda: plain_steps(plain, fed.tokenizer, examples, train_cfg), reps)
    return ratio, train_cfg, top_k


def main(argv: list[str] | None = None) -> int:
    """Benchmark each method and print the table and the key lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # paper runs a real checkpoint (model.path), which this benchmark does not take
    parser.add_argument("--scale", default="default", choices=[s for s in SCALES if s != "paper"])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions of each side (after one warm-up)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per update (default: the scale's)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    lines = []
    for name in METHODS:
        ratio, cfg, top_k = bench_method(name, args.scale, args.reps, args.steps, args.device)
        print(f"{name}: batch {cfg.batch_size} x max_length {cfg.max_length}, {cfg.steps} steps, lr {cfg.lr}"
              f"{f', top-k {top_k}' if top_k else ''}; ratios per repetition "
              + " ".join(f"{v:.3f}" for v in ratio.values))
        key = f"kit_step_throughput_ratio_{name}"
        lines += [f"{key} {ratio.median:.4f}", f"{key}_lo {ratio.interval.lo:.4f}", f"{key}_hi {ratio.interval.hi:.4f}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

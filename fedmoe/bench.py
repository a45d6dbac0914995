"""Step-throughput benchmarks: a method's client update against a plain PyTorch + PEFT training loop.

Both sides do the same work on the same model: LoRA of the same rank on every expert (and the attention
projections when the method adapts them), the same batches (tokenised by the same collate function), AdamW,
gradient clipping at the kit's default, one optimizer step per batch. The kit's side is everything
``client.update(task)`` does (loading the task's adapter, routing statistics, the learning-rate schedule,
extracting the trained state, pricing), so the ratio is the kit's whole overhead per client step.
Repetitions interleave the two sides so drifts of the machine hit both.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import peft
import torch
from torch import nn

from fedmoe.data.collate import collate_train
from fedmoe.data.records import Example
from fedmoe.device import autocast_for, measure, model_device, resolve_device, to_device
from fedmoe.moe.lora import EXPERT_TARGETS, peft_model
from fedmoe.stats import Interval, mean_ci
from fedmoe.train import TrainConfig


@dataclass
class Timed:
    """Tokens processed, wall seconds and (on CUDA) peak memory of one timed piece of work."""

    tokens: int
    seconds: float
    peak_memory: int | None = None

    @property
    def tokens_per_second(self) -> float:
        """Throughput."""
        return self.tokens / self.seconds


def plain_lora_model(base: nn.Module, rank: int, alpha: float, attention: bool) -> nn.Module:
    """The plain reference model: ``base`` wrapped by peft directly, LoRA on the fused experts (and q/v)."""
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_parameters=list(EXPERT_TARGETS),
                             target_modules=["q_proj", "v_proj"] if attention else [])
    return peft_model(base, config)


def plain_steps(model: nn.Module, tokenizer, examples: Sequence[Example], cfg: TrainConfig) -> Timed:
    """A plain training loop: ``cfg.steps`` batches of ``cfg.batch_size`` examples in order, forward, backward,
    clip, AdamW step; returns its tokens and seconds (measured as :func:`fedmoe.device.measure` does)."""
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    device, tokens = model_device(model), 0
    model.train()
    with measure(device) as seen:
        for step in range(cfg.steps):
            start = step * cfg.batch_size % len(examples)
            rows = [examples[(start + i) % len(examples)] for i in range(cfg.batch_size)]
            batch = to_device(collate_train(tokenizer, rows, cfg.max_length), device)
            with autocast_for(model):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())  # a plain loop logs its loss too
            tokens += int(batch["attention_mask"].sum())
    return Timed(tokens, seen.seconds, seen.peak_memory)


def kit_update(client, task) -> tuple[Timed, object]:
    """``client.update(task)`` timed (and on CUDA its peak memory); returns the timing and the update."""
    device = resolve_device(client.fed.cfg.device)
    with measure(device) as seen:
        update = client.update(task)
    return Timed(int(update.metrics["tokens"]), seen.seconds, seen.peak_memory), update


@dataclass
class Ratio:
    """Kit / plain throughput over repetitions: the median and the Student-t interval of the mean."""

    median: float
    interval: Interval
    values: list[float]


def interleaved_ratio(kit: Callable[[], Timed], plain: Callable[[], Timed], reps: int, warmup: int = 1) -> Ratio:
    """Run ``kit`` and ``plain`` ``reps`` times, alternating which goes first, after ``warmup`` unrecorded
    rounds of both; the ratio of their throughputs per repetition, summarised."""
    if reps < 2:
        raise ValueError(f"reps={reps}: need at least 2 repetitions for an interval (fix: --reps 5)")
    for _ in range(warmup):
        kit(), plain()
    values = []
    for rep in range(reps):
        if rep % 2:
            p, k = plain(), kit()
        else:
            k, p = kit(), plain()
        values.append(k.tokens_per_second / p.tokens_per_second)
    return Ratio(statistics.median(values), mean_ci(values), values)

"""The supervised fine-tuning loop every client (and central training) runs.

:func:`finetune` trains a causal LM on :class:`Example` records with the loss on the answer tokens only,
deterministically for a seed, optionally on a subset of parameters (LoRA only, some experts, ...), and
reports what federated methods need: loss, tokens, wall time and per-expert routed token counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from fedmoe.data.collate import IGNORE_INDEX, collate_train
from fedmoe.data.records import Example
from fedmoe.device import autocast_for, model_device, to_device
from fedmoe.moe.routing import record_routing

SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    """Local training hyper-parameters.

    ``steps`` (optimizer steps) wins over ``epochs`` (passes over the examples, may be fractional).
    ``schedule``: learning-rate shape after ``warmup_steps`` linear warmup. ``router_aux_loss``: add the
    model's load-balancing auxiliary loss (``config.router_aux_loss_coef``) to the LM loss.
    """

    lr: float = 1e-3
    batch_size: int = 16
    steps: int | None = None
    epochs: float = 1.0
    max_length: int = 128
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    router_aux_loss: bool = False
    seed: int = 0

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps this config runs on ``n_examples`` examples."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))

    def validate(self) -> None:
        """Raise a clear error for impossible values."""
        if self.lr <= 0 or self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"need lr > 0, batch_size >= 1, max_length >= 2; got {self}")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0 (or None to use epochs)")
        if self.steps is None and self.epochs <= 0:
            raise ValueError(f"epochs={self.epochs} must be > 0 when steps is None")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}; use one of {SCHEDULES}")


@dataclass
class TrainStats:
    """What one call of :func:`finetune` did.

    ``expert_counts`` [L, E]: tokens (padding excluded) routed to each expert of each MoE layer during
    training (``None`` for a dense model); ``tokens``: non-padding tokens processed; ``target_tokens``:
    tokens the loss was computed on.
    """

    mean_loss: float
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    wall_seconds: float = 0.0
    expert_counts: torch.Tensor | None = None


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))


def _batches(n: int, cfg: TrainConfig, total: int) -> Iterable[list[int]]:
    """Index batches in a seeded order; a new permutation each epoch, batches never straddle two epochs."""
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    for _ in range(total):
        if not order:
            order = torch.randperm(n, generator=gen).tolist()
        batch, order = order[: cfg.batch_size], order[cfg.batch_size:]
        yield batch


def _is_moe(model: nn.Module) -> bool:
    from fedmoe.moe.layers import moe_layers

    try:
        moe_layers(model)
        return True
    except ValueError:
        return False


def finetune(model: nn.Module, tokenizer, examples: Sequence[Example], cfg: TrainConfig | None = None, *,
             params: Iterable[nn.Parameter] | None = None, param_groups: Sequence[dict] = (),
             progress: bool = True, step_callback: Callable[[int, float], bool | None] | None = None,
             extra_loss: Callable[[nn.Module, dict], torch.Tensor | None] | None = None) -> TrainStats:
    """Fine-tune ``model`` in place on ``examples`` (loss on answer + eos tokens) and return :class:`TrainStats`.

    ``params``: optimise only these parameters (gradients are not even computed for the others during
    the call); default: every parameter with ``requires_grad``. ``param_groups``: extra optimizer groups
    (dicts with ``params`` and optionally ``lr`` / ``weight_decay``, e.g. FLAME's rescaler at its own learning
    rate), trained alongside but excluded from gradient clipping. ``step_callback(step, loss)`` runs after each
    optimizer step; returning ``True`` stops training early. ``extra_loss(model, batch)`` runs after each
    forward pass (``batch``: the collated inputs, with ``attention_mask``); a tensor it returns is added to
    the LM loss before the backward pass (e.g. FFT-MoE's routing regulariser); the reported losses stay
    the LM loss alone. Batches go to the model's device; a bfloat16 model runs under autocast
    (:mod:`fedmoe.device`). Deterministic for ``cfg.seed``.
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    if not examples:
        raise ValueError("finetune needs at least one example; got an empty list")
    all_params = list(model.parameters())
    chosen = [p for p in all_params if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise ValueError("no parameters to train: pass `params` or leave some parameters with requires_grad=True")
    groups = [{**g, "params": list(g["params"])} for g in param_groups]
    chosen_ids = {id(p) for p in chosen} | {id(p) for g in groups for p in g["params"]}
    saved_flags = [p.requires_grad for p in all_params]
    for p in all_params:
        p.requires_grad_(id(p) in chosen_ids)
    total = cfg.total_steps(len(examples))
    opt = torch.optim.AdamW([{"params": chosen}, *groups], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s, total))
    moe = _is_moe(model)
    device = model_device(model)
    extra = {"output_router_logits": cfg.router_aux_loss} if moe else {}
    was_training = model.training
    model.train()
    torch.manual_seed(cfg.seed)
    stats = TrainStats(mean_loss=float("nan"))
    start = time.perf_counter()
    try:
        with record_routing(model) if moe else nullcontext() as rec:
            bar = tqdm(_batches(len(examples), cfg, total), total=total, desc="finetune", disable=not progress)
            for step, idx in enumerate(bar):
                batch = to_device(collate_train(tokenizer, [examples[i] for i in idx], cfg.max_length), device)
                with autocast_for(model):
                    loss = model(**batch, **extra).loss
                    added = extra_loss(model, batch) if extra_loss is not None else None
                (loss if added is None else loss + added).backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(chosen, cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                value = float(loss.detach())
                stats.losses.append(value)
                stats.steps += 1
                stats.examples += len(idx)
                stats.tokens += int(batch["attention_mask"].sum())
                stats.target_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
                bar.set_postfix(loss=f"{value:.3f}")
                if step_callback is not None and step_callback(step, value):
                    break
            stats.expert_counts = rec.counts.clone() if rec is not None else None
    finally:
        for p, flag in zip(all_params, saved_flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    stats.wall_seconds = time.perf_counter() - start
    stats.mean_loss = sum(stats.losses) / len(stats.losses) if stats.losses else float("nan")
    return stats


"""FMES: each client keeps the experts its data activates most often (as many per layer as fit its device,
the same number in every layer), drops the others (``keep_experts``) and fine-tunes the kept ones (and
attention, see ``attention``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.cost import token_flops
from fedmoe.fl.federation import client_seed
from fedmoe.methods.base import register
from fedmoe.methods.experts import attention as attn
from fedmoe.methods.experts.attention import AttentionArgs
from fedmoe.methods.experts.base import (
    ExpertClient,
    ExpertHalf,
    ExpertServer,
    expert_tensors,
    train_experts,
)
from fedmoe.methods.flux.budget import expert_work, fmes_kept, tiny_count
from fedmoe.methods.flux.profiling import example_batches, profile_subset, quantized_profile
from fedmoe.moe.quant import SCHEMES
from fedmoe.moe.surgery import keep_experts


@dataclass
class FMESArgs(AttentionArgs):
    """``profile_examples``/``profile_scheme``: activation frequencies are measured like FLUX's profile (on
    the quantized global model, forward only, all local examples by default (None); the forward work is
    charged, not hidden). Attention options: :class:`AttentionArgs`."""

    profile_examples: int | None = None
    profile_scheme: str = "nf4"

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.profile_examples is not None and self.profile_examples < 1) or self.profile_scheme not in SCHEMES:
            raise ValueError(f"profile_examples={self.profile_examples} must be >= 1 (or None: all) and "
                             f"profile_scheme={self.profile_scheme!r} one of {SCHEMES}")


@dataclass(frozen=True)
class FMESBudget:
    """Experts an FMES client keeps per layer: on the priced model and on the trained model."""

    priced: int
    kept: int


class FMESBudgets(ExpertHalf):
    """FMES's budget rule, shared by both halves."""

    def make_budget(self, client: int) -> FMESBudget:
        priced = fmes_kept(self.pm, self.fed.devices[client], self.attention_cost.memory_bytes)
        # At least one expert per layer on the trained model even where the fraction rounds to zero.
        return FMESBudget(priced, tiny_count(priced / self.pm.num_experts, self.shape.num_experts))


class FMESServer(FMESBudgets, ExpertServer):
    """Expert pruning by activation frequency (see module docstring): the experts kit's server."""


class FMESClient(FMESBudgets, ExpertClient):
    """Profiles the quantized global model, keeps its most frequent experts, trains them (and attention)."""

    def update(self, task: ClientTask) -> ClientUpdate:
        fed, c, budget = self.fed, task.client_id, self.budget(task.client_id)
        cfg = fed.cfg.fed
        examples = fed.client_data(c)
        model = self.global_model(task)
        probe = profile_subset(examples, self.args.profile_examples, client_seed(fed.cfg.seed, 0, c))
        batches = example_batches(fed.tokenizer, probe, max_length=cfg.max_length, batch_size=cfg.batch_size)
        profile = quantized_profile(attn.folded(model, self.args, task.tensors), batches,
                                    scheme=self.args.profile_scheme)
        keep = [sorted(torch.argsort(-row, stable=True)[: budget.kept].tolist()) for row in profile.freq]
        keep_experts(model, keep)
        model = attn.attach(model, self.args, task.tensors)
        stats = train_experts(fed, model, task, examples, extra_params=attn.trainable(model, self.args)).stats
        full = torch.zeros(profile.freq.shape, dtype=torch.long)
        for layer, idx in enumerate(keep):
            full[layer, idx] = stats.expert_counts[layer, : len(idx)]
        pairs = [(layer, e) for layer, idx in enumerate(keep) for e in idx]
        tensors = {**expert_tensors(model, pairs, index_map=keep), **attn.attention_state(model, self.args)}
        update = self.expert_update(task, tensors, stats, len(examples), expert_tokens=full.tolist())
        update.diagnostics = {"kept": keep}
        pm = self.pm
        kept = budget.priced * pm.num_layers
        update.work = expert_work(fed, pm, stats, trainable=kept, slots=kept, tuned_token_share=1.0,
                                  bytes_down=kept * pm.expert_bytes[16] + pm.total_experts * pm.expert_bytes[4],
                                  bytes_up=kept * pm.expert_bytes[16], attention=self.attention_cost)
        f = token_flops(fed.priced_config, seq_len=max(1, int(stats.tokens / max(stats.examples, 1))))
        update.work["train_flops"] += f.forward * profile.n_tokens * fed.cfg.cost.tokens_scale
        return update


FMES = register("fmes", FMESArgs, FMESServer, FMESClient)

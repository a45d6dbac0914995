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
from fedmoe.methods.flux import attention as attn
from fedmoe.methods.flux.attention import AttentionArgs
from fedmoe.methods.flux.budget import expert_work, fmes_kept, priced_model, tiny_count
from fedmoe.methods.flux.experts import ExpertMethod, expert_tensors, load_fused_state, train_experts
from fedmoe.methods.flux.profiling import example_batches, profile_subset, quantized_profile
from fedmoe.moe.layers import moe_layers
from fedmoe.moe.surgery import keep_experts


@dataclass
class FMESArgs(AttentionArgs):
    """``profile_examples``/``profile_scheme``: activation frequencies are measured like FLUX's profile (on
    the quantized global model, forward only, all local examples by default (None); the forward work is
    charged, not hidden). Attention options: :class:`AttentionArgs`."""

    profile_examples: int | None = None
    profile_scheme: str = "nf4"


@register("fmes")
class FMES(ExpertMethod):
    """Expert pruning by activation frequency (see module docstring)."""

    Args = FMESArgs

    def __init__(self, fed, args=None):
        super().__init__(fed, args)
        self.pm = priced_model(fed)
        num = moe_layers(self._server)[0].num_router_experts
        self.attention_cost = attn.priced_attention(fed.priced_config, self.args)
        self.kept_priced = [fmes_kept(self.pm, d, self.attention_cost.memory_bytes) for d in fed.devices]
        # At least one expert per layer on the trained model even where the fraction rounds to zero.
        self.kept = [tiny_count(k / self.pm.num_experts, num) for k in self.kept_priced]

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, self.global_state) for c in clients]

    def client_update(self, task: ClientTask) -> ClientUpdate:
        fed, c = self.fed, task.client_id
        cfg = fed.cfg.fed
        examples = fed.client_data(c)
        model = attn.load_attention(load_fused_state(fed.base_model(), task.tensors), self.args, task.tensors)
        probe = profile_subset(examples, self.args.profile_examples, client_seed(fed.cfg.seed, 0, c))
        batches = example_batches(fed.tokenizer, probe, max_length=cfg.max_length, batch_size=cfg.batch_size)
        profile = quantized_profile(attn.folded(model, self.args, task.tensors), batches,
                                    scheme=self.args.profile_scheme)
        keep = [sorted(torch.argsort(-row, stable=True)[: self.kept[c]].tolist()) for row in profile.freq]
        keep_experts(model, keep)
        model = attn.attach(model, self.args, task.tensors)
        stats = train_experts(fed, model, task, examples, extra_params=attn.trainable(model, self.args)).stats
        full = torch.zeros(profile.freq.shape, dtype=torch.long)
        for layer, idx in enumerate(keep):
            full[layer, idx] = stats.expert_counts[layer, : len(idx)]
        pairs = [(layer, e) for layer, idx in enumerate(keep) for e in idx]
        tensors = {**expert_tensors(model, pairs, index_map=keep), **attn.attention_state(model, self.args)}
        update = ClientUpdate(c, task.round, tensors, num_examples=len(examples),
                              metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens},
                              expert_tokens=full.tolist(), extra={"kept": keep})
        pm = self.pm
        kept = self.kept_priced[c] * pm.num_layers
        update.work = expert_work(fed, pm, stats, trainable=kept, slots=kept, tuned_token_share=1.0,
                                  bytes_down=kept * pm.expert_bytes[16] + pm.total_experts * pm.expert_bytes[4],
                                  bytes_up=kept * pm.expert_bytes[16], attention=self.attention_cost)
        f = token_flops(fed.priced_config, seq_len=max(1, int(stats.tokens / max(stats.examples, 1))))
        update.work["train_flops"] += f.forward * profile.n_tokens * fed.cfg.cost.tokens_scale
        return update

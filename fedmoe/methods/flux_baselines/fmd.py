"""FMD: every client fine-tunes all routed experts of the whole model (and attention, see ``attention``);
experts (with their training state) that do not fit on the device are offloaded to host memory, moved in and
out every step, and updated by a host-side optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import register
from fedmoe.methods.flux import attention as attn
from fedmoe.methods.flux.attention import AttentionArgs
from fedmoe.methods.flux.budget import expert_work, offload_resident, offload_work, priced_model
from fedmoe.methods.flux.experts import ExpertMethod, expert_tensors, load_fused_state, train_experts


@dataclass
class FMDArgs(AttentionArgs):
    """``transfers_per_step``: host-device crossings of an offloaded expert per optimizer step, in units of its
    weights (default 3: weights in for the forward pass, in again for the backward pass, bf16 gradients out
    to the host-side optimizer). Attention options: :class:`AttentionArgs`."""

    transfers_per_step: int = 3


@register("fmd")
class FMD(ExpertMethod):
    """Whole-model expert fine-tuning with offloading (see module docstring)."""

    Args = FMDArgs
    bits = 16  # storage of the base weights on the device (FMQ: 4)

    def __init__(self, fed, args=None):
        super().__init__(fed, args)
        self.pm = priced_model(fed)
        self.attention_cost = attn.priced_attention(fed.priced_config, self.args)
        self.resident = [offload_resident(self.pm, d, self.bits, self.attention_cost.memory_bytes) for d in fed.devices]

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, self.global_state) for c in clients]

    def client_model(self, task: ClientTask):
        """The model the client trains: the global model (FMQ quantizes it)."""
        model = load_fused_state(self.fed.base_model(), task.tensors)
        return attn.load_attention(model, self.args, task.tensors)

    def client_update(self, task: ClientTask) -> ClientUpdate:
        model = attn.attach(self.client_model(task), self.args, task.tensors)
        examples = self.fed.client_data(task.client_id)
        stats = train_experts(self.fed, model, task, examples, extra_params=attn.trainable(model, self.args)).stats
        counts = stats.expert_counts
        pairs = [(layer, e) for layer in range(counts.shape[0]) for e in range(counts.shape[1])]
        tensors = {**expert_tensors(model, pairs), **attn.attention_state(model, self.args)}
        update = ClientUpdate(task.client_id, task.round, tensors, num_examples=len(examples),
                              metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens},
                              expert_tokens=counts.tolist())
        update.work = self.price(task.client_id, stats)
        update.extra = {"resident_fraction": self.resident[task.client_id] / self.pm.total_experts}
        return update

    def price(self, client: int, stats) -> dict[str, float]:
        """Resident experts train on the device; offloaded ones cost host-link transfers, host RAM and a host
        optimizer step (:func:`offload_work`). Downloads all experts at ``bits``, uploads all in bf16 (plus
        the attention tensors each way)."""
        pm, resident = self.pm, self.resident[client]
        offload = offload_work(pm, resident, self.bits, stats.steps, self.args.transfers_per_step)
        return expert_work(self.fed, pm, stats, trainable=resident, slots=resident, tuned_token_share=1.0,
                           bits=self.bits, bytes_down=pm.total_experts * pm.expert_bytes[self.bits],
                           bytes_up=pm.total_experts * pm.expert_bytes[16], attention=self.attention_cost,
                           offload=offload)

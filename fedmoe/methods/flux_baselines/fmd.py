"""FMD: every client fine-tunes all routed experts of the whole model (and attention, see ``attention``);
experts (with their training state) that do not fit on the device are offloaded to host memory, moved in and
out every step, and updated by a host-side optimizer."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import register
from fedmoe.methods.experts import attention as attn
from fedmoe.methods.experts.attention import AttentionArgs
from fedmoe.methods.experts.base import ExpertClient, ExpertHalf, ExpertServer, expert_tensors, train_experts
from fedmoe.methods.flux.budget import expert_work, offload_resident, offload_work


@dataclass
class FMDArgs(AttentionArgs):
    """``transfers_per_step``: host-device crossings of an offloaded expert per optimizer step, in units of its
    weights (default 3: weights in for the forward pass, in again for the backward pass, bf16 gradients out
    to the host-side optimizer). Attention options: :class:`AttentionArgs`."""

    transfers_per_step: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transfers_per_step < 1:
            raise ValueError(f"transfers_per_step={self.transfers_per_step} must be >= 1 (e.g. 3)")


class FMDBudgets(ExpertHalf):
    """FMD's budget rule, shared by both halves: how many priced experts stay resident on the device."""

    bits = 16  # storage of the base weights on the device (FMQ: 4)

    def make_budget(self, client: int) -> int:
        return offload_resident(self.pm, self.fed.devices[client], self.bits, self.attention_cost.memory_bytes)


class FMDServer(FMDBudgets, ExpertServer):
    """Whole-model expert fine-tuning with offloading (see module docstring): the experts kit's server."""


class FMDClient(FMDBudgets, ExpertClient):
    """Trains every routed expert of the global model (and attention) and prices the offloading."""

    def client_model(self, task: ClientTask):
        """The model the client trains: the global model (FMQ quantizes it)."""
        return self.global_model(task)

    def update(self, task: ClientTask) -> ClientUpdate:
        model = attn.attach(self.client_model(task), self.args, task.tensors)
        examples = self.fed.client_data(task.client_id)
        stats = train_experts(self.fed, model, task, examples, extra_params=attn.trainable(model, self.args)).stats
        counts = stats.expert_counts
        pairs = [(layer, e) for layer in range(counts.shape[0]) for e in range(counts.shape[1])]
        tensors = {**expert_tensors(model, pairs), **attn.attention_state(model, self.args)}
        update = self.expert_update(task, tensors, stats, len(examples))
        update.work = self.price(task.client_id, stats)
        update.diagnostics = {"resident_fraction": self.budget(task.client_id) / self.pm.total_experts}
        return update

    def price(self, client: int, stats) -> dict[str, float]:
        """Resident experts train on the device; offloaded ones cost host-link transfers, host RAM and a host
        optimizer step (:func:`offload_work`). Downloads all experts at ``bits``, uploads all in bf16 (plus
        the attention tensors each way)."""
        pm, resident = self.pm, self.budget(client)
        offload = offload_work(pm, resident, self.bits, stats.steps, self.args.transfers_per_step)
        return expert_work(self.fed, pm, stats, trainable=resident, slots=resident, tuned_token_share=1.0,
                           bits=self.bits, bytes_down=pm.total_experts * pm.expert_bytes[self.bits],
                           bytes_up=pm.total_experts * pm.expert_bytes[16], attention=self.attention_cost,
                           offload=offload)


FMD = register("fmd", FMDArgs, FMDServer, FMDClient)

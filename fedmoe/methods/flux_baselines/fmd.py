"""FMD: every client fine-tunes all routed experts of the whole model; experts (with their training
state) that do not fit on the device are offloaded to host memory and moved in and out every step."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import register
from fedmoe.methods.flux.budget import expert_work, offload_resident, priced_model
from fedmoe.methods.flux.experts import ExpertMethod, expert_tensors, load_fused_state, train_experts


@dataclass
class FMDArgs:
    """``transfers_per_step``: host-device crossings of an offloaded expert per optimizer step, in units of its
    weights (default 3: weights in for the forward pass, in again for the backward pass, bf16 gradients out
    to the host-side optimizer)."""

    transfers_per_step: int = 3

    def __post_init__(self) -> None:
        if self.transfers_per_step < 1:
            raise ValueError(f"transfers_per_step={self.transfers_per_step} must be >= 1 (e.g. 3)")


@register("fmd")
class FMD(ExpertMethod):
    """Whole-model expert fine-tuning with offloading (see module docstring)."""

    Args = FMDArgs
    bits = 16  # storage of the base weights on the device (FMQ: 4)

    def __init__(self, fed, args=None):
        super().__init__(fed, args)
        self.pm = priced_model(fed)
        self.resident = [offload_resident(self.pm, d, self.bits) for d in fed.devices]

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, self.global_state) for c in clients]

    def client_model(self, task: ClientTask):
        """The model the client trains: the global model (FMQ quantizes it)."""
        return load_fused_state(self.fed.base_model(), task.tensors)

    def client_update(self, task: ClientTask) -> ClientUpdate:
        model = self.client_model(task)
        examples = self.fed.client_data(task.client_id)
        stats = train_experts(self.fed, model, task, examples).stats
        counts = stats.expert_counts
        pairs = [(layer, e) for layer in range(counts.shape[0]) for e in range(counts.shape[1])]
        update = ClientUpdate(task.client_id, task.round, expert_tensors(model, pairs), num_examples=len(examples),
                              metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens},
                              expert_tokens=counts.tolist())
        update.work = self.price(task.client_id, stats)
        update.extra = {"resident_fraction": self.resident[task.client_id] / self.pm.total_experts}
        return update

    def price(self, client: int, stats) -> dict[str, float]:
        """Resident experts train on the device; each offloaded expert crosses the host link
        ``transfers_per_step`` times per step (weights at ``bits``, gradients in bf16). Downloads all experts
        at ``bits``, uploads all in bf16."""
        pm, resident = self.pm, self.resident[client]
        offloaded = pm.total_experts - resident
        per_step = offloaded * ((self.args.transfers_per_step - 1) * pm.expert_bytes[self.bits] + pm.expert_bytes[16])
        return expert_work(self.fed, pm, stats, trainable=resident, slots=resident, tuned_token_share=1.0,
                           bits=self.bits, bytes_down=pm.total_experts * pm.expert_bytes[self.bits],
                           bytes_up=pm.total_experts * pm.expert_bytes[16], host_device_bytes=per_step * stats.steps)

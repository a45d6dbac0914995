"""HetLoRA (Cho et al., 2024): clients of compute tier t train rank ``r_i = max(1, r // 2**t)`` copies of one
global rank-r LoRA on every expert.

- send (:meth:`HetLoRA.plan`): the global LoRA truncated to each client's first ``r_i`` components;
- aggregate (:meth:`HetLoRA.aggregate`): zero-pad every client's factors to rank r and average A and B
  separately, weighted by ``|D_i|`` (:func:`fedmoe.methods.hetero.lowrank.weighted_factor_average`).
The optional rank self-pruning of the paper is not implemented (the issue leaves it out).
"""

from __future__ import annotations

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import register
from fedmoe.methods.hetero.base import HeteroLoRA
from fedmoe.methods.hetero.lowrank import from_factors, pad, weighted_factor_average


@register("hetlora")
class HetLoRA(HeteroLoRA):
    """Rank-heterogeneous LoRA with zero-padding FedAvg."""

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        tasks = []
        for c in clients:
            rank = self.client_rank(c)
            tasks.append(ClientTask(c, round_, self.truncated(self.global_state, rank),
                                    {"rank": rank, "tier": self.tiers[c]}))
        return tasks

    def client_update(self, task: ClientTask) -> ClientUpdate:
        return self.train_truncated(task)

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        avg = weighted_factor_average([self.factors(u.tensors) for u in updates], [u.num_examples for u in updates])
        self.global_state = from_factors(pad(avg, self.args.rank))
        return {"clients": len(updates), "mean_rank": sum(u.extra["rank"] for u in updates) / len(updates)}

"""HetLoRA (Cho et al., 2024): clients of compute tier t train rank ``r_i = max(1, r // 2**t)`` copies of one
global rank-r LoRA on every expert.

- send (:meth:`HetLoRA.plan`): the global LoRA truncated to each client's first ``r_i`` components;
- aggregate (:meth:`HetLoRA.aggregate`): zero-pad every client's factors to rank r and average A and B
  separately, weighted by ``|D_i|`` (:func:`fedmoe.methods.hetero.lowrank.weighted_factor_average`).
The optional rank self-pruning of the paper is not implemented (see README.md).
"""

from __future__ import annotations

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import register
from fedmoe.methods.hetero.base import HeteroArgs, HeteroClient, HeteroServer
from fedmoe.methods.hetero.lowrank import from_factors, pad, weighted_factor_average


class HetLoRAServer(HeteroServer):
    """Rank-heterogeneous LoRA with zero-padding FedAvg."""

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        tasks = []
        for c in clients:
            rank = self.budget(c).rank
            tasks.append(ClientTask(c, round_, self.truncated(self.global_state, rank), {"rank": rank}, self.notes(c)))
        return tasks

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        avg = weighted_factor_average([self.factors(u.tensors) for u in updates], [u.num_examples for u in updates])
        self.global_state = from_factors(pad(avg, self.args.rank))
        return {"clients": len(updates), "mean_rank": self.mean_rank(updates)}


class HetLoRAClient(HeteroClient):
    """Trains the received rank-r_i truncation of the global LoRA and sends it back."""

    def update(self, task: ClientTask) -> ClientUpdate:
        return self.train_truncated(task)


HETLORA = register("hetlora", HeteroArgs, HetLoRAServer, HetLoRAClient)

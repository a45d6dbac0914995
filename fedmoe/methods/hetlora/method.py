"""HetLoRA (Cho et al., 2024): clients of compute tier t train rank ``r_i = max(1, r // 2**t)`` copies of one
global rank-r LoRA on every expert.

- send (:meth:`HetLoRAServer.plan`): the global LoRA truncated to each client's first ``r_i`` components;
- aggregate (:meth:`HetLoRAServer.aggregate`): zero-pad every client's factors to rank r and average A and B
  separately (:func:`fedmoe.methods.hetero.lowrank.weighted_factor_average`), weighted as the paper's
  sparsity-weighted aggregation by the norm ``||B_i A_i||_F`` of each client's LoRA, per expert and module
  (:func:`fedmoe.methods.hetero.lowrank.product_norms`; ``weighting="norm"``), or by ``|D_i|``
  (``weighting="examples"``).
What a client deploys (:meth:`HetLoRAServer.deployed_models`) is that truncation of the final global LoRA.
The optional rank self-pruning of the paper is not implemented (see README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import Deployed, register
from fedmoe.methods.hetero.base import HeteroArgs, HeteroClient, HeteroServer
from fedmoe.methods.hetero.lowrank import from_factors, pad, product_norms, weighted_factor_average

WEIGHTINGS = ("norm", "examples")


@dataclass
class HetLoRAArgs(HeteroArgs):
    """HetLoRA options: ``weighting`` of the clients in the zero-padded average, ``norm`` (the paper's
    sparsity-weighted aggregation, ``||B_i A_i||_F`` per expert LoRA) or ``examples`` (``|D_i|``, FedAvg)."""

    weighting: str = "norm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"method_args.weighting={self.weighting!r}; use one of {WEIGHTINGS}")


class HetLoRAServer(HeteroServer):
    """Rank-heterogeneous LoRA with zero-padding, sparsity-weighted aggregation."""

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        tasks = []
        for c in clients:
            rank = self.budget(c).rank
            tasks.append(ClientTask(c, round_, self.truncated(self.global_state, rank), {"rank": rank}, self.notes(c)))
        return tasks

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        factors = [self.factors(u.tensors) for u in updates]
        weights = product_norms(factors) if self.args.weighting == "norm" else [u.num_examples for u in updates]
        self.global_state = from_factors(pad(weighted_factor_average(factors, weights), self.args.rank))
        return {"clients": len(updates), "mean_rank": self.mean_rank(updates)}

    def deployed_models(self):
        """Each client deploys the global LoRA truncated to its rank r_i (what :meth:`plan` sends it), zero-padded
        into the server's model; one group per rank (the full-rank group holds the global model)."""
        for rank, clients in self.rank_groups().items():
            state = self.padded(self.truncated(self.global_state, rank))
            yield Deployed(clients, self.adapter_model(state), same_as_global=rank == self.args.rank)


class HetLoRAClient(HeteroClient):
    """Trains the received rank-r_i truncation of the global LoRA and sends it back."""

    def update(self, task: ClientTask) -> ClientUpdate:
        return self.train_truncated(task)


HETLORA = register("hetlora", HetLoRAArgs, HetLoRAServer, HetLoRAClient)

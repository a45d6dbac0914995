"""FlexLoRA (Bai et al., 2024): clients of compute tier t train rank ``r_i = max(1, r // 2**t)`` LoRAs; the server
keeps the full-size global update.

- aggregate (:meth:`FlexLoRAServer.aggregate`): every client's full-rank product ``B_i A_i`` per expert, averaged
  with weights ``|D_i|``: ``Delta W = sum_i |D_i| B_i A_i / sum_i |D_i|``
  (:func:`fedmoe.methods.hetero.lowrank.weighted_product_average`);
- redistribute (:meth:`FlexLoRAServer.plan`): the best rank-``r_i`` factors of ``Delta W`` by truncated SVD
  (:func:`fedmoe.methods.hetero.lowrank.svd_factors`: ``B = U_r S_r``, ``A = V_r^T``);
- the global model (:meth:`FlexLoRAServer.eval_model`) is the base with the full ``alpha / r * Delta W`` merged; a
  client deploys its rank-r_i copy (:meth:`FlexLoRAServer.deployed_models`).
Round 1 sends the truncated initial LoRA (its product is zero, whose SVD has no direction to send).
"""

from __future__ import annotations

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import Deployed, register
from fedmoe.methods.hetero.adapters import adapted_base_weights
from fedmoe.methods.hetero.base import HeteroArgs, HeteroServer
from fedmoe.methods.hetero.lowrank import from_factors, svd_factors, weighted_product_average
from fedmoe.methods.hetlora.method import HetLoRAClient


class FlexLoRAServer(HeteroServer):
    """Rank-heterogeneous LoRA aggregated as full-size products, redistributed by SVD."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self._base = adapted_base_weights(self.model)
        self.delta = None  # {prefix: [G, out, in]} global update, None before the first aggregation

    def client_state(self, rank: int):
        """The rank-``rank`` LoRA a client receives."""
        if self.delta is None:
            return self.truncated(self.global_state, rank)
        return from_factors(svd_factors(self.delta, rank, dtype=next(iter(self.global_state.values())).dtype))

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        states = {r: self.client_state(r) for r in sorted({self.budget(c).rank for c in clients})}
        return [ClientTask(c, round_, dict(states[self.budget(c).rank]), {"rank": self.budget(c).rank}, self.notes(c))
                for c in clients]

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        self.delta = weighted_product_average([self.factors(u.tensors) for u in updates],
                                              [u.num_examples for u in updates])
        return {"clients": len(updates), "mean_rank": self.mean_rank(updates)}

    def eval_model(self):
        return self.merged_model(self._base, self.delta)

    def deployed_models(self):
        """Each client deploys the rank-r_i LoRA it receives (:meth:`client_state`: the truncated SVD of the global
        update) on the base weights, one group per rank; never the global model (its full-size update)."""
        for rank, clients in self.rank_groups().items():
            self.merged_model(self._base, None)  # the base weights, without the merged global update
            yield Deployed(clients, self.adapter_model(self.padded(self.client_state(rank))), same_as_global=False)

    def state_dict(self):
        return {"global": self.global_state, "delta": self.delta}

    def load_state_dict(self, state):
        self.global_state, self.delta = state["global"], state["delta"]


# The client is HetLoRA's: pad the received rank-r_i LoRA, train it, send its r_i components back.
FLEXLORA = register("flexlora", HeteroArgs, FlexLoRAServer, HetLoRAClient)

"""FLoRA (Wang et al., 2024): heterogeneous-rank LoRA aggregated without interference, by stacking.

Each round every sampled client of compute tier t starts a fresh rank ``r_i = max(1, r // 2**t)`` LoRA (A
random, B zero) on top of the current global model, trains it and sends it. The server stacks them
(:func:`fedmoe.methods.hetero.lowrank.stack_factors`): ``A = [A_1; ...; A_N]``, ``B = [p_1 B_1, ..., p_N B_N]``
with ``p_i = |D_i| / sum_j |D_j|``, so ``B A = sum_i p_i B_i A_i`` exactly, and merges ``alpha / r * B A``
into the base weights (:meth:`FLoRAServer.aggregate`); the global model is the base plus every round's merged
update (:meth:`FLoRAServer.eval_model`).

Transport: the paper's server broadcasts the stacked modules and clients merge them into their local
copy. Here a client is rebuilt from the task alone, so the task carries the accumulated merged update
(dense) and the client writes ``base + alpha / r * Delta W`` itself; the download is *priced* as what FLoRA
sends, the previous round's stacked modules (rank ``sum_i r_i``).
"""

from __future__ import annotations

import torch

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.federation import client_seed
from fedmoe.methods.base import register
from fedmoe.methods.hetero.adapters import (
    adapted_base_weights,
    fresh_factors,
    lora_scaling,
    set_merged_weights,
)
from fedmoe.methods.hetero.base import HeteroArgs, HeteroClient, HeteroServer
from fedmoe.methods.hetero.lowrank import from_factors, products, stack_factors
from fedmoe.moe.lora import lora_state_dict

DELTA = ".delta"


class FLoRAServer(HeteroServer):
    """Stacking aggregation of heterogeneous-rank LoRA, merged into the base every round."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self._base = adapted_base_weights(self.model)
        self.delta = None  # {prefix: [G, out, in]} sum of every round's merged update (float64)
        self.last_stack = {"rank": 0, "bytes": 0}

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        tensors = {p + DELTA: d.float() for p, d in (self.delta or {}).items()}
        return [ClientTask(c, round_, dict(tensors), {"rank": self.budget(c).rank,
                                                      "down_rank": self.last_stack["rank"],
                                                      "down_bytes": self.last_stack["bytes"]}, self.notes(c))
                for c in clients]

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        client_factors = [self.factors(u.tensors) for u in updates]
        stacked = stack_factors(client_factors, [u.num_examples for u in updates])
        update = products(stacked)
        self.delta = update if self.delta is None else {p: self.delta[p] + update[p] for p in update}
        rank = sum(self.budget(u.client_id).rank for u in updates)
        numel = sum(a.numel() + b.numel() for a, b in stacked.values())
        self.last_stack = {"rank": rank, "bytes": numel * next(iter(stacked.values()))[0].element_size()}
        return {"clients": len(updates), "stacked_rank": rank}

    def eval_model(self):
        return self.merged_model(self._base, self.delta)

    def state_dict(self):
        return {"global": self.global_state, "delta": self.delta, "last_stack": self.last_stack}

    def load_state_dict(self, state):
        self.global_state, self.delta, self.last_stack = state["global"], state["delta"], state["last_stack"]


class FLoRAClient(HeteroClient):
    """Writes the accumulated global update into its model, trains a fresh rank-r_i LoRA on top, sends it."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self._base = adapted_base_weights(self.model)

    def update(self, task: ClientTask) -> ClientUpdate:
        rank = task.plan["rank"]
        deltas = {k[: -len(DELTA)]: v for k, v in task.tensors.items()}
        set_merged_weights(self.model, self._base, deltas, lora_scaling(self.model))
        gen = torch.Generator().manual_seed(client_seed(self.fed.cfg.seed, task.round, task.client_id))
        fresh = from_factors(fresh_factors(self.factors(lora_state_dict(self.model)), rank, gen))
        stats, state = self.fit(task, fresh, top_k=self.full_top_k)
        return self.make_update(task, self.truncated(state, rank), stats, top_k=self.full_top_k, rank=rank,
                                down_rank=task.plan["down_rank"], bytes_down=task.plan["down_bytes"])


FLORA = register("flora", HeteroArgs, FLoRAServer, FLoRAClient)

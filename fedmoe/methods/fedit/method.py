"""FedIT (Zhang et al., 2024): every client trains the same LoRA adapter; the server averages it (FedAvg).

On an MoE base model the adapter sits on every expert (peft ``target_parameters``) and, by default,
on the attention projections. Two reference lines share the plumbing: ``central`` trains one adapter
on the union of all clients' data (the upper bound), ``local`` lets each client train its own adapter
and never aggregates (the lower bound non-IID data gives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedmoe.data.records import Example
from fedmoe.fl.aggregate import weighted_average
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.pricing import lora_params, payload_bytes, training_work
from fedmoe.methods.base import Deployed, register
from fedmoe.methods.hetero.base import LoRAArgs, LoRAClient, LoRAServer, client_update, updates_of


@dataclass
class FedITArgs(LoRAArgs):
    """FedIT options: LoRA rank, scaling ``alpha`` and whether attention projections get LoRA too."""

    attention: bool = True

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"rank={self.rank} and alpha={self.alpha} must be >= 1 and > 0 (e.g. rank=8, alpha=16)")


class FedITServer(LoRAServer):
    """Homogeneous LoRA with FedAvg weighted by client example counts."""

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, dict(self.global_state)) for c in clients]

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        self.global_state = weighted_average(*updates_of(updates))
        return {"clients": len(updates)}


class FedITClient(LoRAClient):
    """Trains the received adapter on the client's data and sends it back."""

    bits: dict[str, int] | None = None  # storage of the base weights in the pricing (FedIT-NF4: 4 bits)

    def update(self, task: ClientTask) -> ClientUpdate:
        return self.train_adapter(task, self.fed.client_data(task.client_id))

    def train_adapter(self, task: ClientTask, examples: Sequence[Example], **train_overrides) -> ClientUpdate:
        """Load the task's adapter, fine-tune it on ``examples``, return the new adapter and its work."""
        stats, state = self.train(task, task.tensors, examples, **train_overrides)
        update = client_update(task, state, stats, len(examples))
        update.work = self.price(task, update, stats)
        update.diagnostics = {"rank": self.args.rank, "train_flops": update.work["train_flops"]}
        return update

    def price(self, task: ClientTask, update: ClientUpdate, stats) -> dict[str, float]:
        """Cost-model inputs: LoRA training on the priced architecture (see :mod:`fedmoe.fl.pricing`), the
        base weights stored at ``bits`` (default: the model's dtype)."""
        lora = lora_params(self.fed.priced_config, self.args.rank, attention=self.args.attention)
        cfg = self.fed.cfg.fed
        extra = {"bits": self.bits} if self.bits else {}
        return training_work(
            self.fed, tokens=stats.tokens, seq_len=stats.tokens / max(stats.examples, 1),
            batch_tokens=cfg.batch_size * cfg.max_length, trainable_params=lora.total,
            trainable_active=lora.active, adapter_active=lora.active,
            bytes_down=payload_bytes(self.fed, task.bytes_down, lora.total),
            bytes_up=payload_bytes(self.fed, update.bytes_up, lora.total), **extra,
        )


class CentralServer(FedITServer):
    """Reference: one adapter trained on all clients' data pooled, as many steps per round as all clients."""

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(0, round_, dict(self.global_state), {"steps_scale": len(clients)})]


class CentralClient(FedITClient):
    """Trains the one adapter on the pooled data for ``steps_scale`` times the local steps."""

    def update(self, task: ClientTask) -> ClientUpdate:
        steps = self.fed.cfg.fed.local_steps * task.plan["steps_scale"]
        return self.train_adapter(task, self.fed.train_set, steps=steps)


class LocalOnlyServer(FedITServer):
    """Reference: each client trains its own adapter on its own data and never shares it.

    The reported score is the mean over all clients' adapters evaluated on the common test set.
    """

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self.client_states = {c: dict(self.global_state) for c in range(fed.cfg.fed.num_clients)}

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, dict(self.client_states[c])) for c in clients]

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        for u in updates:
            self.client_states[u.client_id] = u.tensors
        return {"clients": len(updates)}

    def eval_models(self):
        """One model per client: the runner averages their scores. Before any client has trained every client
        holds the initial adapter, so one evaluation stands for all (the same mean, a tenth of the work)."""
        states = [self.client_states[c] for c in sorted(self.client_states)]
        if all(_same_state(state, self.global_state) for state in states):
            states = states[:1]
        for state in states:
            yield self.adapter_model(state)

    def deployed_models(self):
        """Each client deploys its own adapter; clients holding identical adapters (those that never trained
        hold the initial one, the global model) share a group."""
        groups: list[tuple[dict[str, torch.Tensor], list[int]]] = []
        for c in sorted(self.client_states):
            state = self.client_states[c]
            for held, members in groups:
                if _same_state(held, state):
                    members.append(c)
                    break
            else:
                groups.append((state, [c]))
        for state, clients in groups:
            yield Deployed(tuple(clients), self.adapter_model(state),
                           same_as_global=_same_state(state, self.global_state))

    def state_dict(self):
        return {"clients": self.client_states}

    def load_state_dict(self, state):
        self.client_states = {int(c): s for c, s in state["clients"].items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FEDIT = register("fedit", FedITArgs, FedITServer, FedITClient)
CENTRAL = register("central", FedITArgs, CentralServer, CentralClient)
LOCAL = register("local", FedITArgs, LocalOnlyServer, FedITClient)

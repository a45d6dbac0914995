"""FedIT (Zhang et al., 2024): every client trains the same LoRA adapter; the server averages it (FedAvg).

On an MoE base model the adapter sits on every expert (peft ``target_parameters``) and, by default,
on the attention projections. Two reference lines share the plumbing: :class:`Central` trains one
adapter on the union of all clients' data (the upper bound), :class:`LocalOnly` lets each client
train its own adapter and never aggregates (the lower bound non-IID data gives).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from fedmoe.fl.aggregate import weighted_average
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.pricing import lora_params, payload_bytes, training_work
from fedmoe.methods.base import Method, register
from fedmoe.moe.lora import add_expert_lora, load_lora_state_dict, lora_state_dict
from fedmoe.train import finetune


@dataclass
class FedITArgs:
    """FedIT options: LoRA rank, scaling ``alpha`` and whether attention projections get LoRA too."""

    rank: int = 8
    alpha: float = 16.0
    attention: bool = True

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"rank={self.rank} and alpha={self.alpha} must be >= 1 and > 0 (e.g. rank=8, alpha=16)")


@register("fedit")
class FedIT(Method):
    """Homogeneous LoRA with FedAvg weighted by client example counts."""

    Args = FedITArgs

    def __init__(self, fed, args=None):
        super().__init__(fed, args)
        torch.manual_seed(fed.cfg.seed)
        self._server = self._with_lora(fed.base_model())
        self.global_state = lora_state_dict(self._server)
        self._local = None

    def _with_lora(self, model):
        targets = ["q_proj", "v_proj"] if self.args.attention else []
        return add_expert_lora(model, r=self.args.rank, alpha=self.args.alpha, target_modules=targets)

    def _local_model(self):
        """This process's client model (base + adapter), built once; tasks overwrite its adapter."""
        if self._local is None:
            self._local = copy.deepcopy(self._server)
        return self._local

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, dict(self.global_state)) for c in clients]

    def client_update(self, task: ClientTask) -> ClientUpdate:
        return self.train_adapter(task, self.fed.client_data(task.client_id))

    def train_adapter(self, task: ClientTask, examples, **train_overrides) -> ClientUpdate:
        """Load the task's adapter, fine-tune it on ``examples``, return the new adapter and diagnostics."""
        model = self._local_model()
        load_lora_state_dict(model, task.tensors)
        params = [p for p in model.parameters() if p.requires_grad]
        cfg = self.fed.train_config(task.client_id, task.round, **train_overrides)
        stats = finetune(model, self.fed.tokenizer, examples, cfg, params=params, progress=False)
        state = lora_state_dict(model)
        update = ClientUpdate(
            task.client_id, task.round, state, num_examples=len(examples),
            metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens},
            expert_tokens=stats.expert_counts.tolist() if stats.expert_counts is not None else [],
        )
        update.work = self.price(task, update, stats)
        return update

    def price(self, task: ClientTask, update: ClientUpdate, stats) -> dict[str, float]:
        """Cost-model inputs: LoRA training on the priced architecture (see :mod:`fedmoe.fl.pricing`)."""
        lora = lora_params(self.fed.priced_config, self.args.rank, attention=self.args.attention)
        cfg = self.fed.cfg.fed
        return training_work(
            self.fed, tokens=stats.tokens, seq_len=stats.tokens / max(stats.examples, 1),
            batch_tokens=cfg.batch_size * cfg.max_length, trainable_params=lora.total,
            trainable_active=lora.active, adapter_active=lora.active,
            bytes_down=payload_bytes(self.fed, task.bytes_down, lora.total),
            bytes_up=payload_bytes(self.fed, update.bytes_up, lora.total),
        )

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        self.global_state = weighted_average([u.tensors for u in updates], [u.num_examples for u in updates])
        return {"clients": len(updates)}

    def eval_model(self):
        load_lora_state_dict(self._server, self.global_state)
        self._server.eval()
        return self._server


@register("central")
class Central(FedIT):
    """Reference: one adapter trained on all clients' data pooled, as many steps per round as all clients."""

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(0, round_, dict(self.global_state), {"steps_scale": len(clients)})]

    def client_update(self, task: ClientTask) -> ClientUpdate:
        steps = self.fed.cfg.fed.local_steps * task.plan["steps_scale"]
        return self.train_adapter(task, self.fed.train_set, steps=steps)


@register("local")
class LocalOnly(FedIT):
    """Reference: each client trains its own adapter on its own data and never shares it.

    The reported score is the mean over all clients' adapters evaluated on the common test set.
    """

    def __init__(self, fed, args=None):
        super().__init__(fed, args)
        self.client_states = {c: dict(self.global_state) for c in range(fed.cfg.fed.num_clients)}

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, dict(self.client_states[c])) for c in clients]

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        for u in updates:
            self.client_states[u.client_id] = u.tensors
        return {"clients": len(updates)}

    def eval_models(self):
        """One model per client: the runner averages their scores."""
        for c in sorted(self.client_states):
            load_lora_state_dict(self._server, self.client_states[c])
            self._server.eval()
            yield self._server

    def state_dict(self):
        return {"clients": self.client_states}

    def load_state_dict(self, state):
        self.client_states = state["clients"]

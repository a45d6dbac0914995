"""FLAME (Le et al., 2025): every client trains the full-rank global LoRA on every expert, activating only as
many experts per token as its compute tier affords, with a rescaler and activation-aware aggregation.

See README.md in this folder for the equation -> function map and the open choices (the fields of
:class:`FlameArgs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import register
from fedmoe.methods.flame.aggregate import FREQUENCIES, activation_frequencies, activation_weights
from fedmoe.methods.flame.rescaler import MODES, Rescaler, initial_scale
from fedmoe.methods.hetero.adapters import moe_index_of_prefix
from fedmoe.methods.hetero.base import HeteroArgs, HeteroLoRA
from fedmoe.methods.hetero.lowrank import from_factors, weighted_factor_average
from fedmoe.methods.hetero.tiers import ladder
from fedmoe.moe.layers import moe_layers

SCOPES = ("tier", "client")


@dataclass
class FlameArgs(HeteroArgs):
    """FLAME options (the paper's open choices).

    ``temperature``: t in ``gamma_ij = f_ij^t |D_i|`` (0 = FedAvg); ``frequency``: how ``f_ij`` is counted
    (``per_token`` or ``share``, see :mod:`.aggregate`); ``rescaler``: ``none``, ``fixed`` (k / k_i) or
    ``learnable`` (init k / k_i); ``rescaler_scope``: one rescaler per compute tier (clients of the same
    top-k share it, averaged by ``|D_i|``) or per client (kept by the server, never averaged);
    ``rescaler_per_layer``: one scale per MoE layer, else one for the whole model.
    """

    temperature: float = 2.0
    frequency: str = "per_token"
    rescaler: str = "learnable"
    rescaler_scope: str = "tier"
    rescaler_per_layer: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, valid in (("rescaler", MODES), ("rescaler_scope", SCOPES), ("frequency", FREQUENCIES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}; use one of {valid}")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is FedAvg)")


@register("flame")
class Flame(HeteroLoRA):
    """Full-rank expert LoRA everywhere; client-adaptive top-k, rescaler, activation-aware aggregation."""

    Args = FlameArgs

    def __init__(self, fed, args=None):
        super().__init__(fed, args)
        a = self.args
        self._moe_index = moe_index_of_prefix(self._server)
        self._scales = len(moe_layers(self._server)) if a.rescaler_per_layer else 1
        self.rescales: dict[str, list[float]] = {}

    def client_rank(self, client: int) -> int:
        """Every FLAME client holds the full global rank."""
        return self.args.rank

    def client_top_k(self, client: int) -> int:
        """k_i: the model's top-k halved per compute tier (at least 1)."""
        return ladder(self.full_top_k, self.tiers[client])

    def rescale_key(self, client: int) -> str:
        """Whose rescaler a client uses: its tier's (named by its top-k) or its own."""
        return f"k{self.client_top_k(client)}" if self.args.rescaler_scope == "tier" else f"client{client}"

    def rescale_of(self, client: int) -> list[float]:
        """The current rescaler of a client (``k / k_i`` until it has been trained)."""
        init = initial_scale(self.full_top_k, self.client_top_k(client))
        return list(self.rescales.get(self.rescale_key(client), [init] * self._scales))

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, dict(self.global_state),
                           {"top_k": self.client_top_k(c), "tier": self.tiers[c], "rescale": self.rescale_of(c)})
                for c in clients]

    def client_update(self, task: ClientTask) -> ClientUpdate:
        k, scales = task.plan["top_k"], task.plan["rescale"]
        if self.args.rescaler == "none" or k == self.full_top_k:  # nothing to compensate at the full top-k
            stats, state = self.fit(task, task.tensors, top_k=k)
            used = [1.0] * len(scales)
        else:
            rescaler = Rescaler(scales, trainable=self.args.rescaler == "learnable")
            extra = [rescaler.log_gain] if rescaler.log_gain.requires_grad else []
            with rescaler.applied(self.local_model()):
                stats, state = self.fit(task, task.tensors, top_k=k, extra_params=extra)
            used = [float(v) for v in rescaler.values().detach()]
        return self.make_update(task, state, stats, top_k=k, rank=self.args.rank, extra={"rescale": used})

    def expert_weights(self, updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
        """Per-prefix client weights [N, G]: ``gamma_ij`` of the expert's MoE layer for expert LoRAs,
        ``|D_i|`` for other adapted modules (attention)."""
        if any(not u.expert_tokens for u in updates):
            raise ValueError("FLAME needs every client's expert_tokens (routed-token counts) to aggregate")
        freq = activation_frequencies([u.expert_tokens for u in updates], [u.metrics["tokens"] for u in updates],
                                      self.args.frequency)
        gamma = activation_weights(freq, [u.num_examples for u in updates], self.args.temperature)
        sizes = torch.tensor([[float(u.num_examples)] for u in updates], dtype=torch.float64)
        return {p: gamma[:, self._moe_index[p], :] if p in self._moe_index else sizes for p in self.global_keys()}

    def global_keys(self) -> list[str]:
        """Adapted module prefixes of the global LoRA."""
        return sorted(self.factors(self.global_state))

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        weights = self.expert_weights(updates)
        self.global_state = from_factors(weighted_factor_average([self.factors(u.tensors) for u in updates], weights))
        out: dict[str, float] = {"clients": len(updates)}
        if self.args.rescaler == "learnable":
            groups: dict[str, list[ClientUpdate]] = {}
            for u in updates:
                if u.extra["top_k"] < self.full_top_k:
                    groups.setdefault(self.rescale_key(u.client_id), []).append(u)
            for key, members in groups.items():
                total = sum(u.num_examples for u in members)
                self.rescales[key] = [sum(u.num_examples * u.extra["rescale"][i] for u in members) / total
                                      for i in range(self._scales)]
        for key, values in sorted(self.rescales.items()):
            if key.startswith("k"):
                out[f"rescale_{key}"] = sum(values) / len(values)
        return out

    def state_dict(self):
        return {"global": self.global_state, "rescales": self.rescales}

    def load_state_dict(self, state):
        self.global_state, self.rescales = state["global"], state["rescales"]

"""FLAME (Le et al., 2025): every client trains the full-rank global LoRA on every expert, activating only as
many experts per token as its compute tier affords, with a rescaler and activation-aware aggregation.

See README.md in this folder for the equation -> function map and the open choices (the fields of
:class:`FlameArgs`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from fedmoe.data.collate import collate_train
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import Deployed, register
from fedmoe.methods.flame.aggregate import (
    FREQUENCIES,
    activation_frequencies,
    activation_weights,
    aggregation_report,
    floored_weights,
)
from fedmoe.methods.flame.rescaler import INITS, MODES, Rescaler, start_scales
from fedmoe.methods.hetero.adapters import moe_index_of_prefix
from fedmoe.methods.hetero.base import HeteroArgs, HeteroClient, HeteroServer
from fedmoe.methods.hetero.lowrank import from_factors, weighted_factor_average
from fedmoe.methods.hetero.tiers import ladder
from fedmoe.moe.layers import moe_layers, set_top_k
from fedmoe.moe.lora import load_lora_state_dict

SCOPES = ("tier", "client")


@dataclass
class FlameArgs(HeteroArgs):
    """FLAME options (the paper's open choices).

    Aggregation (:mod:`.aggregate`): ``temperature``: t in ``gamma_ij = f_ij^t |D_i|`` (0 = FedAvg);
    ``frequency``: how ``f_ij`` is counted (``share``: k_i-free, or ``per_token``); ``fedavg_floor``: lambda
    mixing the normalised ``gamma`` with FedAvg's weights; ``min_effective_clients``: warn when an expert is
    averaged from fewer effective clients than this. Rescaler (:mod:`.rescaler`): ``rescaler``: ``none``,
    ``fixed`` (its init) or ``learnable``; ``rescaler_init``: ``auto``, ``calibrated``, ``ratio`` (k / k_i)
    or ``one``; ``calibration_examples``: client examples the calibration runs on; ``rescale_lr``: its own
    learning rate (outside the LoRA's gradient clipping); ``rescaler_scope``: one rescaler per compute tier
    (clients of the same top-k share it, averaged by ``|D_i|``) or per client (kept by the server, never
    averaged); ``rescaler_per_layer``: one scale per MoE layer, else one for the whole model.
    """

    temperature: float = 2.0
    frequency: str = "share"
    fedavg_floor: float = 0.5
    min_effective_clients: float = 2.0
    rescaler: str = "learnable"
    rescaler_init: str = "auto"
    calibration_examples: int = 16
    rescale_lr: float = 0.05
    rescaler_scope: str = "tier"
    rescaler_per_layer: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, valid in (("rescaler", self.rescaler, MODES), ("rescaler_scope", self.rescaler_scope, SCOPES),
                                   ("frequency", self.frequency, FREQUENCIES),
                                   ("rescaler_init", self.rescaler_init, INITS)):
            if value not in valid:
                raise ValueError(f"method_args.{name}={value!r}; use one of {valid}")
        if self.temperature < 0:
            raise ValueError(f"method_args.temperature={self.temperature} must be >= 0 (0 is FedAvg)")
        if not 0 <= self.fedavg_floor <= 1:
            raise ValueError(f"method_args.fedavg_floor={self.fedavg_floor} must be in [0, 1] (0: the paper's "
                             "activation-aware weights, 1: FedAvg)")
        if self.rescale_lr <= 0:
            raise ValueError(f"method_args.rescale_lr={self.rescale_lr} must be > 0 (e.g. 0.05)")
        if self.calibration_examples < 1:
            raise ValueError(f"method_args.calibration_examples={self.calibration_examples} must be >= 1 (e.g. 16)")


class FlameBudgets:
    """FLAME's budget rule, shared by both halves: every client holds the full global rank and activates k_i,
    the model's top-k halved per compute tier (at least 1); and the size of its rescaler."""

    def rank_for(self, tier: int) -> int:
        return self.args.rank

    def top_k_for(self, tier: int) -> int:
        return ladder(self.full_top_k, tier)

    def scale_count(self) -> int:
        """Values in a rescaler: one per MoE layer (``rescaler_per_layer``), else one."""
        return len(moe_layers(self.model)) if self.args.rescaler_per_layer else 1

    def initial_rescale(self, model: torch.nn.Module, client: int, top_k: int) -> list[float]:
        """A client's first rescaler (:func:`.rescaler.start_scales`) for ``model`` (holding the received global
        LoRA), calibrated if needed on the client's first ``calibration_examples`` examples."""
        data = self.fed.client_data(client)[: self.args.calibration_examples]
        batch = collate_train(self.fed.tokenizer, data, self.fed.cfg.fed.max_length)
        return start_scales(model, self.args.rescaler_init, self.full_top_k, top_k, batch,
                            per_layer=self.args.rescaler_per_layer)


class FlameServer(FlameBudgets, HeteroServer):
    """Full-rank expert LoRA everywhere; per-tier rescalers and activation-aware aggregation."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self._moe_index = moe_index_of_prefix(self.model)
        self.rescales: dict[str, list[float]] = {}

    def rescale_key(self, client: int) -> str:
        """Whose rescaler a client uses: its tier's (named by its top-k) or its own."""
        return f"k{self.budget(client).top_k}" if self.args.rescaler_scope == "tier" else f"client{client}"

    def rescale_of(self, client: int) -> list[float] | None:
        """The server's rescaler for a client; None until one came back (the client then initialises it)."""
        values = self.rescales.get(self.rescale_key(client))
        return None if values is None else list(values)

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        return [ClientTask(c, round_, dict(self.global_state),
                           {"top_k": self.budget(c).top_k, "rescale": self.rescale_of(c)}, self.notes(c))
                for c in clients]

    def layer_weights(self, updates: list[ClientUpdate]) -> torch.Tensor:
        """Normalised client weights [N, L, E] of every expert of every MoE layer: the activation-aware
        ``gamma_ij`` with the FedAvg floor (:func:`.aggregate.floored_weights`)."""
        if any(not u.expert_tokens for u in updates):
            raise ValueError("FLAME needs every client's expert_tokens (routed-token counts) to aggregate")
        freq = activation_frequencies([u.expert_tokens for u in updates], [u.metrics["tokens"] for u in updates],
                                      self.args.frequency)
        sizes = [u.num_examples for u in updates]
        return floored_weights(activation_weights(freq, sizes, self.args.temperature), sizes, self.args.fedavg_floor)

    def expert_weights(self, updates: list[ClientUpdate], layer_weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-prefix client weights [N, G]: the expert's MoE layer's row of ``layer_weights`` for expert LoRAs,
        ``|D_i|`` for other adapted modules (attention)."""
        sizes = torch.tensor([[float(u.num_examples)] for u in updates], dtype=torch.float64)
        return {p: layer_weights[:, self._moe_index[p], :] if p in self._moe_index else sizes
                for p in self.global_keys()}

    def global_keys(self) -> list[str]:
        """Adapted module prefixes of the global LoRA."""
        return sorted(self.factors(self.global_state))

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        layer_weights = self.layer_weights(updates)
        weights = self.expert_weights(updates, layer_weights)
        self.global_state = from_factors(weighted_factor_average([self.factors(u.tensors) for u in updates], weights))
        out: dict[str, float] = {"clients": len(updates), **aggregation_report(
            layer_weights, [u.num_examples for u in updates], self.args.min_effective_clients)}
        if self.args.rescaler != "none":
            groups: dict[str, list[ClientUpdate]] = {}
            for u in updates:
                if self.budget(u.client_id).top_k < self.full_top_k:
                    groups.setdefault(self.rescale_key(u.client_id), []).append(u)
            for key, members in groups.items():
                total = sum(u.num_examples for u in members)
                self.rescales[key] = [sum(u.num_examples * u.payload["rescale"][i] for u in members) / total
                                      for i in range(self.scale_count())]
        for key, values in sorted(self.rescales.items()):
            if key.startswith("k"):
                out[f"rescale_{key}"] = sum(values) / len(values)
        return out

    @contextmanager
    def running(self, top_k: int, rescale: Sequence[float] | None) -> Iterator[torch.nn.Module]:
        """Within the block, the global model routing ``top_k`` experts per token through the rescaler ``rescale``
        (None: none); the model's top-k is restored after it."""
        model = self.eval_model()
        with ExitStack() as stack:
            if rescale is not None:
                stack.enter_context(Rescaler(rescale, trainable=False).applied(model))
            set_top_k(model, top_k)
            stack.callback(set_top_k, model, self.full_top_k)
            yield model

    @contextmanager
    def tier_model(self, tier: int) -> Iterator[torch.nn.Module]:
        """Within the block, the global model as a client of compute ``tier`` runs it: its top-k_i experts per
        token through its tier's rescaler (what that device deploys). Raises LookupError when no client of the
        tier has trained yet (its rescaler is unknown) and ValueError with per-client rescalers (no tier model)."""
        k = self.top_k_for(tier)
        values = None
        if k < self.full_top_k and self.args.rescaler != "none":
            if self.args.rescaler_scope != "tier":
                raise ValueError("rescaler_scope='client' keeps one rescaler per client, so a tier has no "
                                 "single model; score clients' own models instead")
            values = self.rescales.get(f"k{k}")
            if values is None:
                raise LookupError(f"no client of tier {tier} (top-{k}) has trained yet: its rescaler is unknown")
        with self.running(k, values) as model:
            yield model

    def deployed_rescale(self, client: int) -> tuple[float, ...] | None:
        """The rescaler ``client`` deploys with, as :meth:`FlameClient.update` builds it: none at the full top-k
        or without rescalers, else the server's for it (its tier's or its own), or where no client of its tier
        (or it) has trained yet, the start it would take itself (:meth:`initial_rescale`, on its own data)."""
        k = self.budget(client).top_k
        if k == self.full_top_k or self.args.rescaler == "none":
            return None
        values = self.rescale_of(client)
        return tuple(values if values is not None else self.initial_rescale(self.eval_model(), client, k))

    def deployed_models(self):
        """Each client deploys the global LoRA at its own top-k_i through the rescaler it runs
        (:meth:`deployed_rescale`); one group per (top-k, rescaler), so the tiers sharing a top-k and its
        rescaler share a model. Clients at the full top-k hold the global model."""
        groups: dict[tuple, list[int]] = {}
        for c in range(self.fed.cfg.fed.num_clients):
            groups.setdefault((self.budget(c).top_k, self.deployed_rescale(c)), []).append(c)
        for (k, rescale), clients in groups.items():
            with self.running(k, rescale) as model:
                yield Deployed(tuple(clients), model, same_as_global=k == self.full_top_k)

    def state_dict(self):
        return {"global": self.global_state, "rescales": self.rescales}

    def load_state_dict(self, state):
        self.global_state, self.rescales = state["global"], state["rescales"]


class FlameClient(FlameBudgets, HeteroClient):
    """Trains the full-rank LoRA routing k_i experts per token, through its tier's rescaler (initialised
    here, on the client's own data, the first time the server has none)."""

    def start_rescale(self, task: ClientTask, top_k: int) -> list[float]:
        """The client's first rescaler (:func:`.rescaler.start_scales`), calibrated if needed on its first
        ``calibration_examples`` examples with the received global LoRA loaded."""
        load_lora_state_dict(self.model, task.tensors)
        return self.initial_rescale(self.model, task.client_id, top_k)

    def update(self, task: ClientTask) -> ClientUpdate:
        k = task.plan["top_k"]
        if self.args.rescaler == "none" or k == self.full_top_k:  # nothing to compensate at the full top-k
            stats, state = self.fit(task, task.tensors, top_k=k)
            used = [1.0] * self.scale_count()
        else:
            scales = task.plan["rescale"] or self.start_rescale(task, k)
            rescaler = Rescaler(scales, trainable=self.args.rescaler == "learnable")
            with rescaler.applied(self.model):
                stats, state = self.fit(task, task.tensors, top_k=k,
                                        param_groups=rescaler.param_groups(self.args.rescale_lr))
            used = [float(v) for v in rescaler.values().detach()]
        return self.make_update(task, state, stats, top_k=k, rank=self.args.rank, payload={"rescale": used})


FLAME = register("flame", FlameArgs, FlameServer, FlameClient)

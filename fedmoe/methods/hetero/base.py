"""The halves every LoRA method shares (FedIT and its references, FLAME, HetLoRA, FlexLoRA, FLoRA).

:class:`LoRAServer` holds the global LoRA state and its own evaluation model; :class:`LoRAClient` holds its
own local model (never the server's) and trains an adapter a task sends. Both build their model with
:meth:`LoRAHalf.build_model`: the base model with a rank-``rank`` LoRA (``alpha / rank`` scaling) on every
expert and optionally on the attention projections.

The heterogeneous methods add a budget per client from its compute tier (:class:`TierBudgets`: rank ``r_i``
or top-k ``k_i``). A client with rank ``r_i < rank`` holds its r_i components in the global-rank LoRA and
zeros in the others; a component whose A row and B column are both zero gets exactly zero gradient, so it
stays zero and the client trains a rank-r_i adapter (with the global scaling, so a truncated adapter's
product is the truncated global product).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedmoe.data.records import Example
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.cost import token_flops
from fedmoe.fl.pricing import lora_params, payload_bytes, training_work
from fedmoe.methods.base import Client, DeviceBudgets, Server
from fedmoe.methods.hetero.adapters import lora_scaling, set_merged_weights
from fedmoe.methods.hetero.lowrank import Factors, from_factors, pad, to_factors, truncate
from fedmoe.methods.hetero.tiers import DEFAULT_TIER_TFLOPS, client_tiers, ladder
from fedmoe.moe.layers import moe_layers, set_top_k
from fedmoe.moe.lora import add_expert_lora, load_lora_state_dict, lora_state_dict
from fedmoe.train import TrainStats, finetune


@dataclass
class LoRAArgs:
    """Options every LoRA method shares: LoRA rank, scaling ``alpha`` and whether the attention q/v
    projections get LoRA too (off: only the experts are adapted)."""

    rank: int = 8
    alpha: float = 16.0
    attention: bool = False


@dataclass
class HeteroArgs(LoRAArgs):
    """Options every heterogeneous-LoRA method shares: ``tiers`` gives every client's compute tier (0 =
    strongest), else it is derived from its device with ``tier_tflops`` thresholds (:mod:`.tiers`)."""

    tiers: list[int] | None = None
    tier_tflops: list[float] = field(default_factory=lambda: list(DEFAULT_TIER_TFLOPS))

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"rank={self.rank} and alpha={self.alpha} must be >= 1 and > 0 (e.g. rank=8, alpha=16)")
        if self.tiers is not None and any(t < 0 for t in self.tiers):
            raise ValueError(f"tiers={self.tiers} must be >= 0 (0 = strongest), or null to derive them from devices")
        if list(self.tier_tflops) != sorted(self.tier_tflops, reverse=True) or any(t <= 0 for t in self.tier_tflops):
            raise ValueError(f"tier_tflops={self.tier_tflops} must be positive and descending (e.g. [60, 20])")


def updates_of(updates: Sequence[ClientUpdate]) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Uploaded states and example counts of a round's updates (FedAvg's inputs)."""
    return [u.tensors for u in updates], [u.num_examples for u in updates]


class LoRAHalf:
    """What both halves of a LoRA method share: how the model is built (base + LoRA)."""

    fed: object
    args: LoRAArgs

    def base_model(self) -> nn.Module:
        """The base model under the LoRA (FedIT-NF4 quantizes it)."""
        return self.fed.base_model()

    def build_model(self) -> nn.Module:
        """The base model with the method's LoRA (random init; tasks and the server overwrite it)."""
        targets = ["q_proj", "v_proj"] if self.args.attention else []
        return add_expert_lora(self.base_model(), r=self.args.rank, alpha=self.args.alpha, target_modules=targets)


class LoRAServer(LoRAHalf, Server):
    """Server of a LoRA method: the global LoRA state (seeded init) and its own evaluation model."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        torch.manual_seed(fed.cfg.seed)
        self.model = self.build_model()
        self.global_state = lora_state_dict(self.model)

    def adapter_model(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """The server's model holding the LoRA ``state``, in eval mode."""
        load_lora_state_dict(self.model, state)
        self.model.eval()
        return self.model

    def eval_model(self):
        return self.adapter_model(self.global_state)


class LoRAClient(LoRAHalf, Client):
    """Client of a LoRA method: its own local model (base + LoRA); each task overwrites the adapter."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self.model = self.build_model()

    def train(self, task: ClientTask, state: dict[str, torch.Tensor], examples: Sequence[Example], *,
              top_k: int | None = None, param_groups: Sequence[dict] = (), **train_overrides
              ) -> tuple[TrainStats, dict[str, torch.Tensor]]:
        """Load ``state`` into the local model, fine-tune the LoRA on ``examples`` routing ``top_k`` experts per
        token (default: the model's), and return the stats and the trained state. ``param_groups``: extra
        optimizer groups (own learning rate, outside gradient clipping: :func:`fedmoe.train.finetune`)."""
        model = self.model
        load_lora_state_dict(model, state)
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        full_top_k = moe_layers(model)[0].top_k
        if top_k is not None:
            set_top_k(model, top_k)
        try:
            cfg = self.fed.train_config(task.client_id, task.round, **train_overrides)
            stats = finetune(model, self.fed.tokenizer, examples, cfg, params=params, param_groups=param_groups,
                             progress=False)
        finally:
            if top_k is not None:
                set_top_k(model, full_top_k)
        return stats, lora_state_dict(model)


def client_update(task: ClientTask, tensors: dict[str, torch.Tensor], stats: TrainStats, examples: int
                  ) -> ClientUpdate:
    """A LoRA client's update: the uploaded ``tensors`` and the training metrics (pricing comes after)."""
    return ClientUpdate(
        task.client_id, task.round, tensors, num_examples=examples,
        metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens},
        expert_tokens=stats.expert_counts.tolist() if stats.expert_counts is not None else [],
    )


@dataclass(frozen=True)
class TierBudget:
    """A heterogeneous-LoRA client's budget: its compute tier, LoRA rank and experts per token."""

    tier: int
    rank: int
    top_k: int


class TierBudgets(DeviceBudgets):
    """The budget rule of HetLoRA, FlexLoRA and FLoRA, shared by both halves: tier t trains rank
    ``max(1, rank // 2**t)`` with the model's top-k (FLAME overrides :meth:`rank_for` and :meth:`top_k_for`)."""

    args: HeteroArgs

    def rank_for(self, tier: int) -> int:
        """LoRA rank of a tier: halved per tier."""
        return ladder(self.args.rank, tier)

    def top_k_for(self, tier: int) -> int:
        """Experts per token of a tier: the model's top-k."""
        return self.full_top_k

    def make_budget(self, client: int) -> TierBudget:
        tier = client_tiers(self.fed.devices, self.args.tiers, self.args.tier_tflops)[client]
        return TierBudget(tier, self.rank_for(tier), self.top_k_for(tier))


class HeteroHalf(TierBudgets):
    """Model facts and LoRA-state algebra both heterogeneous halves need (experts, top-k, truncation)."""

    def init_hetero(self, model: nn.Module) -> None:
        """Read the experts and top-k of the model and check the tiers (an error names a bad ``tiers``)."""
        layers = moe_layers(model)
        self.num_experts = layers[0].num_experts
        self.full_top_k = layers[0].top_k
        client_tiers(self.fed.devices, self.args.tiers, self.args.tier_tflops)

    def factors(self, state: dict[str, torch.Tensor]) -> Factors:
        """Per-expert factors of a LoRA state (:func:`fedmoe.methods.hetero.lowrank.to_factors`)."""
        return to_factors(state, self.num_experts)

    def truncated(self, state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
        """A LoRA state cut to its first ``rank`` components (what a rank-``rank`` client holds)."""
        return from_factors(truncate(self.factors(state), rank))

    def padded(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A lower-rank LoRA state zero-padded to the global rank (loadable into the client model)."""
        return from_factors(pad(self.factors(state), self.args.rank))


class HeteroServer(HeteroHalf, LoRAServer):
    """Server of FLAME, HetLoRA, FlexLoRA and FLoRA: the global rank-r LoRA and the tiers' budgets."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self.init_hetero(self.model)

    def notes(self, client: int) -> dict[str, int]:
        """What the server logs about a client's task: its tier, rank and top-k."""
        b = self.budget(client)
        return {"tier": b.tier, "rank": b.rank, "top_k": b.top_k}

    def rank_groups(self) -> dict[int, tuple[int, ...]]:
        """Every client grouped by its LoRA rank, ``{rank: clients}`` (in order of each rank's first client)."""
        groups: dict[int, list[int]] = {}
        for c in range(self.fed.cfg.fed.num_clients):
            groups.setdefault(self.budget(c).rank, []).append(c)
        return {rank: tuple(clients) for rank, clients in groups.items()}

    def mean_rank(self, updates: Sequence[ClientUpdate]) -> float:
        """Mean LoRA rank of the round's clients."""
        return sum(self.budget(u.client_id).rank for u in updates) / len(updates)

    def merged_model(self, base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor] | None):
        """The server model with a zero LoRA and ``base + alpha / r * delta`` in the adapted weights
        (FlexLoRA's and FLoRA's global model)."""
        load_lora_state_dict(self.model, {k: torch.zeros_like(v) for k, v in self.global_state.items()})
        set_merged_weights(self.model, base, delta or {}, lora_scaling(self.model))
        self.model.eval()
        return self.model


class HeteroClient(HeteroHalf, LoRAClient):
    """Client of FLAME, HetLoRA, FlexLoRA and FLoRA: trains at its tier's rank and top-k and prices the work."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self.init_hetero(self.model)

    def fit(self, task: ClientTask, state: dict[str, torch.Tensor], *, top_k: int, param_groups=()
            ) -> tuple[TrainStats, dict[str, torch.Tensor]]:
        """Load ``state`` (global rank), route ``top_k`` experts per token and fine-tune the LoRA (and the
        optimizer ``param_groups``, outside gradient clipping) on the client's data; return the stats and the
        trained LoRA state."""
        return self.train(task, state, self.fed.client_data(task.client_id), top_k=top_k, param_groups=param_groups)

    def train_truncated(self, task: ClientTask) -> ClientUpdate:
        """HetLoRA/FlexLoRA client: pad the received rank-r_i LoRA, train it, send its r_i components back."""
        rank = task.plan["rank"]
        stats, state = self.fit(task, self.padded(task.tensors), top_k=self.full_top_k)
        return self.make_update(task, self.truncated(state, rank), stats, top_k=self.full_top_k, rank=rank)

    def priced_top_k(self, top_k: int) -> int:
        """A top-k on the trained model as the same fraction of the priced (possibly paper-scale) model's."""
        priced = int(self.fed.priced_config.num_experts_per_tok)
        return max(1, round(top_k * priced / self.full_top_k))

    def make_update(self, task: ClientTask, tensors: dict[str, torch.Tensor], stats: TrainStats, *, top_k: int,
                    rank: int, down_rank: int | None = None, bytes_down: int | None = None,
                    payload: dict | None = None) -> ClientUpdate:
        """The client's update with its cost-model work and diagnostics (priced top-k, FLOPs per token).

        Work is priced on ``fed.priced_config`` (:mod:`fedmoe.fl.pricing`): ``top_k`` as a fraction of the
        model's top-k, the LoRA of ``rank`` on the active experts as adapter parameters; the download is a
        rank-``down_rank`` LoRA (default ``rank``; 0: nothing) and ``bytes_down`` overrides the task's payload size.
        """
        update = client_update(task, tensors, stats, len(self.fed.client_data(task.client_id)))
        config, fed_cfg = self.fed.priced_config, self.fed.cfg.fed
        k = self.priced_top_k(top_k)
        lora = lora_params(config, rank, attention=self.args.attention, top_k=k)
        r_down = rank if down_rank is None else down_rank
        down = lora_params(config, r_down, attention=self.args.attention).total if r_down else 0
        seq_len = max(1, round(stats.tokens / max(stats.examples, 1)))
        update.work = training_work(
            self.fed, tokens=stats.tokens, seq_len=seq_len, batch_tokens=fed_cfg.batch_size * fed_cfg.max_length,
            trainable_params=lora.total, trainable_active=lora.active, adapter_active=lora.active, top_k=k,
            bytes_down=payload_bytes(self.fed, task.bytes_down if bytes_down is None else bytes_down, down),
            bytes_up=payload_bytes(self.fed, update.bytes_up, lora_params(config, rank,
                                                                          attention=self.args.attention).total),
        )
        flops = token_flops(config, seq_len=seq_len, top_k=k, adapter_active_params=lora.active,
                            trainable_active_params=lora.active)
        update.payload = dict(payload or {})
        update.diagnostics = {"priced_top_k": k, "flops_per_token": flops.train,
                              "train_flops": update.work["train_flops"]}
        return update

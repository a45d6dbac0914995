"""FFT-MoE (Hu et al., 2025): sparse MoE adapters on a frozen model; each client routes every token to its own
top-K_n of the M adapter experts, K_n set by its compute tier, and regularises its routing with a
heterogeneity-aware auxiliary loss; the server averages experts and router by |D_n|.

The method is written as two halves that share nothing but the :class:`ClientTask`/:class:`ClientUpdate`
contract and the :class:`Federation`:

- :class:`FFTMoEServer` holds the global adapter (and, with ``personal_router``, every client's router),
  plans tasks, aggregates and builds the models to evaluate and those the clients deploy;
- :class:`FFTMoEClient` builds its own model (base + adapters), derives its K_n from its device tier and
  its data skew from its local data, trains, and prices its work.

Both are registered as the method ``fftmoe`` (:data:`FFTMOE`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from fedmoe.fl.aggregate import weighted_average
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.cost import token_flops
from fedmoe.fl.pricing import payload_bytes, training_work
from fedmoe.methods.base import Client, Deployed, Server, register
from fedmoe.methods.fftmoe.adapter import (
    adapter_parameters,
    adapter_state_dict,
    adapters,
    attach_moe_adapters,
    check_adapter_shape,
    is_router_key,
    load_adapter_state_dict,
    set_adapter_top_k,
)
from fedmoe.methods.fftmoe.aux_loss import RoutingRegulariser, data_skew, heterogeneity_factor, load_cv
from fedmoe.methods.fftmoe.budget import adapter_params, client_budget
from fedmoe.methods.hetero.tiers import DEFAULT_TIER_TFLOPS
from fedmoe.train import TrainStats, finetune


@dataclass
class FFTMoEArgs:
    """FFT-MoE options (README: which are the paper's and which ours).

    ``num_experts`` M, ``bottleneck`` b, ``activation``: the adapter in every decoder block. ``top_k``: K of a
    tier-0 client; tier t gets ``max(1, top_k // 2**t)``; ``tiers``/``tier_tflops``: every client's compute
    tier, else from its device (:mod:`fedmoe.methods.hetero.tiers`). ``aux_loss`` switches the auxiliary
    loss on (its value is still reported when off); ``aux_coef``: its weight in the objective;
    ``balance_weight``/``diversity_weight``: its two terms; ``budget_weight``/``skew_weight``: lambda_K and
    lambda_s of the heterogeneity factor h_n. ``personal_router``: each client keeps its own router (the
    server stores it, never averages it). ``lr``: local learning rate (None: ``fed.lr``).
    """

    num_experts: int = 8
    bottleneck: int = 16
    top_k: int = 4
    activation: str = "gelu"
    tiers: list[int] | None = None
    tier_tflops: list[float] = field(default_factory=lambda: list(DEFAULT_TIER_TFLOPS))
    aux_loss: bool = True
    aux_coef: float = 0.01
    balance_weight: float = 1.0
    diversity_weight: float = 1.0
    budget_weight: float = 1.0
    skew_weight: float = 1.0
    personal_router: bool = False
    lr: float | None = None

    def __post_init__(self) -> None:
        check_adapter_shape(self.num_experts, self.bottleneck, self.top_k, self.activation)
        weights = (self.aux_coef, self.balance_weight, self.diversity_weight, self.budget_weight, self.skew_weight)
        if min(weights) < 0:
            raise ValueError("aux_coef, balance_weight, diversity_weight, budget_weight and skew_weight must be "
                             f">= 0, got {weights}; switch the auxiliary loss off with aux_loss=false")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0 (or null to use fed.lr)")


def _adapted_base(fed, args: FFTMoEArgs) -> torch.nn.Module:
    return attach_moe_adapters(fed.base_model(), num_experts=args.num_experts, bottleneck=args.bottleneck,
                               top_k=args.top_k, activation=args.activation)


class FFTMoEServer(Server):
    """Server half: the global adapter (experts + router), personal routers, aggregation, models to evaluate."""

    def __init__(self, fed, args: FFTMoEArgs):
        super().__init__(fed, args)
        torch.manual_seed(fed.cfg.seed)
        self.model = _adapted_base(fed, args)
        self.global_state = adapter_state_dict(self.model)
        self.routers: dict[int, dict[str, torch.Tensor]] = {}

    def client_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """The adapter a client receives: the global one, with its own router when routers are personal."""
        state = dict(self.global_state)
        if self.args.personal_router:
            state.update(self.routers.get(client_id, {}))
        return state

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        """One task per client: its adapter state (the client derives its K_n from its own device)."""
        return [ClientTask(c, round_, self.client_state(c)) for c in clients]

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        """W = sum_n |D_n| W_n / sum_n |D_n| over experts and router; with personal routers, store each
        client's router and set the global router to the |D_n|-weighted mean of all stored routers."""
        if not updates:
            raise ValueError("FFT-MoE aggregate got no client updates")
        weights = [u.num_examples for u in updates]
        if not self.args.personal_router:
            merged = weighted_average([u.tensors for u in updates], weights)
        else:
            for u in updates:
                self.routers[u.client_id] = {k: v for k, v in u.tensors.items() if is_router_key(k)}
            experts = weighted_average([{k: v for k, v in u.tensors.items() if not is_router_key(k)}
                                        for u in updates], weights)
            clients = sorted(self.routers)
            router = weighted_average([self.routers[c] for c in clients],
                                      [self.fed.num_examples(c) for c in clients])
            merged = {**experts, **router}
        self.global_state = {k: merged[k] for k in self.global_state}
        n = len(updates)
        return {"clients": n, "mean_top_k": sum(u.diagnostics["top_k"] for u in updates) / n,
                "mean_aux_loss": sum(u.metrics["aux_loss"] for u in updates) / n,
                "mean_load_cv": sum(u.diagnostics["load_cv"] for u in updates) / n}

    def eval_model(self) -> torch.nn.Module:
        """The global model: global adapter (mean router when personal) at the tier-0 top_k, in eval mode."""
        return self._model_with(self.global_state, self.args.top_k)

    def personalised_models(self) -> Iterator[tuple[int, torch.nn.Module]]:
        """``(client_id, model)`` for every client: the global experts with the client's own router (when
        routers are personal and it has trained; else the global router) at the client's own K_n. The same
        model object is reloaded for each client: score it before taking the next."""
        for c in range(self.fed.cfg.fed.num_clients):
            yield c, self._model_with(self.client_state(c), client_budget(self.fed, self.args, c)[1])

    def deployed_models(self) -> Iterator[Deployed]:
        """What each client deploys: the model of :meth:`personalised_models`, grouped by identical (router, K_n):
        the clients with their own router (``personal_router``, once they have trained) one group each, the
        others by K_n; the global model where that is the global router at the tier-0 ``top_k``."""
        groups: dict[tuple[int, int | None], list[int]] = {}
        for c in range(self.fed.cfg.fed.num_clients):
            own = self.args.personal_router and c in self.routers
            groups.setdefault((client_budget(self.fed, self.args, c)[1], c if own else None), []).append(c)
        for (k, owner), clients in groups.items():
            yield Deployed(tuple(clients), self._model_with(self.client_state(clients[0]), k),
                           same_as_global=owner is None and k == self.args.top_k)

    def _model_with(self, state: dict[str, torch.Tensor], top_k: int) -> torch.nn.Module:
        load_adapter_state_dict(self.model, state)
        set_adapter_top_k(self.model, top_k)
        self.model.eval()
        return self.model

    def state_dict(self) -> dict:
        """Global adapter and personal routers (everything needed to resume)."""
        return {"global": self.global_state, "routers": self.routers}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.global_state, self.routers = state["global"], state["routers"]


class FFTMoEClient(Client):
    """Client half: its model (base + adapters, built here), K_n from its tier, local training, pricing."""

    def __init__(self, fed, args: FFTMoEArgs):
        super().__init__(fed, args)
        self.model = _adapted_base(fed, args)  # initial adapter values are overwritten by every task
        self.domains = sorted({ex.domain for ex in fed.train_set})

    def heterogeneity(self, client_id: int, top_k: int) -> tuple[float, float]:
        """(data skew s_n, heterogeneity factor h_n) of a client at budget ``top_k``."""
        skew = data_skew(self.fed.client_data(client_id), self.domains)
        h = heterogeneity_factor(top_k, self.args.num_experts, skew, budget_weight=self.args.budget_weight,
                                 skew_weight=self.args.skew_weight)
        return skew, h

    def update(self, task: ClientTask) -> ClientUpdate:
        """Load the task's adapter, route top-K_n, train experts and router with the auxiliary loss; return the
        adapter, |D_n|, and diagnostics (adapter load per layer, K_n, aux loss, load CV, FLOPs per token)."""
        args, c = self.args, task.client_id
        tier, k = client_budget(self.fed, args, c)
        skew, h = self.heterogeneity(c, k)
        load_adapter_state_dict(self.model, task.tensors)
        set_adapter_top_k(self.model, k)
        reg = RoutingRegulariser(len(adapters(self.model)), args.num_experts, h,
                                 coef=args.aux_coef if args.aux_loss else 0.0,
                                 balance_weight=args.balance_weight, diversity_weight=args.diversity_weight)
        examples = self.fed.client_data(c)
        cfg = self.fed.train_config(c, task.round, **({"lr": args.lr} if args.lr is not None else {}))
        stats = finetune(self.model, self.fed.tokenizer, examples, cfg, params=adapter_parameters(self.model),
                         progress=False, extra_loss=reg)
        update = ClientUpdate(
            c, task.round, adapter_state_dict(self.model), num_examples=len(examples),
            metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens, "aux_loss": reg.mean_value},
            expert_tokens=stats.expert_counts.tolist() if stats.expert_counts is not None else [],
        )
        update.work, flops_per_token, trainable = self.price(task, update, stats, k)
        update.diagnostics = {"tier": tier, "top_k": k, "skew": skew, "h": h, "load_cv": load_cv(reg.counts),
                        "adapter_load": reg.counts.tolist(), "trainable_params": trainable,
                        "flops_per_token": flops_per_token, "train_flops": update.work["train_flops"]}
        return update

    def price(self, task: ClientTask, update: ClientUpdate, stats: TrainStats, top_k: int
              ) -> tuple[dict[str, float], float, int]:
        """Cost-model work, training FLOPs per token and trainable parameters of the round, on the priced
        architecture: the whole adapter trains and travels; a token passes the router and K_n experts."""
        config, fed_cfg = self.fed.priced_config, self.fed.cfg.fed
        p = adapter_params(config, self.args.num_experts, self.args.bottleneck, top_k)
        seq_len = max(1, round(stats.tokens / max(stats.examples, 1)))
        work = training_work(
            self.fed, tokens=stats.tokens, seq_len=seq_len, batch_tokens=fed_cfg.batch_size * fed_cfg.max_length,
            trainable_params=p.total, trainable_active=p.active, adapter_active=p.active,
            bytes_down=payload_bytes(self.fed, task.bytes_down, p.total),
            bytes_up=payload_bytes(self.fed, update.bytes_up, p.total),
        )
        flops = token_flops(config, seq_len=seq_len, adapter_active_params=p.active, trainable_active_params=p.active)
        return work, flops.train, p.total


FFTMOE = register("fftmoe", FFTMoEArgs, FFTMoEServer, FFTMoEClient)

"""The kit of methods that train routed experts' full weights (FLUX and its baselines FMD, FMQ, FMES).

Routed experts train, and attention as the method's ``attention`` option says (LoRA on q/v, full q/k/v/o
or frozen: :mod:`fedmoe.methods.experts.attention`); embeddings, norms and routers stay frozen. The server holds
the fused expert tensors of every MoE layer (and the attention tensors); a client uploads the experts it
trained, keyed ``"{layer}.{expert}.{param}"``; :func:`aggregate_experts` averages each expert over the
clients that trained it, weighted by the tokens each routed to it (an expert nobody trained, or to which no
client routed a token, keeps its value). Attention tensors are averaged over all the round's clients,
weighted by their example counts (FedAvg).
:class:`ExpertServer` and :class:`ExpertClient` are the halves' bases; :class:`ExpertHalf` gives both
the priced model and the trained model's shape their budgets need.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedmoe.fl.aggregate import weighted_average
from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.methods.base import Client, DeviceBudgets, Server
from fedmoe.methods.experts import attention as attn
from fedmoe.methods.experts.priced import PricedModel, priced_model
from fedmoe.moe.layers import moe_layers
from fedmoe.moe.surgery import EXPERT_PARAMS, freeze_experts
from fedmoe.train import TrainStats, finetune


def expert_key(layer: int, expert: int, param: str) -> str:
    """Upload key of one expert's tensor: ``"{moe layer}.{router expert}.{param}"``."""
    return f"{layer}.{expert}.{param}"


def parse_key(key: str) -> tuple[int, int, str]:
    """Inverse of :func:`expert_key`."""
    layer, expert, param = key.split(".", 2)
    return int(layer), int(expert), param


def fused_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every MoE layer's fused expert tensors, keyed ``"{layer}.{param}"`` (the server state)."""
    return {f"{layer.index}.{name}": getattr(layer.experts, name).detach().clone()
            for layer in moe_layers(model) for name in EXPERT_PARAMS}


def load_fused_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Write :func:`fused_state` tensors into an unmerged model of the same shape; returns ``model``."""
    with torch.no_grad():
        for layer in moe_layers(model):
            for name in EXPERT_PARAMS:
                getattr(layer.experts, name).copy_(state[f"{layer.index}.{name}"])
    return model


def expert_tensors(model: nn.Module, pairs: Iterable[tuple[int, int]],
                   index_map: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of the (layer, router expert) ``pairs`` of ``model``, keyed by :func:`expert_key`.

    Slots are found through each layer's merge re-map; ``index_map[l][j]`` names the original index of
    slot/router expert j when the model was pruned (``keep_experts``): pairs are then original indices.
    """
    layers = moe_layers(model)
    out = {}
    for layer_idx, expert in pairs:
        layer = layers[layer_idx]
        local = expert if index_map is None else list(index_map[layer_idx]).index(expert)
        slot = int(layer.expert_map[local])
        for name in EXPERT_PARAMS:
            out[expert_key(layer_idx, expert, name)] = getattr(layer.experts, name)[slot].detach().clone()
    return out


def aggregate_experts(state: dict[str, torch.Tensor], uploads: Sequence[dict[str, torch.Tensor]],
                      tokens: Sequence[Sequence[Sequence[float]]]) -> tuple[dict[str, torch.Tensor], dict]:
    """Token-weighted per-expert average (module docstring); returns (new state, diagnostics).

    ``uploads[i]``: client i's trained experts (:func:`expert_key` keys); ``tokens[i][l][e]``: tokens
    client i routed to expert e of layer l (original indices). For each uploaded (l, e):
    ``W = sum_i tokens_i * W_i / sum_i tokens_i`` over the clients that uploaded it; with zero total
    tokens the server keeps its value. Averages are computed in float64.
    """
    if len(uploads) != len(tokens):
        raise ValueError(f"{len(uploads)} uploads but {len(tokens)} token tables; give one per client")
    sums: dict[str, torch.Tensor] = {}
    weights: dict[tuple[int, int], float] = {}
    for upload, table in zip(uploads, tokens, strict=True):
        for key, value in upload.items():
            layer, expert, _ = parse_key(key)
            w = float(table[layer][expert])
            sums[key] = sums.get(key, torch.zeros_like(value, dtype=torch.float64)) + w * value.double()
            if key.endswith(EXPERT_PARAMS[0]):
                weights[(layer, expert)] = weights.get((layer, expert), 0.0) + w
    new = {k: v.clone() for k, v in state.items()}
    updated = 0
    for key, total in sums.items():
        layer, expert, name = parse_key(key)
        weight = weights[(layer, expert)]
        if weight <= 0:
            continue
        fused = new[f"{layer}.{name}"]
        fused[expert] = (total / weight).to(fused.dtype)
        updated += name == EXPERT_PARAMS[0]
    return new, {"experts_updated": updated, "experts_uploaded": len(weights)}


class ExpertGradNorms:
    """Records, for each optimizer step, the squared gradient norm of every expert slot (both fused tensors).

    Hooks the fused parameters; ``steps`` [n_steps, L, S] after training; :meth:`mean_sq` averages over
    steps (FLUX's utility needs sqrt(mean ||g||^2)). Remove with :meth:`remove`.
    """

    def __init__(self, model: nn.Module) -> None:
        self._layers = moe_layers(model)
        self._current: torch.Tensor | None = None
        self._rows: list[torch.Tensor] = []
        self._handles = []
        for layer in self._layers:
            for name in EXPERT_PARAMS:
                param = getattr(layer.experts, name)
                if param.requires_grad:
                    self._handles.append(param.register_hook(lambda g, i=layer.index: self._add(i, g)))

    def _add(self, layer: int, grad: torch.Tensor) -> None:
        if self._current is None:
            self._current = torch.zeros(len(self._layers), max(lay.num_experts for lay in self._layers),
                                        dtype=torch.float64)
        self._current[layer, : grad.shape[0]] += grad.detach().double().pow(2).flatten(1).sum(1)

    def step(self, *_: object) -> None:
        """Close the current step (called after each optimizer step)."""
        if self._current is not None:
            self._rows.append(self._current)
        self._current = None

    def mean_sq(self) -> torch.Tensor:
        """[L, S] mean over steps of each slot's squared gradient norm."""
        if not self._rows:
            return torch.zeros(len(self._layers), max(lay.num_experts for lay in self._layers), dtype=torch.float64)
        return torch.stack(self._rows).mean(0)

    def remove(self) -> None:
        """Remove the gradient hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass
class ExpertTraining:
    """Result of :func:`train_experts`: the training stats and per-slot mean squared gradient norms [L, S]."""

    stats: TrainStats
    grad_sq: torch.Tensor


def train_experts(fed, model: nn.Module, task: ClientTask, examples, frozen: Sequence[Iterable[int]] | None = None,
                  extra_params: Sequence[nn.Parameter] = (), **overrides) -> ExpertTraining:
    """Fine-tune the fused expert tensors of ``model`` (and ``extra_params``, e.g. attention) on ``examples``,
    keeping expert slots ``frozen[l]`` bit-identical (gradient mask + restore), and record per-slot gradient
    norms."""
    layers = moe_layers(model)
    params = [getattr(layer.experts, name) for layer in layers for name in EXPERT_PARAMS] + list(extra_params)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    cfg = fed.train_config(task.client_id, task.round, **overrides)
    norms = ExpertGradNorms(model)
    handle = freeze_experts(model, frozen or [[] for _ in layers])
    try:
        stats = finetune(model, fed.tokenizer, examples, cfg, params=params, progress=False,
                         step_callback=lambda *_: norms.step())
        handle.restore()  # undo anything the optimizer did to frozen slots (exact zero grads already)
    finally:
        handle.remove()
        norms.remove()
        for p in params:
            p.requires_grad_(False)
    return ExpertTraining(stats, norms.mean_sq())


@dataclass(frozen=True)
class ExpertShape:
    """MoE layers and router experts per layer of the trained model."""

    num_layers: int
    num_experts: int


class ExpertHalf(DeviceBudgets):
    """What both halves of an expert method share: the priced architecture and the trained model's shape,
    from which :meth:`make_budget` sizes a client's work."""

    @functools.cached_property
    def pm(self) -> PricedModel:
        """The priced architecture's expert sizes (:func:`fedmoe.methods.experts.priced.priced_model`)."""
        return priced_model(self.fed)

    @functools.cached_property
    def attention_cost(self) -> attn.AttentionCost:
        """What training attention (the ``attention`` option) costs on the priced architecture."""
        return attn.priced_attention(self.fed.priced_config, self.args)

    @functools.cached_property
    def shape(self) -> ExpertShape:
        """MoE layers and router experts of the trained model."""
        layers = moe_layers(self.fed.base_model())
        return ExpertShape(len(layers), layers[0].num_router_experts)


class ExpertServer(ExpertHalf, Server):
    """Server shared by FLUX, FMD, FMQ and FMES: global fused experts and attention tensors, token-weighted
    per-expert aggregation, FedAvg of attention, the global model for evaluation, and resumable state."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self.model = fed.base_model()
        self.model.requires_grad_(False)
        self.global_state = {**fused_state(self.model), **attn.initial_state(self.model, self.args, fed.cfg.seed)}

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        """Every client gets the global experts (and attention tensors)."""
        return [ClientTask(c, round_, self.global_state) for c in clients]

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        experts, _ = attn.split_attention(self.global_state)
        uploads = [attn.split_attention(u.tensors) for u in updates]
        experts, info = aggregate_experts(experts, [e for e, _ in uploads], [u.expert_tokens for u in updates])
        attention = {}
        if self.args.attention != "none":
            attention = weighted_average([a for _, a in uploads], [u.num_examples for u in updates])
        self.global_state = {**experts, **attention}
        return {"clients": len(updates), **info}

    def eval_model(self):
        model = load_fused_state(self.fed.base_model(), self.global_state)
        model = attn.load_attention(model, self.args, self.global_state)
        return attn.attach(model, self.args, self.global_state).eval()


class ExpertClient(ExpertHalf, Client):
    """Client shared by FLUX, FMD, FMQ and FMES: rebuilds the global model from its task each round."""

    def global_model(self, task: ClientTask) -> nn.Module:
        """A fresh plain base model holding the task's global experts (and ``full`` attention weights)."""
        model = load_fused_state(self.fed.base_model(), task.tensors)
        return attn.load_attention(model, self.args, task.tensors)

    def expert_update(self, task: ClientTask, tensors: dict[str, torch.Tensor], stats: TrainStats,
                      num_examples: int, expert_tokens: list | None = None) -> ClientUpdate:
        """An update carrying the trained expert ``tensors`` and the training metrics (pricing comes after)."""
        return ClientUpdate(task.client_id, task.round, tensors, num_examples=num_examples,
                            metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens},
                            expert_tokens=stats.expert_counts.tolist() if expert_tokens is None else expert_tokens)

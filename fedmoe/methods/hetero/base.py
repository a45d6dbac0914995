"""The plumbing FLAME and the heterogeneous-LoRA baselines share: one global rank-r LoRA on every expert,
clients whose budget (rank r_i or top-k_i) follows their compute tier, local training and pricing.

Every client model is the base model with a rank-``rank`` LoRA (``alpha / rank`` scaling). A client with
rank ``r_i < rank`` holds its r_i components there and zeros in the others; a component whose A row and
B column are both zero gets exactly zero gradient, so it stays zero and the client trains a rank-r_i
adapter (with the global scaling, so a truncated adapter's product is the truncated global product).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.cost import token_flops
from fedmoe.fl.pricing import lora_params, payload_bytes, training_work
from fedmoe.methods.base import Method
from fedmoe.methods.hetero.adapters import lora_scaling, set_merged_weights
from fedmoe.methods.hetero.lowrank import Factors, from_factors, pad, to_factors, truncate
from fedmoe.methods.hetero.tiers import DEFAULT_TIER_TFLOPS, client_tiers, ladder
from fedmoe.moe.layers import moe_layers, set_top_k
from fedmoe.moe.lora import add_expert_lora, load_lora_state_dict, lora_state_dict
from fedmoe.train import TrainStats, finetune


@dataclass
class HeteroArgs:
    """Options every heterogeneous-LoRA method shares.

    ``rank``/``alpha``: the global LoRA (scaling ``alpha / rank`` for every client); ``attention``: LoRA on
    q/v projections too (off: only the experts are adapted); ``tiers``: every client's compute tier (0 =
    strongest), else derived from its device with ``tier_tflops`` thresholds (:mod:`.tiers`).
    """

    rank: int = 8
    alpha: float = 16.0
    attention: bool = False
    tiers: list[int] | None = None
    tier_tflops: list[float] = field(default_factory=lambda: list(DEFAULT_TIER_TFLOPS))

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"rank={self.rank} and alpha={self.alpha} must be >= 1 and > 0 (e.g. rank=8, alpha=16)")
        if self.tiers is not None and any(t < 0 for t in self.tiers):
            raise ValueError(f"tiers={self.tiers} must be >= 0 (0 = strongest), or null to derive them from devices")
        if list(self.tier_tflops) != sorted(self.tier_tflops, reverse=True) or any(t <= 0 for t in self.tier_tflops):
            raise ValueError(f"tier_tflops={self.tier_tflops} must be positive and descending (e.g. [60, 20])")


class HeteroLoRA(Method):
    """Base of FLAME, HetLoRA, FlexLoRA and FLoRA (see module docstring); subclasses plan and aggregate."""

    Args = HeteroArgs

    def __init__(self, fed, args=None):
        super().__init__(fed, args)
        torch.manual_seed(fed.cfg.seed)
        targets = ["q_proj", "v_proj"] if self.args.attention else []
        self._server = add_expert_lora(fed.base_model(), r=self.args.rank, alpha=self.args.alpha,
                                       target_modules=targets)
        layers = moe_layers(self._server)
        self.num_experts = layers[0].num_experts
        self.full_top_k = layers[0].top_k
        self.global_state = lora_state_dict(self._server)
        self.tiers = client_tiers(fed.devices, self.args.tiers, self.args.tier_tflops)
        self._local = None

    # --- budgets -------------------------------------------------------------------------------------
    def client_rank(self, client: int) -> int:
        """LoRA rank of a client (the baselines' budget: halved per tier)."""
        return ladder(self.args.rank, self.tiers[client])

    def client_top_k(self, client: int) -> int:
        """Experts per token of a client (the baselines keep the model's top-k)."""
        return self.full_top_k

    # --- tensors -------------------------------------------------------------------------------------
    def factors(self, state: dict[str, torch.Tensor]) -> Factors:
        """Per-expert factors of a LoRA state (:func:`fedmoe.methods.hetero.lowrank.to_factors`)."""
        return to_factors(state, self.num_experts)

    def truncated(self, state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
        """A LoRA state cut to its first ``rank`` components (what a rank-``rank`` client holds)."""
        return from_factors(truncate(self.factors(state), rank))

    def padded(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A lower-rank LoRA state zero-padded to the global rank (loadable into the client model)."""
        return from_factors(pad(self.factors(state), self.args.rank))

    # --- client side ---------------------------------------------------------------------------------
    def local_model(self):
        """This process's client model (base + global-rank LoRA), built once; tasks overwrite its adapter."""
        if self._local is None:
            self._local = copy.deepcopy(self._server)
        return self._local

    def fit(self, task: ClientTask, state: dict[str, torch.Tensor], *, top_k: int, extra_params=()
            ) -> tuple[TrainStats, dict[str, torch.Tensor]]:
        """Load ``state`` (global rank) into the client model, route ``top_k`` experts per token, fine-tune the
        LoRA (and ``extra_params``) on the client's data; return the stats and the trained LoRA state."""
        model = self.local_model()
        load_lora_state_dict(model, state)
        params = [p for n, p in model.named_parameters() if "lora_" in n] + list(extra_params)
        set_top_k(model, top_k)
        try:
            cfg = self.fed.train_config(task.client_id, task.round)
            stats = finetune(model, self.fed.tokenizer, self.fed.client_data(task.client_id), cfg, params=params,
                             progress=False)
        finally:
            set_top_k(model, self.full_top_k)
        return stats, lora_state_dict(model)

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
                    extra: dict | None = None) -> ClientUpdate:
        """The client's update with its cost-model work and diagnostics (tier, top-k, rank, FLOPs per token).

        Work is priced on ``fed.priced_config`` (:mod:`fedmoe.fl.pricing`): ``top_k`` as a fraction of the
        model's top-k, the LoRA of ``rank`` on the active experts as adapter parameters; the download is a
        rank-``down_rank`` LoRA (default ``rank``; 0: nothing) and ``bytes_down`` overrides the task's payload size.
        """
        update = ClientUpdate(
            task.client_id, task.round, tensors, num_examples=len(self.fed.client_data(task.client_id)),
            metrics={"loss": stats.mean_loss, "steps": stats.steps, "tokens": stats.tokens},
            expert_tokens=stats.expert_counts.tolist() if stats.expert_counts is not None else [],
        )
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
        update.extra = {"tier": self.tiers[task.client_id], "top_k": top_k, "priced_top_k": k, "rank": rank,
                        "flops_per_token": flops.train, "train_flops": update.work["train_flops"], **(extra or {})}
        return update

    # --- server side ---------------------------------------------------------------------------------
    def eval_model(self):
        load_lora_state_dict(self._server, self.global_state)
        self._server.eval()
        return self._server

    def merged_model(self, base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor] | None):
        """The server model with a zero LoRA and ``base + alpha / r * delta`` in the adapted weights
        (FlexLoRA's and FLoRA's global model)."""
        load_lora_state_dict(self._server, {k: torch.zeros_like(v) for k, v in self.global_state.items()})
        set_merged_weights(self._server, base, delta or {}, lora_scaling(self._server))
        self._server.eval()
        return self._server

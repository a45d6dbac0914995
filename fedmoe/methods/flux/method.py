"""FLUX (Chen et al., EuroSys 2026): quantized profiling, layer-aware merging of non-tuning experts and
dynamic role assignment, with token-weighted per-expert aggregation (see README.md for the equations)."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass

import torch

from fedmoe.fl.contract import ClientTask, ClientUpdate
from fedmoe.fl.cost import ClientWork, check_fits, token_flops
from fedmoe.fl.federation import client_seed
from fedmoe.methods.base import register
from fedmoe.methods.experts import attention as attn
from fedmoe.methods.experts.base import (
    ExpertClient,
    ExpertHalf,
    ExpertServer,
    expert_tensors,
    train_experts,
)
from fedmoe.methods.flux.args import FluxArgs
from fedmoe.methods.flux.assignment import Roles, eps_at, init_utilities, select_roles, utility, zo_grad_sq
from fedmoe.methods.flux.budget import FluxBudget, expert_work, flux_budget, layer_merge_budget, tiny_count
from fedmoe.methods.flux.merging import apply_merge, output_error, plan_merge
from fedmoe.methods.flux.profiling import (
    Profile,
    example_batches,
    profile_error,
    profile_model,
    profile_subset,
    quantized_profile,
)
from fedmoe.moe.layers import moe_layers
from fedmoe.moe.surgery import EXPERT_PARAMS


def utility_row(utilities: torch.Tensor) -> list[list[float | None]]:
    """A client's [L, E] utilities as the task ships them: plain JSON, ``None`` where still unknown (NaN)."""
    return [[None if math.isnan(u) else u for u in row] for row in utilities.tolist()]


@dataclass(frozen=True)
class FluxClientBudget:
    """A FLUX client's budget: its memory split on the priced model (:func:`flux_budget`) and, on the trained
    model, how many experts it tunes and how many merged slots it holds for the others."""

    device: FluxBudget
    tune: int
    slots: int


class FluxBudgets(ExpertHalf):
    """FLUX's budget rule, shared by both halves."""

    def make_budget(self, client: int) -> FluxClientBudget:
        n, layers = self.shape.num_layers * self.shape.num_experts, self.shape.num_layers
        b = flux_budget(self.pm, self.fed.devices[client], self.args.tune_memory_share, self.args.max_tune_fraction,
                        self.attention_cost.memory_bytes)
        tune = tiny_count(b.tune, n)
        return FluxClientBudget(b, tune, min(n - tune, tiny_count(b.slots, n, layers)))


class FluxServer(FluxBudgets, ExpertServer):
    """FLUX's server: keeps each client's expert utilities and last profile (stale profiling), ships them with
    the client's budget and eps (the client picks its roles), and averages the uploaded experts token-weighted
    (attention: FedAvg)."""

    def __init__(self, fed, args):
        super().__init__(fed, args)
        self.utilities = torch.full((fed.cfg.fed.num_clients, self.shape.num_layers, self.shape.num_experts),
                                    float("nan"), dtype=torch.float64)
        self.profiles: dict[int, dict] = {}

    def eps(self, round_: int) -> float:
        """eps of this round (:func:`eps_at`)."""
        a = self.args
        return eps_at(round_, self.fed.cfg.fed.rounds, a.eps_schedule, a.eps_start, a.eps_end, a.eps_fixed,
                      a.eps_step)

    def plan(self, round_: int, clients: list[int]) -> list[ClientTask]:
        """Each client's task: its utility row, tuning budget, eps and merge slots (and its stale profile). Roles
        are picked where the profile they need is: on the client (:meth:`FluxClient.assign`)."""
        eps = self.eps(round_)
        tasks = []
        for c in clients:
            budget = self.budget(c)
            plan = {"utilities": utility_row(self.utilities[c]), "tune_budget": budget.tune, "merge_slots": budget.slots,
                    "eps": eps, "profile": self.profiles.get(c) if self.args.stale else None}
            tasks.append(ClientTask(c, round_, self.global_state, plan))
        return tasks

    def aggregate(self, round_: int, updates: list[ClientUpdate]) -> dict[str, float]:
        info = super().aggregate(round_, updates)
        for u in updates:
            profile = Profile.from_dict(u.payload["profile"])
            self.profiles[u.client_id] = u.payload["profile"]
            for key, g in u.payload["grad_sq"].items():
                layer, e = (int(x) for x in key.split("."))
                self.utilities[u.client_id, layer, e] = float(utility(profile.tokens[layer, e], torch.tensor(g)))
        diag = {k: [u.diagnostics[k] for u in updates if u.diagnostics.get(k) is not None]
                for k in ("profile_error", "stale_error", "merge_error")}
        return {**info, "eps": self.eps(round_), **{k: sum(v) / len(v) for k, v in diag.items() if v}}

    def overlap(self, round_: int) -> float:
        """Stale profiling hides all of a client's forward-only (profiling) work behind aggregation."""
        return 1.0 if self.args.stale else 0.0

    def state_dict(self):
        return {"global": self.global_state, "utilities": self.utilities.clone(),
                "profiles": copy.deepcopy(self.profiles)}

    def load_state_dict(self, state):
        self.global_state = state["global"]
        self.utilities = state["utilities"].clone()
        self.profiles = {int(k): v for k, v in state["profiles"].items()}


class FluxClient(FluxBudgets, ExpertClient):
    """A FLUX client: profiles the quantized global model, picks its roles from the task's utilities, merges
    its non-tuning experts into its slots, tunes its exploitation experts at full precision (and attention),
    scores its exploration experts (zeroth-order) and reports their gradient norms."""

    def assign(self, task: ClientTask, profile: Profile) -> tuple[Roles, list[list[int]]]:
        """(roles, ZO probe pairs) of ``task`` from ``profile``: utilities initialised per ``utility_init``,
        :func:`select_roles` (at least one trained expert when exploration is only scored); ``score``: the
        exploration experts are the probes; ``train``: up to B_tune unknown non-tuning experts (if
        ``zo_probes``)."""
        a = self.args
        rng = random.Random(client_seed(self.fed.cfg.seed, task.round, task.client_id))
        known = torch.tensor([[math.nan if u is None else u for u in row] for row in task.plan["utilities"]],
                             dtype=torch.float64)
        utilities = init_utilities(known, profile.tokens, a.utility_init)
        roles = select_roles(utilities, task.plan["tune_budget"], task.plan["eps"], rng,
                             min_exploit=1 if a.exploration == "score" else 0)
        if a.exploration == "score":
            return roles, [list(p) for p in roles.pairs("explore")]
        tuning = roles.all
        unknown = [[layer, e] for layer, e in torch.isnan(known).nonzero().tolist() if e not in tuning[layer]]
        return roles, rng.sample(unknown, min(len(unknown), task.plan["tune_budget"])) if a.zo_probes else []

    def update(self, task: ClientTask) -> ClientUpdate:
        a, fed, c = self.args, self.fed, task.client_id
        cfg = fed.cfg.fed
        examples = fed.client_data(c)
        probe_set = profile_subset(examples, a.profile_examples, client_seed(fed.cfg.seed, 0, c))
        batches = example_batches(fed.tokenizer, probe_set, max_length=cfg.max_length, batch_size=cfg.batch_size)
        model = self.global_model(task)
        full_model = attn.folded(model, a, task.tensors)  # what the global model computes (forward-only work)
        t0 = time.perf_counter()
        current = quantized_profile(full_model, batches, scheme=a.profile_scheme)
        profile_wall = time.perf_counter() - t0
        stale = a.stale and task.plan.get("profile") is not None
        used = Profile.from_dict(task.plan["profile"]) if stale else current
        diag: dict = {}
        if a.diagnostics:
            full = profile_model(full_model, batches)
            diag["profile_error"] = profile_error(current, full)
            diag["stale_error"] = profile_error(used, full) if stale else None
            reference = copy.deepcopy(full_model).eval()
        t1 = time.perf_counter()
        roles, probes = self.assign(task, used)
        assign_wall = time.perf_counter() - t1
        tuning = roles.exploit if a.exploration == "score" else roles.all
        alone = roles.all  # scored exploration experts stay unmerged (frozen) so their probes perturb them
        t1 = time.perf_counter()
        budget = layer_merge_budget(used.freq, [self.shape.num_experts - len(t) for t in alone],
                                    task.plan["merge_slots"], a.merge_budget, a.merge_rounding)
        merge = plan_merge(model, alone, budget, used, weights=a.merge_weights, drop=a.drop, pca_dim=a.pca_dim,
                           seed=client_seed(fed.cfg.seed, task.round, c))
        apply_merge(model, merge)
        merge_wall = time.perf_counter() - t1
        model = attn.attach(model, a, task.tensors)
        if a.diagnostics:
            model.eval()
            diag["merge_error"] = output_error(reference, model, batches)
            del reference
        layers = moe_layers(model)
        frozen = [sorted({int(layer.expert_map[e]) for e in range(self.shape.num_experts) if e not in tune})
                  for layer, tune in zip(layers, tuning, strict=True)]
        zo = self._zero_order(model, task, probes, batches[0]) if a.zo_probes and probes else {}
        trained = train_experts(fed, model, task, examples, frozen, extra_params=attn.trainable(model, a))
        stats = trained.stats
        pairs = [(layer, e) for layer, tune in enumerate(tuning) for e in tune]
        grad_sq = {f"{layer}.{e}": float(trained.grad_sq[layer, int(layers[layer].expert_map[e])]) for layer, e in pairs}
        counts = stats.expert_counts.double()
        tuned_share = float(sum(counts[layer, e] for layer, e in pairs) / counts.sum().clamp(min=1))
        tensors = {**expert_tensors(model, pairs), **attn.attention_state(model, a)}
        update = self.expert_update(task, tensors, stats, len(examples))
        update.payload = {"profile": current.to_dict(), "grad_sq": {**zo, **grad_sq}}
        update.work = self.price(c, stats, len(pairs), sum(merge.slots), tuned_share, current.n_tokens, stale,
                                 zo_forwards=len(zo) * (a.zo_probes + 1))
        check_fits(ClientWork.from_dict(update.work), fed.devices[c], what=f"FLUX client {c}")
        update.diagnostics = {**diag, "tuning": len(pairs),
                              "roles": {"exploit": roles.exploit, "explore": roles.explore, "trained": tuning},
                              "slots": merge.slots, "merge_budget": budget, "stale": stale,
                              "tuned_token_share": tuned_share, "profile_wall": profile_wall,
                              "merge_wall": merge_wall, "assign_wall": assign_wall,
                              "profile_sim_seconds": self._forward_seconds(stats, current.n_tokens, fed.devices[c])}
        return update

    def _zero_order(self, model, task: ClientTask, probes: list, batch: dict) -> dict[str, float]:
        """ZO estimates of ||g||^2 for the ``probes`` (layer, expert) pairs (the slot each routes to: its own
        for scored exploration experts), on one local batch (loss on the batch's non-padding tokens)."""
        a, layers = self.args, moe_layers(model)
        batch = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
        gen = torch.Generator().manual_seed(client_seed(self.fed.cfg.seed, task.round, task.client_id))
        model.eval()

        def loss() -> float:
            return float(model(**batch).loss)

        out = {}
        for layer, e in probes:
            slot = int(layers[layer].expert_map[e])
            tensors = [getattr(layers[layer].experts, n).data[slot] for n in EXPERT_PARAMS]
            out[f"{layer}.{e}"] = zo_grad_sq(loss, tensors, a.zo_sigma, a.zo_probes, gen)
        return out

    def _forward_seconds(self, stats, tokens: int, device) -> float:
        """Simulated seconds of ``tokens`` forward-only tokens on ``device`` (profiling)."""
        f = token_flops(self.fed.priced_config, seq_len=max(1, int(stats.tokens / max(stats.examples, 1))))
        return f.forward * tokens * self.fed.cfg.cost.tokens_scale / (device.bf16_flops * device.mfu)

    def price(self, client: int, stats, tuned: int, resident_slots: int, tuned_share: float, profile_tokens: int,
              hidden: bool, zo_forwards: int = 0) -> dict[str, float]:
        """Cost-model inputs: the client's structure as fractions of the priced model's experts
        (``resident_slots``: every expert slot it holds, tuned, scored and merged). The client merges, so it
        downloads every global expert in bf16 (and quantizes its own profiling copy: no 4-bit download);
        uploads its trained experts; attention tensors go both ways. Profiling is forward-only work, hidden
        by the overlap when stale; otherwise (and for zeroth-order probes) it is added to the training
        compute. The result fits the device by construction of :func:`flux_budget` (checked in
        :meth:`update`)."""
        pm, n_tiny, budget = self.pm, self.shape.num_layers * self.shape.num_experts, self.budget(client).device
        # The trained model's structure as fractions of the priced model's experts, capped by the budget where
        # the trained model has too few experts to express it (e.g. at least one tuning expert).
        trainable = min(budget.tune_priced, math.floor(tuned / n_tiny * pm.total_experts))
        slots = min(budget.tune_priced + budget.slots_priced,
                    max(trainable + pm.num_layers, math.floor(resident_slots / n_tiny * pm.total_experts)))
        work = expert_work(
            self.fed, pm, stats, trainable=trainable, slots=slots, tuned_token_share=tuned_share,
            bytes_down=pm.total_experts * pm.expert_bytes[16], bytes_up=trainable * pm.expert_bytes[16],
            forward_tokens=profile_tokens if hidden else 0, attention=self.attention_cost)
        visible = (0 if hidden else profile_tokens) + zo_forwards * self.fed.cfg.fed.batch_size * self.fed.cfg.fed.max_length
        if visible:
            f = token_flops(self.fed.priced_config, seq_len=max(1, int(stats.tokens / max(stats.examples, 1))))
            work["train_flops"] += f.forward * visible * self.fed.cfg.cost.tokens_scale
        return work


FLUX = register("flux", FluxArgs, FluxServer, FluxClient)

"""FLAME's experiment grid, shared by ``notebooks/flame`` and ``python -m fedmoe.studies flame``: the compute settings,
one run config per (method, setting, seed), and the numbers the figures show (score, FLOPs per client, FLAME's
lead over the best baseline paired over seeds and test items).

Compute settings are device fleets (:mod:`fedmoe.fl.devices`): ``homogeneous`` (every client an RTX 3090,
tier 0), ``uniform`` (a third each of tiers 0, 1, 2) and ``heavy-tail`` (60% tier 2, 30% tier 1, 10% tier 0).
The baselines spend a weak tier's budget on LoRA rank, FLAME on activated experts (equal-budget comparison);
FedIT, homogeneous by design, runs at the rank of the setting's weakest tier (alpha scaled to keep alpha/r).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import fedmoe
from fedmoe.config import RunConfig, from_dict, load_config
from fedmoe.fl.devices import get_fleet
from fedmoe.fl.pricing import BF16_BYTES
from fedmoe.methods.hetero.tiers import DEFAULT_TIER_TFLOPS, client_tiers, ladder
from fedmoe.report import DEPLOYED, GLOBAL, Precondition, TargetRow
from fedmoe.results import load_config_dict, load_rounds
from fedmoe.stats import Goal, Interval, mean_ci, paired_difference, verdict
from fedmoe.studies.claims import OURS, Claim, claims_by_key
from fedmoe.studies.deployed import score_deployed
from fedmoe.studies.evidence import (
    Comparison,
    best_by_mean,
    by_seed,
    compare,
    drop_from_best,
    head_to_head_row,
    item_scores,
    paired_by_seed,
    scale_of,
    score_interval,
    score_lines,
)
from fedmoe.studies.grid import LONG_LAST, long_horizon, run_cells, with_seeds
from fedmoe.studies.registry import Outcome
from fedmoe.studies.reload import cached_json, compute_all, evaluate_on, final_server

SETTINGS = {"homogeneous": "rtx-3090-24gb", "uniform": "uniform", "heavy-tail": "heavy-tail"}
BASELINES = ("hetlora", "flexlora", "flora", "fedit")
METHODS = ("flame", *BASELINES)
CONFIG = Path(fedmoe.__file__).resolve().parents[1] / "reproduce" / "configs" / "flame.yaml"
COMMAND = "python -m fedmoe.studies flame  (or notebooks/flame/01_compute_settings.ipynb)"
LONG_COMMAND = "python -m fedmoe.studies flame-long  (or notebooks/flame/04_long_horizon.ipynb)"
COLLAPSE_TOLERANCE = 0.05  # a run may end up to 5 points below its best round: the difference the test sets resolve
RESCALERS = ("none", "fixed", "learnable")
#: The long-horizon check (:func:`run_long`): FLAME, FLoRA (the best baseline in every setting at the study's own
#: horizon) and HetLoRA (the paper's baseline), in the two settings of the "lead grows" claim.
LONG_METHODS = ("flame", "flora", "hetlora")
LONG_SETTINGS = ("homogeneous", "heavy-tail")
TIER_SCORES_FILE = "tier_scores.json"
#: The paper-scale architecture the per-tier cost table prices (OLMoE-1B-7B: FLAME's model, 64 experts, top-8).
PROJECTION = "olmoe-1b-7b"


_SCORE = "final score of the global model, points"
#: FLAME's claims, declared before any run. FLAME's lead is judged only where its premise holds: rank compression
#: must cost the LoRA baselines (``rank-costs``), else spending a weak client's budget on experts instead of rank
#: has nothing to win.
CLAIMS = (
    Claim("rank-costs", "FLAME", "precondition: rank compression costs FedIT", "ours (FLAME's premise: a compressed, "
          "lower-rank LoRA loses information)", _SCORE, "FedIT full rank - FedIT at the weakest tier's rank, "
          "homogeneous fleet, paired over seeds and test items", Goal(">", 0.0), GLOBAL),
    Claim("top-k-cheaper", "FLAME", "precondition: fewer experts cost FedIT less than a lower rank",
          "ours (FLAME's premise: a weak client loses less by activating fewer experts than by a lower rank)",
          _SCORE, "FedIT's full-rank model at the weakest tier's top-k (through FLAME's starting rescaler) - FedIT "
          "at the weakest tier's rank, homogeneous fleet, paired over seeds and test items", Goal(">", 0.0), GLOBAL),
    Claim("top-k-cheaper-by-granularity", "FLAME", "precondition by expert granularity: fewer experts cost FedIT "
          "less than a lower rank", "ours (the paper's OLMoE-1B-7B has 64 fine-grained experts at top-8)", _SCORE,
          "as top-k-cheaper, on zoo models of one expert budget cut into more, narrower experts",
          Goal(">", 0.0), GLOBAL, axis="zoo model"),
    Claim("lead", "FLAME", "FLAME beats the best heterogeneous-LoRA baseline", "abstract", _SCORE,
          "FLAME - the baseline with the best mean score in the setting, paired over seeds and test items",
          Goal(">", 0.0), GLOBAL, preconditions=("rank-costs", "top-k-cheaper"), axis="compute setting"),
    Claim("lead-deployed", "FLAME", "FLAME beats the best heterogeneous-LoRA baseline on what clients deploy",
          "abstract", "|D_i|-weighted mean of the clients' deployed models' scores, points",
          "FLAME - the baseline with the best mean deployed score in the setting, paired over seeds and test items",
          Goal(">", 0.0), DEPLOYED, preconditions=("rank-costs", "top-k-cheaper"), axis="compute setting"),
    Claim("lead-grows", "FLAME", "FLAME's lead grows from homogeneous to heavy-tail", "abstract (resource-adaptive)",
          _SCORE, "(lead in heavy-tail) - (lead in homogeneous), paired over seeds and test items", Goal(">", 0.0),
          GLOBAL, preconditions=("rank-costs", "top-k-cheaper")),
    Claim("no-collapse", "FLAME", "no collapse: ends near its best round", OURS, _SCORE,
          "final - best evaluated round, paired per seed and item", Goal(">", -0.05), GLOBAL),
    Claim("rescaler-learnable", "FLAME", "learnable rescaler beats fixed", "paper (rescaling)", _SCORE,
          "learnable - fixed k/k_i, paired over seeds and test items", Goal(">", 0.0), GLOBAL),
    Claim("rescaler-fixed", "FLAME", "fixed rescaler beats none", "paper (rescaling)", _SCORE,
          "fixed k/k_i - none, paired over seeds and test items", Goal(">", 0.0), GLOBAL),
    Claim("tier-model", "FLAME", "diagnostic: a weak tier's own model beats a global model", OURS,
          "the tier's deployed model (the global LoRA at its own top-k through its rescaler), points",
          "final round, paired over seeds and test items", Goal(">", 0.0), DEPLOYED),
)
_CLAIM = claims_by_key(CLAIMS)


def make_config(method: str, setting: str, *, scale: str = "default", seed: int = 0,
                overrides: dict[str, Any] | None = None, method_args: dict[str, Any] | None = None) -> RunConfig:
    """The run config of ``method`` in compute ``setting`` at ``scale`` (sizes: the YAML's ``scale`` block;
    ``overrides``: dotted config keys)."""
    if setting not in SETTINGS:
        raise KeyError(f"unknown compute setting {setting!r}; choose one of {sorted(SETTINGS)}")
    over: dict[str, Any] = {"name": f"flame-{setting}", "method": method, "seed": seed,
                            "cost.fleet": SETTINGS[setting]}
    cfg = load_config(CONFIG, {**over, **(overrides or {})}, scale=scale)
    args = {**cfg.method_args, **(method_args or {})}
    cfg.method_args = fedit_args(cfg, args) if method == "fedit" else args
    return cfg


def setting_tiers(cfg: RunConfig, args: dict[str, Any]) -> list[int]:
    """Every client's compute tier in the run ``cfg`` describes (as the methods derive it)."""
    devices = get_fleet(cfg.cost.fleet).assign(cfg.fed.num_clients, cfg.data_seed)
    return client_tiers(devices, args.get("tiers"), args.get("tier_tflops", DEFAULT_TIER_TFLOPS))


def fedit_args(cfg: RunConfig, args: dict[str, Any]) -> dict[str, Any]:
    """FedIT's options in a setting: the weakest tier's rank for every client, alpha scaled to keep alpha/r."""
    rank = ladder(int(args["rank"]), max(setting_tiers(cfg, args)))
    return {"rank": rank, "alpha": float(args["alpha"]) * rank / int(args["rank"]),
            "attention": bool(args.get("attention", False))}


def run_grid(methods: Iterable[str], settings: Iterable[str], *, out_dir: str | Path, scale: str = "default",
             seeds: Sequence[int] = (0,), overrides: dict[str, Any] | None = None,
             method_args: dict[str, Any] | None = None, jobs: int | None = None,
             progress: bool = False) -> dict[tuple[str, str], list[Path]]:
    """Run (or reuse finished runs of) every method in every setting over ``seeds``, in parallel;
    ``{(method, setting): [run folder per seed]}`` (``method_args`` applies to FLAME only)."""
    methods = list(methods)
    cells = {(m, s): with_seeds([make_config(m, s, scale=scale, overrides=overrides,
                                             method_args=method_args if m == "flame" else None)], seeds)
             for s in settings for m in methods}
    return run_cells(cells, out_dir=out_dir, jobs=jobs, progress=progress)


def run_variants(variants: dict[Any, dict[str, Any]], setting: str, *, out_dir: str | Path, scale: str = "default",
                 seeds: Sequence[int] = (0,), overrides: dict[str, Any] | None = None, jobs: int | None = None,
                 progress: bool = False) -> dict[Any, list[Path]]:
    """Run (or reuse) FLAME in ``setting`` with each variant's ``method_args`` (a rescaler, a temperature ...) over
    ``seeds`` in one parallel grid; ``{variant: [run folder per seed]}``."""
    cells = {name: with_seeds([make_config("flame", setting, scale=scale, overrides=overrides, method_args=args)],
                              seeds) for name, args in variants.items()}
    return run_cells(cells, out_dir=out_dir, jobs=jobs, progress=progress)


def run_sampling(sizes: Iterable[int], methods: Iterable[str], setting: str, *, out_dir: str | Path,
                 scale: str = "default", seeds: Sequence[int] = (0,), overrides: dict[str, Any] | None = None,
                 jobs: int | None = None, progress: bool = False) -> dict[tuple[str, int], list[Path]]:
    """Run (or reuse) every method in ``setting`` with ``n`` clients sampled per round, for each ``n`` in ``sizes``
    (:func:`sampling_sizes`), in one parallel grid; ``{(method, n): [run folder per seed]}``."""
    methods = list(methods)
    cells = {(m, n): with_seeds([make_config(m, setting, scale=scale,
                                             overrides={**(overrides or {}), "fed.clients_per_round": n})], seeds)
             for n in sizes for m in methods}
    return run_cells(cells, out_dir=out_dir, jobs=jobs, progress=progress)


def rank_precondition(*, out_dir: str | Path, scale: str = "default", seeds: Sequence[int] = (0,),
                      overrides: dict[str, Any] | None = None, jobs: int | None = None,
                      progress: bool = False) -> tuple[Comparison, dict[str, list[Path]]]:
    """Whether rank compression costs the LoRA baselines in this setting, checked before FLAME is compared:
    FedIT on the homogeneous fleet at the full rank minus FedIT at the heavy-tail setting's weakest rank
    (alpha scaled to keep alpha/r), paired over seeds and test items. FLAME's claim (spend a weak client's
    budget on fewer experts, not on a smaller rank) can only show where this difference is positive;
    returns the comparison and ``{"full": [...], "weakest": [...]}`` run folders."""
    base = make_config("fedit", "homogeneous", scale=scale, overrides=overrides)
    weak_cfg = make_config("flame", "heavy-tail", scale=scale, overrides=overrides)
    full_rank = int(base.method_args["rank"])
    weak_rank = ladder(full_rank, max(setting_tiers(weak_cfg, weak_cfg.method_args)))
    alpha = float(base.method_args["alpha"]) * weak_rank / full_rank
    weakest = make_config("fedit", "homogeneous", scale=scale, overrides=overrides,
                          method_args={"rank": weak_rank, "alpha": alpha})
    runs = run_cells({"full": with_seeds([base], seeds), "weakest": with_seeds([weakest], seeds)}, out_dir=out_dir,
                     jobs=jobs, progress=progress)
    return compare(runs["full"], runs["weakest"]), runs


def projection_runs(setting: str = "heavy-tail", *, out_dir: str | Path, scale: str = "default",
                    arch: str = PROJECTION, methods: Iterable[str] = METHODS,
                    overrides: dict[str, Any] | None = None, jobs: int | None = None,
                    progress: bool = False) -> dict[str, Path]:
    """Two rounds of every method in ``setting`` with every client taking part, priced on the paper-scale
    architecture ``arch`` (``cost.mode=projection``) with its frozen base at 4 bits (OLMoE-1B-7B in bf16, 13.8 GB,
    fits no 12 GB RTX 3060): the runs :func:`tier_costs` reads. Only the price is wanted, so the test set is cut
    to 16 items; the training is the study's own (same data, steps, tiers). Two rounds, because FLoRA's download
    (the stacked LoRAs of the round before) is empty in round 1. Returns ``{method: run folder}``."""
    cfg = make_config("flame", setting, scale=scale, overrides=overrides)
    overrides = {**(overrides or {}), "cost.mode": "projection", "cost.projection": arch, "cost.base_bits": 4,
                 "fed.rounds": 2, "data.n_test": 16, "fed.clients_per_round": cfg.fed.num_clients}
    runs = run_cells({m: [make_config(m, setting, scale=scale, overrides=overrides)] for m in methods},
                     out_dir=out_dir, jobs=jobs, progress=progress)
    return {m: folders[0] for m, folders in runs.items()}


def tier_costs(runs: dict[str, str | Path]) -> list[dict[str, Any]]:
    """Per method and compute tier, side by side, from runs priced in projection (:func:`projection_runs`):
    devices, top-k on the trained and on the priced model (``None``: the model's own routing), LoRA rank,
    parameters uploaded, train TFLOPs of the round, MB up and down and simulated client seconds (means over the
    tier's clients) in the run's last round. Shows what "equal budget" means per method: FLAME's weak tiers save FLOPs but upload the
    full-rank LoRA, the rank-based baselines save bytes."""
    rows = []
    for method, folder in runs.items():
        record = [r for r in load_rounds(folder) if r.get("client_log")][-1]
        if record.get("cost_mode") != "projection":
            raise ValueError(f"{folder} was priced in cost mode {record.get('cost_mode')!r}; tier_costs reads "
                             "runs priced on the paper architecture (fix: use projection_runs)")
        cfg = from_dict(load_config_dict(folder))
        tier_of = setting_tiers(cfg, cfg.method_args)
        tiers: dict[int, list[str]] = {}
        for cid in record["client_log"]:
            tiers.setdefault(tier_of[int(cid)], []).append(cid)
        for tier, clients in sorted(tiers.items()):
            logs = [record["client_log"][c] for c in clients]

            def mean(values: Iterable[float]) -> float:
                return float(np.mean(list(values)))

            rows.append({
                "method": method, "tier": tier, "clients": len(clients),
                "devices": ", ".join(sorted({record["devices"][c] for c in clients})),
                "top_k": logs[0].get("top_k"), "priced_top_k": logs[0].get("priced_top_k"),
                "rank": logs[0]["rank"],
                "params_up_m": mean(record["bytes_up"][c] / BF16_BYTES for c in clients) / 1e6,
                "train_tflops": mean(g["train_flops"] for g in logs) / 1e12,
                "mb_up": mean(record["bytes_up"][c] for c in clients) / 1e6,
                "mb_down": mean(record["bytes_down"][c] for c in clients) / 1e6,
                "seconds": mean(record["client_seconds"][c] for c in clients),
            })
    return rows


#: The study's premises, in the order its claims name them.
PREMISES = ("rank-costs", "top-k-cheaper")
#: Zoo models of one expert budget at two granularities (8 x 128 wide at top-4; 32 x 32 wide at top-8, the
#: paper's ladder 8/4/2/1 in miniature): the axis the top-k premise is mapped over.
GRANULARITIES = ("default-top4", "default-e32")
GRANULARITY_COMMAND = "python -m fedmoe.studies flame-granularity"


def weakest_top_k_scores(folder: str | Path, tier: int) -> dict[str, Any]:
    """A finished full-rank FedIT run's final model scored on its test set at the top-k of a FLAME client of
    ``tier`` (the halving ladder from the model's top-k), through the rescaler such a client starts with (FLAME's
    defaults: calibrated on client 0's first examples when the routers do not renormalise): what a weak client
    would lose by activating fewer experts instead of training a lower rank. Cached as
    ``<folder>/top_k_tier<tier>.json``."""
    from fedmoe.data.collate import collate_train
    from fedmoe.methods.flame.method import FlameArgs
    from fedmoe.methods.flame.rescaler import Rescaler, start_scales
    from fedmoe.moe.layers import set_top_k, unwrap

    def compute() -> dict[str, Any]:
        cfg, fed, server = final_server(folder, "fedit")
        model, args = server.eval_model(), FlameArgs()
        full = int(unwrap(model).config.num_experts_per_tok)
        top_k = ladder(full, tier)
        batch = collate_train(fed.tokenizer, fed.client_data(0)[: args.calibration_examples], cfg.fed.max_length)
        scales = start_scales(model, args.rescaler_init, full, top_k, batch, per_layer=args.rescaler_per_layer)
        set_top_k(model, top_k)
        with Rescaler(scales, trainable=False).applied(model):
            scores = evaluate_on(cfg, fed, model, fed.test_set)
        return {"tier": tier, "top_k": top_k, "full_top_k": full, "scales": scales, **scores}

    return cached_json(Path(folder) / f"top_k_tier{tier}.json", compute)


def premise_comparisons(*, out_dir: str | Path, scale: str = "default", seeds: Sequence[int] = (0,),
                        overrides: dict[str, Any] | None = None, jobs: int | None = None,
                        progress: bool = False) -> dict[str, Comparison]:
    """The two premises, measured before FLAME is compared (``{claim key: comparison}``, paired over seeds and
    items): ``rank-costs`` (:func:`rank_precondition`) and ``top-k-cheaper``, FedIT's full-rank model at the
    weakest tier's top-k (:func:`weakest_top_k_scores`) minus FedIT trained at the weakest tier's rank: the two
    ways a weak client can spend its budget, from the same homogeneous runs."""
    import functools

    rank, runs = rank_precondition(out_dir=out_dir, scale=scale, seeds=seeds, overrides=overrides, jobs=jobs,
                                   progress=progress)
    weak_cfg = make_config("flame", "heavy-tail", scale=scale, overrides=overrides)
    tier = max(setting_tiers(weak_cfg, weak_cfg.method_args))
    score = functools.partial(weakest_top_k_scores, tier=tier)
    compute_all(score, runs["full"], f"top_k_tier{tier}.json", jobs, progress)
    pairs = paired_by_seed(runs["full"], runs["weakest"], what="the top-k premise")
    fewer = np.stack([score(full)["item_scores"] for _, full, _ in pairs])
    lower = np.stack([item_scores(weak) for _, _, weak in pairs])
    diff = paired_difference(fewer, lower)
    return {"rank-costs": rank,
            "top-k-cheaper": Comparison(diff, verdict(diff), scale_of([*runs["full"], *runs["weakest"]]))}


def preconditions(comparisons: dict[str, Comparison]) -> tuple[Precondition, ...]:
    """The measured premises as preconditions of FLAME's claims (any FAILED: those claims are NOT TESTABLE)."""
    return tuple(_CLAIM[key].precondition(comparisons[key].difference) for key in PREMISES)


def precondition_rows(comparisons: dict[str, Comparison], seeds: int) -> list[TargetRow]:
    """The premises as their own report rows."""
    return [_CLAIM[key].row(comparisons[key].difference, command=COMMAND, seeds=seeds,
                            run_scale=comparisons[key].run_scale) for key in PREMISES]


def best_baseline(folders: dict[tuple[str, str], list[Path]], setting: str, last: int = 1) -> str:
    """The baseline with the highest mean score over seeds in ``setting`` (chosen before comparing)."""
    return best_by_mean({m: runs for (m, s), runs in folders.items() if s == setting and m != "flame"}, last)


def lead(folders: dict[tuple[str, str], list[Path]], setting: str, last: int = 1) -> Comparison:
    """FLAME minus the best baseline in ``setting``, paired over seeds and test items (score units; each run
    scored over its last ``last`` evaluations)."""
    return compare(folders["flame", setting], folders[best_baseline(folders, setting, last), setting], last)


def deployed_lead_targets(folders: dict[tuple[str, str], list[Path]], settings: Iterable[str],
                          premises: Sequence[Precondition], command: str = COMMAND, horizon: str = "",
                          jobs: int | None = None, progress: bool = False) -> list[TargetRow]:
    """FLAME's lead under the deployed protocol: every method scored on what its clients deploy (FLAME's tier
    models, HetLoRA's truncated and FlexLoRA's SVD copies, FedIT's and FLoRA's global model), the best baseline
    chosen by its mean deployed score, paired over seeds and items (final round)."""
    settings = list(settings)
    score_deployed([f for (_, s), fs in folders.items() if s in settings for f in fs], jobs, progress)
    rows, scale = [], scale_of(folders)
    for setting in settings:
        baselines = {m: fs for (m, s), fs in folders.items() if s == setting and m != "flame"}
        best = best_by_mean(baselines, protocol=DEPLOYED)
        diff = compare(folders["flame", setting], baselines[best], protocol=DEPLOYED).difference
        rows.append(_CLAIM["lead-deployed"].row(diff, command=command, seeds=len(folders["flame", setting]),
                                                run_scale=scale, axis_value=setting,
                                                where=", ".join(t for t in (setting, horizon) if t),
                                                preconditions=tuple(premises), note=f"best baseline {best}"))
    return rows


def lead_growth(folders: dict[tuple[str, str], list[Path]], low: str = "homogeneous", high: str = "heavy-tail",
                last: int = 1) -> Comparison:
    """How much FLAME's lead over the best baseline grows from setting ``low`` to ``high``: the paired difference
    of the per-item lead (same seeds, same test items in both settings)."""
    sides = [folders[m, s] for s in (high, low) for m in ("flame", best_baseline(folders, s, last))]
    items = np.array([[item_scores(f, last) for f in runs] for _, *runs in paired_by_seed(*sides, what="lead growth")])
    diff = paired_difference(items[:, 0] - items[:, 1], items[:, 2] - items[:, 3])  # [seed, item] leads, high vs low
    return Comparison(diff, verdict(diff), scale_of({s: folders["flame", s] for s in (low, high)}))


def gap_anatomy(folders: dict[tuple[str, str], list[Path]], settings: Iterable[str], last: int = 1
                ) -> dict[str, Comparison]:
    """Where FLAME's distance to the best baseline comes from, each part a paired comparison:

    - ``FLAME - FedIT (homogeneous)``: every client runs the full top-k at the full rank, so the two differ only in
      the aggregation (activation-aware vs FedAvg): FLAME's own rule, with no heterogeneity to exploit;
    - ``<best> - FedIT (homogeneous)``: the best baseline's edge where nothing is heterogeneous (an edge of its
      aggregation, not of how it handles weak clients);
    - ``FLAME - HetLoRA (<setting>)``: FLAME against the paper's own baseline in every setting.

    The FedIT rows need FedIT's homogeneous runs (the long-horizon check has none and gets only the HetLoRA rows).
    """
    out = {}
    if "homogeneous" in settings and ("fedit", "homogeneous") in folders:
        best = best_baseline(folders, "homogeneous", last)
        out["FLAME - FedIT (homogeneous)"] = compare(folders["flame", "homogeneous"], folders["fedit", "homogeneous"],
                                                     last)
        if best != "fedit":
            out[f"{best} - FedIT (homogeneous)"] = compare(folders[best, "homogeneous"],
                                                           folders["fedit", "homogeneous"], last)
    for setting in settings:
        out[f"FLAME - HetLoRA ({setting})"] = compare(folders["flame", setting], folders["hetlora", setting], last)
    return out


def targets(folders: dict[tuple[str, str], list[Path]], settings: Iterable[str], premises: Sequence[Precondition],
            last: int = 1, horizon: str = "", command: str = COMMAND, deployed: bool = True,
            jobs: int | None = None, progress: bool = False) -> list[TargetRow]:
    """FLAME's claims as report rows: it leads the best baseline in every setting (an axis) on the global models
    and, with ``deployed``, on what each method's clients deploy (:func:`deployed_lead_targets`, final round;
    scored in ``jobs`` processes), and its lead grows with heterogeneity (homogeneous -> heavy-tail), each judged
    on its paired interval and NOT TESTABLE where a premise (:func:`preconditions`) FAILED (``horizon``: e.g.
    "24 rounds", names a long-horizon check scored over each run's last ``last`` evaluations; ``command``: the one
    that regenerates the rows)."""
    settings = list(settings)
    scored = "" if last == 1 else f"each run: mean of its last {last} evaluations"
    scale = scale_of(folders)
    rows = [_CLAIM["lead"].row(lead(folders, setting, last).difference, command=command,
                               seeds=len(folders["flame", setting]), run_scale=scale, axis_value=setting,
                               where=", ".join(t for t in (setting, horizon) if t), preconditions=tuple(premises),
                               note="; ".join(t for t in (f"best baseline {best_baseline(folders, setting, last)}",
                                                          scored) if t))
            for setting in settings]
    if {"homogeneous", "heavy-tail"} <= set(settings):
        rows.append(_CLAIM["lead-grows"].row(lead_growth(folders, last=last).difference, command=command,
                                             seeds=len(folders["flame", "heavy-tail"]), run_scale=scale,
                                             where=horizon, preconditions=tuple(premises), note=scored))
    if deployed:
        rows += deployed_lead_targets(folders, settings, premises, command, horizon, jobs, progress)
    return rows


def long_configs(*, scale: str = "default", seeds: Sequence[int] = (0,), overrides: dict[str, Any] | None = None
                 ) -> dict[tuple[str, str], list[RunConfig]]:
    """The long-horizon check: :data:`LONG_METHODS` in :data:`LONG_SETTINGS` for
    :data:`~fedmoe.studies.grid.LONG_FACTOR` times the scale's rounds (run folders ``flame-long-<setting>-...``);
    ``{(method, setting): [config per seed]}``. Judged by :func:`long_targets`."""
    over = {**(overrides or {}), **long_horizon(make_config("flame", "heavy-tail", scale=scale, overrides=overrides))}
    return {(m, s): [make_config(m, s, scale=scale, seed=seed, overrides={**over, "name": f"flame-long-{s}"})
                     for seed in seeds]
            for s in LONG_SETTINGS for m in LONG_METHODS}


def long_targets(folders: dict[tuple[str, str], list[Path]], premises: Sequence[Precondition],
                 deployed: bool = True,
                 jobs: int | None = None, progress: bool = False) -> list[TargetRow]:
    """:func:`targets` judged on the long-horizon check (:func:`run_long`), each run scored over its last
    :data:`~fedmoe.studies.grid.LONG_LAST` evaluations (the deployed protocol: on its final round)."""
    rounds = load_config_dict(folders["flame", LONG_SETTINGS[0]][0])["fed"]["rounds"]
    return targets(folders, LONG_SETTINGS, premises, last=LONG_LAST, horizon=f"{rounds} rounds", command=LONG_COMMAND,
                   deployed=deployed, jobs=jobs, progress=progress)


def run_long(*, out_dir: str | Path, scale: str = "default", seeds: Sequence[int] = (0,),
             overrides: dict[str, Any] | None = None, jobs: int | None = None,
             progress: bool = False) -> dict[tuple[str, str], list[Path]]:
    """Run (or reuse) :func:`long_configs`; ``{(method, setting): [run folder per seed]}``."""
    return run_cells(long_configs(scale=scale, seeds=seeds, overrides=overrides), out_dir=out_dir, jobs=jobs,
                     progress=progress)


def client_budgets(folder: str | Path) -> list[dict[str, Any]]:
    """One row per client that trained in the run: device, tier, top-k, rank and train FLOPs per token
    (mean over the rounds it was sampled in), sorted by client. Empty for FedIT, which has no tiers."""
    rows: dict[int, dict[str, Any]] = {}
    for record in load_rounds(folder):
        for cid, extra in record.get("client_log", {}).items():
            if "tier" not in extra:  # FedIT logs only its rank and train FLOPs
                continue
            row = rows.setdefault(int(cid), {"client": int(cid), "device": record["devices"][cid], "tier": extra["tier"],
                                             "top_k": extra["top_k"], "rank": extra["rank"], "flops": []})
            row["flops"].append(extra["flops_per_token"])
    for row in rows.values():
        flops = row.pop("flops")
        row["flops_per_token"] = sum(flops) / len(flops)
    return [rows[c] for c in sorted(rows)]


def sampling_sizes(cfg: RunConfig, fractions: Iterable[float] = (0.2, 0.5, 1.0)) -> list[int]:
    """Clients per round for the client-sampling sweep: ``fractions`` of the run's clients (at least 1)."""
    return sorted({max(1, round(f * cfg.fed.num_clients)) for f in fractions})


def rescale_trace(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """FLAME's per-tier rescalers after each round, ``{"k2": [(round, mean over MoE layers), ...]}``."""
    trace: dict[str, list[tuple[int, float]]] = {}
    for record in load_rounds(folder):
        for key, value in record.get("server", {}).items():
            if key.startswith("rescale_"):
                trace.setdefault(key[len("rescale_"):], []).append((record["round"], value))
    return trace


def collapse_targets(groups: dict[str, Sequence[Path]], command: str) -> list[TargetRow]:
    """"No collapse" as report rows, one per group of runs (a temperature, a client-sampling level ...): the final
    score minus each seed's best round, paired over seeds and items, must stay above ``-COLLAPSE_TOLERANCE``
    (MET when its whole interval does, FAILED when the whole interval lies below)."""
    scale = scale_of(groups)
    return [_CLAIM["no-collapse"].row(drop_from_best(folders), command=command, seeds=len(folders), run_scale=scale,
                                      where=label) for label, folders in groups.items()]


def rescaler_targets(runs: dict[str, Sequence[Path]], setting: str, command: str) -> list[TargetRow]:
    """The paper's ordering learnable >= fixed >= none as report rows, each a paired difference judged > 0."""
    scale = scale_of(runs)
    return [_CLAIM[f"rescaler-{better}"].row(compare(runs[better], runs[worse]).difference, command=command,
                                             seeds=len(runs[better]), run_scale=scale, where=setting)
            for better, worse in (("learnable", "fixed"), ("fixed", "none"))]


def tier_scores(folder: str | Path) -> dict[str, Any]:
    """A finished FLAME run's per-tier models (:meth:`FlameServer.deployed_models`: the global LoRA at the tier's
    own top-k, through its rescaler) scored on the global test set: ``{"tiers": {tier: {"top_k", "score",
    "item_scores"}}}`` for every tier of the run's fleet whose rescaler exists (tiers sharing a model share its
    evaluation); cached in ``<folder>/tier_scores.json``."""
    def compute() -> dict[str, Any]:
        cfg, fed, server = final_server(folder, "flame")
        tiers = {}
        for group in server.deployed_models():
            first = group.clients[0]
            if not group.same_as_global and server.args.rescaler != "none" and server.rescale_of(first) is None:
                continue  # no client of this tier was ever sampled: its rescaler is unknown
            names = sorted({str(server.budget(c).tier) for c in group.clients}, key=int)
            if set(names) & set(tiers):
                raise ValueError(f"{folder}: clients of tier {sorted(set(names) & set(tiers))} deploy different "
                                 "models (rescaler_scope='client'); score them with "
                                 "fedmoe.studies.deployed.deployed_scores")
            scores = evaluate_on(cfg, fed, group.model, fed.test_set)
            for tier in names:
                tiers[tier] = {"top_k": server.budget(first).top_k, "score": scores["score"],
                               "item_scores": scores["item_scores"]}
        return {"tiers": tiers}

    return cached_json(Path(folder) / TIER_SCORES_FILE, compute)


def _tier_items(runs: Sequence[Path], jobs: int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Per-item scores ``[seed, item]`` of each tier's own-top-k model (:func:`tier_scores`), runs sorted by seed,
    keyed ``"tier 1 (top-2)"``; tiers that did not train in every seed's run are left out (``progress``: a bar
    over the runs still to score)."""
    compute_all(tier_scores, runs, TIER_SCORES_FILE, jobs, progress)
    per_run = [tier_scores(f)["tiers"] for f in by_seed(runs).values()]
    return {f"tier {tier} (top-{per_run[0][tier]['top_k']})": np.array([t[tier]["item_scores"] for t in per_run])
            for tier in sorted(set.intersection(*(set(t) for t in per_run)), key=int)}


def tier_table(runs: Sequence[Path], jobs: int | None = None, progress: bool = False) -> dict[str, Interval]:
    """FLAME's global model and each tier's own-top-k model over seeds (``"global"``, ``"tier 1 (top-2)"``), and
    each tier model minus the global model paired over seeds and items (``"tier 1 (top-2) - global"``). Tiers
    that did not train in every seed's run are left out; runs not yet scored are scored in ``jobs`` processes
    (``progress``: a bar over them)."""
    runs = list(by_seed(runs).values())
    table = {"global": score_interval(runs)}
    for name, items in _tier_items(runs, jobs, progress).items():
        table[name] = mean_ci(items.mean(axis=1).tolist())
        table[f"{name} - global"] = paired_difference(items, np.stack([item_scores(f) for f in runs]))
    return table


def deployed_targets(flame_runs: Sequence[Path], baseline_runs: Sequence[Path], baseline: str, setting: str,
                     horizon: str, command: str, jobs: int | None = None, progress: bool = False
                     ) -> list[TargetRow]:
    """Where a gap of FLAME's global model comes from, as report rows (the kit's diagnostic, not a paper claim).

    The global model is scored at the model's full top-k, but a weak-tier client trains (and would deploy) the
    global LoRA at its own top-k_i through its rescaler. Per weak tier, on each run's final model, paired over
    seeds and items: the tier's own model minus FLAME's global model (above 0: the global score understates what
    that tier's clients trained, a train/deploy top-k mismatch rather than a failed aggregation), and the tier's
    model minus ``baseline``'s global model (what is left of the gap once each tier runs its own top-k).
    ``progress``: a bar over the FLAME runs whose tier models are still to score."""
    pairs = paired_by_seed(flame_runs, baseline_runs, what=f"deployed_targets pairing FLAME with {baseline}")
    flame_runs = [f for _, f, _ in pairs]
    references = {"FLAME's global model (full top-k)": flame_runs, f"{baseline}'s global model": [b for *_, b in pairs]}
    rows, scale = [], scale_of(references)
    for name, items in _tier_items(flame_runs, jobs, progress).items():
        if name.startswith("tier 0 "):  # tier 0 runs the full top-k: its model is the global model
            continue
        for label, runs in references.items():
            diff = paired_difference(items, np.stack([item_scores(f) for f in runs]))
            rows.append(_CLAIM["tier-model"].row(diff, command=command, seeds=len(flame_runs), run_scale=scale,
                                                 where=f"{name} vs {label}, {setting}, {horizon}"))
    return rows


def _premises(scale: str, seeds: Sequence[int], out_dir: str | Path, jobs: int | None, progress: bool
              ) -> dict[str, Comparison]:
    return premise_comparisons(out_dir=out_dir, scale=scale, seeds=seeds, jobs=jobs, progress=progress)


def study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, jobs: int | None = None,
          progress: bool = True) -> Outcome:
    """The compute-settings study (report section ``flame``): the premise, then FLAME's lead in every setting."""
    folders = run_grid(METHODS, SETTINGS, out_dir=out_dir, scale=scale, seeds=seeds, jobs=jobs, progress=progress)
    pre = _premises(scale, seeds, out_dir, jobs, progress)
    rows = [*precondition_rows(pre, len(seeds)),
            *targets(folders, SETTINGS, preconditions(pre), jobs=jobs, progress=progress)]
    return Outcome("flame", rows, [head_to_head_row(m, folders[m, "uniform"]) for m in METHODS],
                   [score_lines(folders, list(SETTINGS), METHODS, seeds)])


def long_study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, jobs: int | None = None,
               progress: bool = True) -> Outcome:
    """The long-horizon check (report section ``flame-long``): FLAME's claims at 3x the rounds and each weak
    tier's own model against both global models."""
    long = run_long(out_dir=out_dir, scale=scale, seeds=seeds, jobs=jobs, progress=progress)
    rows = long_targets(long, preconditions(_premises(scale, seeds, out_dir, jobs, progress)), jobs=jobs,
                        progress=progress)
    rounds = load_config_dict(long["flame", "heavy-tail"][0])["fed"]["rounds"]
    best = best_baseline(long, "heavy-tail", LONG_LAST)
    rows += deployed_targets(long["flame", "heavy-tail"], long[best, "heavy-tail"], best, "heavy-tail",
                             f"{rounds} rounds", LONG_COMMAND, jobs=jobs, progress=progress)
    return Outcome("flame-long", rows, [], [score_lines(long, LONG_SETTINGS, LONG_METHODS, seeds)])


def granularity_study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, jobs: int | None = None,
                      progress: bool = True) -> Outcome:
    """The top-k premise mapped over expert granularity (report section ``flame-granularity``): where FLAME's
    mechanism can show at all. At any other scale than default the one model is the scale's own."""
    rows, lines = [], []
    for zoo in GRANULARITIES if scale == "default" else (None,):
        over = {"model.scale": zoo} if zoo else None
        pre = premise_comparisons(out_dir=out_dir, scale=scale, seeds=seeds, overrides=over, jobs=jobs,
                                  progress=progress)
        name = zoo or scale
        rows.append(_CLAIM["top-k-cheaper-by-granularity"].row(
            pre["top-k-cheaper"].difference, command=GRANULARITY_COMMAND, seeds=len(seeds),
            run_scale=pre["top-k-cheaper"].run_scale, axis_value=name, where=name))
        lines.append(f"{name:<14} rank costs {pre['rank-costs'].difference.format()}  "
                     f"fewer experts minus lower rank {pre['top-k-cheaper'].difference.format()}")
    return Outcome("flame-granularity", rows, [], ["FLAME's premises by zoo model (points, paired)\n"
                                                   + "\n".join(lines)])

"""The FFT-MoE study: FFT-MoE against FedIT and HetLoRA at matched trainable parameters, over data splits and
seeds, with its auxiliary-loss ablation and its top-K heterogeneity sweep.

Shared by ``notebooks/fftmoe`` and ``python -m fedmoe.studies fftmoe``. The grid is one dict of *cells*
``(variant, split) -> [run config per seed]``, run with one :func:`~fedmoe.studies.grid.run_cells` call:

- every method of :data:`METHODS` on every split of :data:`SPLITS` (IID, Dirichlet alpha 10 / 1 / 0.3 / 0.1,
  pathological);
- ``fftmoe-noaux`` (auxiliary loss off) on :data:`AUX_SPLITS`; the aux-on runs are the main grid's;
- ``fftmoe-k<K>`` (every client tier 0 at ``top_k = K``) for K in :data:`K_VALUES` on :data:`K_SPLIT`; the
  mixed-tier runs (K by the device's compute tier) are the main grid's ``fftmoe`` on that split.

Budgets are matched, not claimed: both LoRA baselines hold the same global rank-8 LoRA (experts and q/v) and
FFT-MoE's expert width ``b`` is :func:`~fedmoe.methods.fftmoe.budget.bottleneck_for_budget` of FedIT's
trainable parameters on the trained architecture (:func:`matched_bottleneck`).

Targets (README of the method, issue text): FFT-MoE at least matches the best baseline on every split (a paired
difference above -5 points, the resolution the kit's test sets are sized for) and leads under alpha <= 0.3; its
non-IID retention (score at alpha 0.1 / IID score, per seed) is higher than each baseline's; the auxiliary loss
lowers the coefficient of variation of expert load without lowering the score by more than 5 points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import fedmoe
from fedmoe.config import RunConfig, from_dict, load_config, validate
from fedmoe.report import DEPLOYED, GLOBAL, MECHANISM, HeadToHeadRow, TargetRow
from fedmoe.results import load_config_dict, load_rounds
from fedmoe.stats import Goal, Interval, mean_ci
from fedmoe.studies.claims import OURS, Claim, claims_by_key
from fedmoe.studies.deployed import score_deployed
from fedmoe.studies.evidence import (
    Comparison,
    best_by_mean,
    compare,
    head_to_head_row,
    paired_by_seed,
    run_score,
    scale_of,
    score_interval,
    score_lines,
)
from fedmoe.studies.grid import LONG_LAST, long_horizon, run_cells, with_seeds
from fedmoe.studies.registry import Outcome
from fedmoe.studies.reload import cached_json, compute_all, evaluate_on, final_server
from fedmoe.studies.tuning import TuningResult, tune

CONFIG = Path(fedmoe.__file__).resolve().parents[1] / "reproduce" / "configs" / "fftmoe.yaml"
COMMAND = "python -m fedmoe.studies fftmoe  (or notebooks/fftmoe/01_noniid.ipynb)"
LONG_COMMAND = "python -m fedmoe.studies fftmoe-long  (or notebooks/fftmoe/03_long_horizon.ipynb)"
PAPER = "FFT-MoE"

METHOD = "fftmoe"
BASELINES = ("fedit", "hetlora")
METHODS = (METHOD, *BASELINES)
#: The baselines' options: one global rank-8 LoRA on the experts and the q/v projections (HetLoRA: rank by tier).
BASELINE_ARGS: dict[str, dict[str, Any]] = {
    "fedit": {"rank": 8, "alpha": 16.0, "attention": True},
    "hetlora": {"rank": 8, "alpha": 16.0, "attention": True},
}
#: Split name -> config overrides (the partition of the training data over clients).
SPLITS: dict[str, dict[str, Any]] = {
    "iid": {"data.partition": "iid"},
    "alpha10": {"data.partition": "dirichlet", "data.alpha": 10.0},
    "alpha1": {"data.partition": "dirichlet", "data.alpha": 1.0},
    "alpha0.3": {"data.partition": "dirichlet", "data.alpha": 0.3},
    "alpha0.1": {"data.partition": "dirichlet", "data.alpha": 0.1},
    "pathological": {"data.partition": "pathological"},
}
#: Splits where FFT-MoE must lead (the paper's non-IID claim: alpha <= 0.3).
LEAD_SPLITS = ("alpha0.3", "alpha0.1")
IID_SPLIT, NONIID_SPLIT = "iid", "alpha0.1"
AUX_SPLITS = ("iid", "alpha0.1")
#: The long-horizon check's splits: IID (for retention) and the splits of the non-IID claim.
LONG_SPLITS = (IID_SPLIT, *LEAD_SPLITS)
K_SPLIT = "alpha1"
K_VALUES = (1, 2, 4)
#: The one tuned setting, declared before any run: every method gets the same learning-rate grid, chosen by its
#: validation score on the head-to-head split (data.n_val items carved from the training data, per scale in the
#: YAML), on TUNING_SEEDS (the first run seed: tuning costs 9 runs, not 27).
TUNING_GRID = {"fed.lr": (3e-3, 1e-2, 3e-2)}
TUNING_SEEDS = (0,)
#: The split whose runs stand for the study in the report's head-to-head table.
HEAD_TO_HEAD_SPLIT = "alpha1"
NO_AUX = "fftmoe-noaux"
#: "Matches" margin: a paired difference above -5 points (what the kit's test sets are sized to resolve).
MATCH_MARGIN = -0.05
PERSONALISED_FILE = "personalised.json"
_SCORE = "final score of the global adapter at the tier-0 K, points"
#: FFT-MoE's claims, declared before any run (sources: the abstract, as summarised in docs/papers.md).
CLAIMS = (
    Claim("match", "FFT-MoE", "FFT-MoE matches the best baseline", "abstract", _SCORE,
          "FFT-MoE - the baseline with the best mean score on the split, paired over seeds and test items",
          Goal(">", MATCH_MARGIN), GLOBAL, axis="data split"),
    Claim("lead-noniid", "FFT-MoE", "FFT-MoE leads the best baseline", "abstract (non-IID data)", _SCORE,
          "FFT-MoE - the baseline with the best mean score on the split, paired over seeds and test items",
          Goal(">", 0.0), GLOBAL, axis="data split"),
    Claim("match-deployed", "FFT-MoE", "FFT-MoE matches the best baseline on what clients deploy", "abstract "
          "(clients activate a personalised subset of experts)", "|D_i|-weighted mean of the clients' deployed models' "
          "scores, points", "FFT-MoE (each client's router and K_n) - the baseline with the best mean deployed score "
          "(HetLoRA's rank-r_i copies, FedIT's global), paired over seeds and test items", Goal(">", MATCH_MARGIN),
          DEPLOYED, axis="data split"),
    Claim("lead-noniid-deployed", "FFT-MoE", "FFT-MoE leads the best baseline on what clients deploy",
          "abstract (non-IID data)", "|D_i|-weighted mean of the clients' deployed models' scores, points",
          "as match-deployed", Goal(">", 0.0), DEPLOYED, axis="data split"),
    Claim("retention", "FFT-MoE", "non-IID retention above the baseline's", "abstract (non-IID data)",
          "score(alpha 0.1) / score(IID) of each run's seed", "FFT-MoE minus the baseline, paired by seed",
          Goal(">", 0.0, "value", 3), GLOBAL),
    Claim("aux-cv", "FFT-MoE", "auxiliary loss lowers the expert-load CV", "abstract (heterogeneity-aware auxiliary "
          "loss)", "coefficient of variation of the expert load", "CV(aux off) - CV(aux on), paired by seed",
          Goal(">", 0.0, "value", 3), MECHANISM),
    Claim("aux-score", "FFT-MoE", "auxiliary loss does not lower the score", OURS, _SCORE,
          "aux on - aux off, paired over seeds and test items", Goal(">", MATCH_MARGIN), GLOBAL, axis="data split"),
)
_CLAIM = claims_by_key(CLAIMS)

Cell = tuple[str, str]  # (variant, split)


def k_variant(k: int) -> str:
    """The variant name of the K sweep's run with every client at ``top_k = k``."""
    return f"fftmoe-k{k}"


def split_key(split: str) -> str:
    """A split's name as it appears in ``key value`` lines (``alpha0.3`` -> ``alpha0_3``)."""
    return split.replace(".", "_")


# ------------------------------------------------------------------------------------------------ budgets


def base_architecture(cfg: RunConfig):
    """The HF config of ``cfg``'s base model, without loading or pretraining it (zoo: the scale's architecture;
    ``model.path``: the checkpoint's ``config.json``)."""
    if cfg.model.path:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(cfg.model.path)
    from fedmoe.moe.families import tiny_config
    from fedmoe.moe.zoo import SCALES, ZOO

    return tiny_config(ZOO[cfg.model.name], **SCALES[cfg.model.scale].model_kwargs())


def matched_bottleneck(cfg: RunConfig, num_experts: int) -> tuple[int, int]:
    """``(b, fedit_params)``: FedIT's trainable parameters on ``cfg``'s architecture and the FFT-MoE expert width
    whose adapter comes closest to them."""
    from fedmoe.fl.pricing import lora_params
    from fedmoe.methods.fftmoe.budget import bottleneck_for_budget

    arch = base_architecture(cfg)
    fedit = BASELINE_ARGS["fedit"]
    params = lora_params(arch, fedit["rank"], attention=fedit["attention"]).total
    return bottleneck_for_budget(arch, num_experts, params), params


def methods_args(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """``{method: method_args}`` of the three methods at an FFT-MoE ``cfg`` (FFT-MoE budget-matched), for
    :func:`fedmoe.methods.fftmoe.budget.budget_table`."""
    return {METHOD: fftmoe_args(cfg), **{m: dict(a) for m, a in BASELINE_ARGS.items()}}


def fftmoe_args(cfg: RunConfig) -> dict[str, Any]:
    """FFT-MoE's options at an FFT-MoE ``cfg``: its own, with the budget-matched bottleneck."""
    if cfg.method != METHOD:
        raise ValueError(f"fftmoe_args needs an FFT-MoE config (method: fftmoe), got method {cfg.method!r}")
    args = dict(cfg.method_args)
    args["bottleneck"] = matched_bottleneck(cfg, int(args.get("num_experts", 8)))[0]
    return args


def trainable_params(cfg: RunConfig) -> int:
    """Trainable parameters a run's method stores and sends (the global adapter), on its trained architecture."""
    from fedmoe.fl.pricing import lora_params
    from fedmoe.methods.fftmoe.budget import adapter_params

    arch, args = base_architecture(cfg), cfg.method_args
    if cfg.method == METHOD:
        return adapter_params(arch, args.get("num_experts", 8), args.get("bottleneck", 16), 1).total
    return lora_params(arch, args["rank"], attention=args["attention"]).total


# -------------------------------------------------------------------------------------------------- grid


def _base(scale: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    return load_config(CONFIG, {**(overrides or {}), "method": METHOD}, scale=scale)


def base_method(variant: str) -> str:
    """The method a grid variant runs (the aux ablation and the K sweep are FFT-MoE)."""
    return variant if variant in METHODS else METHOD


def cell_config(variant: str, split: str, scale: str, overrides: dict[str, Any] | None = None,
                chosen: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """The run config of one grid cell (seed 0; :func:`~fedmoe.studies.grid.with_seeds` sets the seed), with
    its method's tuned values (``chosen``: :attr:`~fedmoe.studies.tuning.TuningResult.chosen`; None: untuned)."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    tuned = (chosen or {}).get(base_method(variant), {})
    cfg = _base(scale, {**(overrides or {}), **SPLITS[split], **tuned, "name": f"fftmoe-{split}"})
    if variant in BASELINES:
        return validate(replace(cfg, method=variant, method_args=dict(BASELINE_ARGS[variant])))
    args = fftmoe_args(cfg)
    if variant == NO_AUX:
        args["aux_loss"] = False
    elif variant.startswith("fftmoe-k"):
        args.update(top_k=int(variant.removeprefix("fftmoe-k")), tiers=[0] * cfg.fed.num_clients)
    elif variant != METHOD:
        raise KeyError(f"unknown variant {variant!r}; use {METHODS}, {NO_AUX!r} or fftmoe-k<K>")
    return validate(replace(cfg, method_args=args))


def cells() -> list[Cell]:
    """Every ``(variant, split)`` of the study, in run order (main grid, aux ablation, K sweep)."""
    out = [(m, s) for s in SPLITS for m in METHODS]
    out += [(NO_AUX, s) for s in AUX_SPLITS]
    out += [(k_variant(k), K_SPLIT) for k in K_VALUES]
    return out


def configs(scale: str, seeds: Sequence[int], overrides: dict[str, Any] | None = None,
            chosen: dict[str, dict[str, Any]] | None = None) -> dict[Cell, list[RunConfig]]:
    """``{(variant, split): [config per seed]}`` of the whole study at ``scale`` (``chosen``: the tuned values)."""
    return {cell: with_seeds([cell_config(*cell, scale, overrides, chosen)], seeds) for cell in cells()}


def tuning(scale: str, *, out_dir: str | Path, overrides: dict[str, Any] | None = None, jobs: int | None = None,
           progress: bool = True) -> TuningResult:
    """Every method tuned on :data:`TUNING_GRID` (the same values for all, declared before any run) on the
    head-to-head split's validation items (``data.n_val``, carved from the training data; the test items are never
    read), over :data:`TUNING_SEEDS`; finished tuning runs are reused."""
    cfgs = {m: cell_config(m, HEAD_TO_HEAD_SPLIT, scale, overrides) for m in METHODS}
    return tune(cfgs, TUNING_GRID, out_dir=out_dir, seeds=TUNING_SEEDS, jobs=jobs, progress=progress)


def tuning_table(result: TuningResult) -> str:
    """The tuning runs as printable lines: every method's validation score at every grid point, its choice
    starred."""
    return "\n".join(f"{r['method']:<8} " + " ".join(f"{k}={r[k]:g}" for k in TUNING_GRID)
                     + f"  val {100 * r['val_score']:.1f}" + ("  *" if r["chosen"] else "") for r in result.table())


def lr_note(folders: dict[Cell, list[Path]], split: str) -> str:
    """Each method's learning rate on ``split``, read from its runs (the tuned values), for a row's note."""
    return "lr " + ", ".join(f"{m} {load_config_dict(runs[0])['fed']['lr']:g}"
                             for m, runs in by_method(folders, split).items())


def run_study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, overrides: dict[str, Any] | None = None,
              jobs: int | None = None, progress: bool = True) -> dict[Cell, list[Path]]:
    """Tune (:func:`tuning`), then run (or reuse) the whole grid at the chosen values in one parallel call;
    ``{(variant, split): [run folder per seed]}``."""
    chosen = tuning(scale, out_dir=out_dir, overrides=overrides, jobs=jobs, progress=progress).chosen
    return run_cells(configs(scale, seeds, overrides, chosen), out_dir=out_dir, jobs=jobs, progress=progress)


def long_configs(scale: str, seeds: Sequence[int], overrides: dict[str, Any] | None = None,
                 chosen: dict[str, dict[str, Any]] | None = None) -> dict[Cell, list[RunConfig]]:
    """The long-horizon check: every method of :data:`METHODS` on :data:`LONG_SPLITS` for
    :data:`~fedmoe.studies.grid.LONG_FACTOR` times the scale's rounds (run folders ``fftmoe-long-<split>-...``),
    at the tuned values ``chosen``."""
    over = {**(overrides or {}), **long_horizon(_base(scale, overrides))}
    return {(m, s): with_seeds([replace(cell_config(m, s, scale, over, chosen), name=f"fftmoe-long-{s}")], seeds)
            for s in LONG_SPLITS for m in METHODS}


def run_long(scale: str, seeds: Sequence[int], *, out_dir: str | Path, overrides: dict[str, Any] | None = None,
             jobs: int | None = None, progress: bool = True) -> dict[Cell, list[Path]]:
    """Tune (the study's own tuning runs, reused), then run (or reuse) the long-horizon check at the chosen values;
    ``{(method, split): [run folder per seed]}``."""
    chosen = tuning(scale, out_dir=out_dir, overrides=overrides, jobs=jobs, progress=progress).chosen
    return run_cells(long_configs(scale, seeds, overrides, chosen), out_dir=out_dir, jobs=jobs, progress=progress)


def by_method(folders: dict[Cell, list[Path]], split: str) -> dict[str, list[Path]]:
    """``{method: runs}`` of the main grid on one split."""
    return {m: folders[m, split] for m in METHODS}


# ---------------------------------------------------------------------------------------------- results


def score_table(folders: dict[Cell, list[Path]], splits: Sequence[str] = tuple(SPLITS), last: int = 1
                ) -> dict[str, dict[str, Interval]]:
    """``{split: {method: score over seeds}}`` of the global model (each run: mean of its last ``last``
    evaluations)."""
    return {s: {m: score_interval(runs, last) for m, runs in by_method(folders, s).items()} for s in splits}


def versus_best_baseline(folders: dict[Cell, list[Path]], split: str, last: int = 1) -> tuple[str, Comparison]:
    """``(best baseline, FFT-MoE - best baseline)`` on ``split``: the baseline with the highest mean score, and
    the paired difference over the same seeds and test items (runs scored over their last ``last`` evaluations)."""
    runs = by_method(folders, split)
    best = best_by_mean({m: runs[m] for m in BASELINES}, last)
    return best, compare(runs[METHOD], runs[best], last)


def retention_per_seed(noniid: Sequence[Path], iid: Sequence[Path], last: int = 1) -> list[float]:
    """Score at the non-IID split / score IID, for each seed (the two runs of a seed paired; each scored over its
    last ``last`` evaluations); nan for a seed whose IID run scores 0 (its retention is undefined)."""
    ratios = []
    for _, hard, easy in paired_by_seed(noniid, iid, what="retention"):
        base = run_score(easy, last)
        ratios.append(run_score(hard, last) / base if base > 0 else math.nan)
    return ratios


def mean_ci_defined(values: Sequence[float]) -> Interval:
    """:func:`~fedmoe.stats.mean_ci` over the defined (non-nan) values; with none, an undefined interval (nan
    mean and bounds), which no target can pass or fail."""
    defined = [v for v in values if not math.isnan(v)]
    return mean_ci(defined) if defined else Interval(math.nan, math.nan, math.nan, max(len(values), 1))


def retention(folders: dict[Cell, list[Path]], method: str, last: int = 1) -> Interval:
    """Non-IID retention of ``method``: score at alpha 0.1 / IID score, per seed, then its mean and interval
    (seeds with an undefined ratio left out)."""
    return mean_ci_defined(retention_per_seed(folders[method, NONIID_SPLIT], folders[method, IID_SPLIT], last))


def retention_lead(folders: dict[Cell, list[Path]], baseline: str, last: int = 1) -> Interval:
    """FFT-MoE's retention minus ``baseline``'s, paired by seed (each seed's two ratios differenced)."""
    ours = retention_per_seed(folders[METHOD, NONIID_SPLIT], folders[METHOD, IID_SPLIT], last)
    theirs = retention_per_seed(folders[baseline, NONIID_SPLIT], folders[baseline, IID_SPLIT], last)
    return mean_ci_defined(list(np.subtract(ours, theirs)))


def run_load_cv(folder: str | Path) -> float:
    """Mean coefficient of variation of expert load over the client updates of the second half of the run's
    rounds (each update's ``load_cv``: std/mean of its adapter's per-expert token counts, mean over layers)."""
    rounds = [r for r in load_rounds(folder) if r.get("client_log")]
    if not rounds:
        raise ValueError(f"{folder} holds no client diagnostics; is it an FFT-MoE run folder?")
    late = rounds[len(rounds) // 2:]
    values = [extra["load_cv"] for r in late for extra in r["client_log"].values()]
    return float(np.mean(values))


def cv_reduction_per_seed(aux_off: Sequence[Path], aux_on: Sequence[Path]) -> list[float]:
    """Load CV without the auxiliary loss minus with it, per seed (positive: the loss balances the experts)."""
    return [run_load_cv(off) - run_load_cv(on) for _, off, on in paired_by_seed(aux_off, aux_on, what="the load CV")]


def aux_cv_reduction(folders: dict[Cell, list[Path]], splits: Sequence[str] = AUX_SPLITS) -> Interval:
    """CV(aux off) - CV(aux on), one pair per (split, seed), pooled over ``splits``: mean and interval."""
    return mean_ci([d for s in splits for d in cv_reduction_per_seed(folders[NO_AUX, s], folders[METHOD, s])])


def load_cv_table(folders: dict[Cell, list[Path]]) -> dict[str, dict[str, Interval]]:
    """``{split: {"aux on" | "aux off": load CV over seeds}}`` on the aux-ablation splits."""
    return {s: {"aux on": mean_ci([run_load_cv(f) for f in folders[METHOD, s]]),
                "aux off": mean_ci([run_load_cv(f) for f in folders[NO_AUX, s]])} for s in AUX_SPLITS}


def client_loads(folder: str | Path) -> dict[int, np.ndarray]:
    """``{client: share of its adapter's routed tokens per expert}`` from the last round each client trained
    in (counts summed over layers, normalised to 1)."""
    loads = {}
    for record in load_rounds(folder):
        for client, extra in record.get("client_log", {}).items():
            counts = np.asarray(extra["adapter_load"], dtype=float).sum(axis=0)
            loads[int(client)] = counts / max(counts.sum(), 1.0)
    return dict(sorted(loads.items()))


def k_sweep(folders: dict[Cell, list[Path]]) -> dict[str, Interval]:
    """``{label: score over seeds}``: every client at K for each K of the sweep, then the mixed tiers."""
    out = {f"all K={k}": score_interval(folders[k_variant(k), K_SPLIT]) for k in K_VALUES}
    out["mixed tiers"] = score_interval(folders[METHOD, K_SPLIT])
    return out


# ---------------------------------------------------------------------------------- personalised evaluation


def personalised_scores(folder: str | Path) -> dict[str, Any]:
    """Each client's personalised model on its own local test split, beside the global model on the same split.

    Re-opens the finished run (:func:`~fedmoe.studies.reload.final_server`) and scores FFT-MoE's
    ``personalised_models()`` on ``Federation.client_test_data``; cached in ``<folder>/personalised.json``.
    Returns ``{"personalised", "global"}`` (the mean over clients with test items of each client's local score)
    and ``"clients": {client: {"n", "personalised", "global"}}``.
    """
    def compute() -> dict[str, Any]:
        cfg, fed, method = final_server(folder, METHOD)

        def score(model, examples) -> float:
            return evaluate_on(cfg, fed, model, examples)["score"]

        clients = {}
        for client, model in method.personalised_models():
            examples = fed.client_test_data(client)
            if examples:
                clients[str(client)] = {"n": len(examples), "personalised": score(model, examples)}
        global_model = method.eval_model()
        for client, row in clients.items():
            row["global"] = score(global_model, fed.client_test_data(int(client)))
        return {"personalised": float(np.mean([r["personalised"] for r in clients.values()])),
                "global": float(np.mean([r["global"] for r in clients.values()])), "clients": clients}

    return cached_json(Path(folder) / PERSONALISED_FILE, compute)


def personalised_table(folders: dict[Cell, list[Path]], splits: Sequence[str] = tuple(SPLITS),
                       jobs: int | None = None, progress: bool = False) -> dict[str, dict[str, Interval]]:
    """``{split: {"personalised", "global", "personalised - global"}}``: FFT-MoE's mean local-test score per
    client over seeds, both ways, and their paired difference (per seed); runs not yet scored are scored in
    ``jobs`` parallel processes (``progress``: a bar over them)."""
    compute_all(personalised_scores, [f for split in splits for f in folders[METHOD, split]], PERSONALISED_FILE, jobs,
                progress)
    out = {}
    for split in splits:
        rows = [personalised_scores(f) for f in folders[METHOD, split]]
        out[split] = {"personalised": mean_ci([r["personalised"] for r in rows]),
                      "global": mean_ci([r["global"] for r in rows]),
                      "personalised - global": mean_ci([r["personalised"] - r["global"] for r in rows])}
    return out


# ------------------------------------------------------------------------------------------ targets, report


def _score_targets(folders: dict[Cell, list[Path]], splits: Sequence[str], last: int = 1, horizon: str = "",
                   command: str = COMMAND) -> list[TargetRow]:
    """The split and retention targets on ``splits`` (``horizon``: e.g. "18 rounds", names a long-horizon check;
    ``command``: the one that regenerates the rows)."""
    seeds = len(folders[METHOD, IID_SPLIT])
    scored = "" if last == 1 else f"each run: mean of its last {last} evaluations"
    common = {"command": command, "seeds": seeds, "run_scale": scale_of(folders)}
    rows = []
    for split in splits:
        best, comparison = versus_best_baseline(folders, split, last)
        claim = _CLAIM["lead-noniid" if split in LEAD_SPLITS else "match"]
        rows.append(claim.row(comparison.difference, **common, axis_value=split,
                              where=", ".join(t for t in (split, horizon) if t),
                              note="; ".join(t for t in (f"best baseline {best}", lr_note(folders, split), scored)
                                             if t)))
    for baseline in BASELINES:
        rows.append(_CLAIM["retention"].row(retention_lead(folders, baseline, last), **common,
                                            where=", ".join(t for t in (baseline, horizon) if t),
                                            note=scored))
    return rows


def long_targets(folders: dict[Cell, list[Path]]) -> list[TargetRow]:
    """The split and retention targets judged on the long-horizon check (:func:`run_long`)."""
    rounds = load_config_dict(folders[METHOD, IID_SPLIT][0])["fed"]["rounds"]
    return _score_targets(folders, LONG_SPLITS, LONG_LAST, horizon=f"{rounds} rounds", command=LONG_COMMAND)


def deployed_targets(folders: dict[Cell, list[Path]], splits: Sequence[str] = tuple(SPLITS),
                     jobs: int | None = None, progress: bool = False) -> list[TargetRow]:
    """The split claims under the deployed protocol: every method scored on what its clients deploy (FFT-MoE's
    personal router and K_n, HetLoRA's rank-r_i copy, FedIT's global adapter), final round, the best baseline
    chosen by its mean deployed score, paired over seeds and items (runs scored in ``jobs`` processes)."""
    score_deployed([f for split in splits for runs in by_method(folders, split).values() for f in runs], jobs,
                   progress)
    common = {"command": COMMAND, "seeds": len(folders[METHOD, IID_SPLIT]), "run_scale": scale_of(folders)}
    rows = []
    for split in splits:
        runs = by_method(folders, split)
        best = best_by_mean({m: runs[m] for m in BASELINES}, protocol=DEPLOYED)
        claim = _CLAIM["lead-noniid-deployed" if split in LEAD_SPLITS else "match-deployed"]
        rows.append(claim.row(compare(runs[METHOD], runs[best], protocol=DEPLOYED).difference, **common,
                              axis_value=split, where=split, note=f"best baseline {best}"))
    return rows


def targets(folders: dict[Cell, list[Path]], deployed: bool = True, jobs: int | None = None,
            progress: bool = False) -> list[TargetRow]:
    """The study's claims, judged on intervals: the split, retention and auxiliary-loss claims on the global
    adapter and, with ``deployed``, the split claims on what each client deploys (:func:`deployed_targets`)."""
    common = {"command": COMMAND, "seeds": len(folders[METHOD, IID_SPLIT]), "run_scale": scale_of(folders)}
    rows = _score_targets(folders, tuple(SPLITS))
    reduction = aux_cv_reduction(folders)
    rows.append(_CLAIM["aux-cv"].row(reduction, **common, note=f"{reduction.n} pairs pooled over "
                                                                f"{', '.join(AUX_SPLITS)}"))
    rows += [_CLAIM["aux-score"].row(compare(folders[METHOD, split], folders[NO_AUX, split]).difference, **common,
                                     axis_value=split, where=split) for split in AUX_SPLITS]
    return rows + (deployed_targets(folders, jobs=jobs, progress=progress) if deployed else [])


def attention_control(scale: str, seeds: Sequence[int], *, out_dir: str | Path, folders: dict[Cell, list[Path]],
                      overrides: dict[str, Any] | None = None, jobs: int | None = None,
                      progress: bool = False) -> dict[str, Comparison]:
    """Does the suite need attention adaptation, which FFT-MoE (beside the feed-forward blocks only, as the paper
    describes) never gets? FedIT is run again with its LoRA on the experts only (no q/v), on the head-to-head split
    and the same seeds: ``{"fedit_attention_gain": FedIT - FedIT without attention,
    "fedit_no_attention_minus_fftmoe": ...}``, paired over seeds and test items. A large attention gain with FedIT
    without attention near FFT-MoE means a gap to FedIT is the suite's, not the adapters'; the second difference
    compares the two ways of adapting the feed-forward side."""
    base = from_dict(load_config_dict(by_method(folders, HEAD_TO_HEAD_SPLIT)["fedit"][0]))  # at its tuned values
    no_attention = replace(base, method_args={**base.method_args, "attention": False},
                           name=f"fftmoe-{HEAD_TO_HEAD_SPLIT}-noattention")
    control = run_cells({"control": with_seeds([no_attention], seeds)}, out_dir=out_dir, jobs=jobs,
                        progress=progress)["control"]
    methods = by_method(folders, HEAD_TO_HEAD_SPLIT)
    return {"fedit_attention_gain": compare(methods["fedit"], control),
            "fedit_no_attention_minus_fftmoe": compare(control, methods[METHOD])}


def head_to_head(folders: dict[Cell, list[Path]]) -> list[HeadToHeadRow]:
    """Every method's line in the report's head-to-head table, on :data:`HEAD_TO_HEAD_SPLIT`."""
    rows = []
    for method, runs in by_method(folders, HEAD_TO_HEAD_SPLIT).items():
        row = head_to_head_row(method, runs)
        cfg = from_dict(load_config_dict(runs[0]))
        rows.append(replace(row, columns={**row.columns, "trainable params": trainable_params(cfg)}))
    return rows


def study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, jobs: int | None = None,
          progress: bool = True) -> Outcome:
    """The split study (report section ``fftmoe``) with the attention control beside it."""
    tuned = tuning(scale, out_dir=out_dir, jobs=jobs, progress=progress)
    folders = run_study(scale, seeds, out_dir=out_dir, jobs=jobs, progress=progress)
    control = attention_control(scale, seeds, out_dir=out_dir, folders=folders, jobs=jobs, progress=progress)
    lines = "\n".join(f"{name} {c.difference.format()} points ({c.verdict})" for name, c in control.items())
    return Outcome("fftmoe", targets(folders, jobs=jobs, progress=progress), head_to_head(folders),
                   [f"Tuning on the validation split ({HEAD_TO_HEAD_SPLIT}; * chosen)\n{tuning_table(tuned)}",
                    score_lines(folders, list(SPLITS), METHODS, seeds), f"Attention control ({HEAD_TO_HEAD_SPLIT}, paired)\n{lines}"])


def long_study(scale: str, seeds: Sequence[int], *, out_dir: str | Path, jobs: int | None = None,
               progress: bool = True) -> Outcome:
    """The long-horizon check (report section ``fftmoe-long``)."""
    long = run_long(scale, seeds, out_dir=out_dir, jobs=jobs, progress=progress)
    return Outcome("fftmoe-long", long_targets(long), [], [score_lines(long, LONG_SPLITS, METHODS, seeds)])

"""FLUX's options (``method_args``): every choice the paper leaves open is a field here (see README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoe.methods.experts.attention import AttentionArgs
from fedmoe.moe.quant import SCHEMES

MERGE_BUDGETS = ("layer_aware", "uniform", "one_per_layer")
MERGE_WEIGHTS = ("freq_attention", "frequency")
EPS_SCHEDULES = ("ramp", "linear", "fixed")
UTILITY_INITS = ("frequency", "none")
EXPLORATIONS = ("score", "train")


@dataclass
class FluxArgs(AttentionArgs):
    """FLUX options.

    Memory: ``tune_memory_share`` of the expert memory a device has left (after shared weights and
    activations) goes to tuning experts (bf16 weights + gradients + Adam state), the rest to bf16
    merged non-tuning experts; ``max_tune_fraction`` caps the tuning experts' share of all experts.
    Profiling: ``profile_scheme`` (nf4/fp4/int8) of the quantized global model, ``profile_examples`` local
    examples profiled (None: all of them), ``stale`` profiling (round r merges with the profile of round
    r-1's model).
    Merging: ``merge_budget`` (layer_aware | uniform | one_per_layer), ``merge_rounding`` (floor: the
    paper's formula | largest_remainder: also hand out the slots the floors leave), ``merge_weights``
    (freq_attention: alpha = f*a | frequency: alpha = f), ``drop`` (drop instead of merge), ``pca_dim``.
    Roles: eps = share of tuning slots filled by top utility (exploitation); ``eps_schedule``: ``ramp``
    eps_t = min(eps_end, eps_start + eps_step * (t - 1)), ``linear`` from ``eps_start`` to ``eps_end`` over
    the run, or ``fixed`` at ``eps_fixed``. ``utility_init``: unknown utilities from the profile's activation
    frequency (``frequency``) or left unknown (``none``). ``exploration``: exploration experts are only
    ``score``d (zeroth-order, ``zo_probes`` perturbations of std ``zo_sigma``, not trained or uploaded) or
    ``train``ed like exploitation ones (then ``zo_probes`` > 0 scores up to B_tune unknown non-tuning experts).
    Attention: ``attention`` (lora | full | none), see :class:`AttentionArgs`.
    ``diagnostics``: also profile at full precision (profiling error) and merge error (not priced).
    """

    tune_memory_share: float = 0.5
    max_tune_fraction: float = 0.25
    profile_scheme: str = "nf4"
    profile_examples: int | None = None
    stale: bool = True
    merge_budget: str = "layer_aware"
    merge_rounding: str = "largest_remainder"
    merge_weights: str = "freq_attention"
    drop: bool = False
    pca_dim: int = 4
    eps_schedule: str = "ramp"
    eps_start: float = 0.3
    eps_end: float = 0.9
    eps_step: float = 0.1
    eps_fixed: float = 0.5
    utility_init: str = "frequency"
    exploration: str = "score"
    zo_probes: int = 4
    zo_sigma: float = 1e-3
    diagnostics: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.utility_init not in UTILITY_INITS:
            raise ValueError(f"utility_init={self.utility_init!r}; choose one of {UTILITY_INITS}")
        if self.exploration not in EXPLORATIONS:
            raise ValueError(f"exploration={self.exploration!r}; choose one of {EXPLORATIONS}")
        if self.exploration == "score" and self.zo_probes < 1:
            raise ValueError("exploration='score' needs zo_probes >= 1 (zeroth-order probes score the exploration "
                             "experts); raise zo_probes or use exploration='train'")
        if self.merge_budget not in MERGE_BUDGETS:
            raise ValueError(f"merge_budget={self.merge_budget!r}; choose one of {MERGE_BUDGETS}")
        if self.merge_weights not in MERGE_WEIGHTS:
            raise ValueError(f"merge_weights={self.merge_weights!r}; choose one of {MERGE_WEIGHTS}")
        if self.eps_schedule not in EPS_SCHEDULES:
            raise ValueError(f"eps_schedule={self.eps_schedule!r}; choose one of {EPS_SCHEDULES}")
        for name in ("tune_memory_share", "max_tune_fraction", "eps_start", "eps_end", "eps_step", "eps_fixed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in [0, 1]")
        if self.profile_scheme not in SCHEMES:
            raise ValueError(f"profile_scheme={self.profile_scheme!r}; choose one of {SCHEMES}")
        bad_examples = self.profile_examples is not None and self.profile_examples < 1
        if bad_examples or self.pca_dim < 1 or self.zo_probes < 0 or self.zo_sigma <= 0:
            raise ValueError("need profile_examples >= 1 (or None: all), pca_dim >= 1, zo_probes >= 0 and zo_sigma > 0")

"""Intervals, paired comparisons and verdicts: the statistics every benchmark, notebook and the report use.

One run is one seed scored on a fixed test set, so a number carries two kinds of noise: the test items (another
draw of items would score differently) and the seed (another init, client sampling and batch order would train
differently). This module turns scores into an :class:`Interval` and an interval into a word:

- :func:`mean_ci` -- Student-t interval over seeds (one score per seed);
- :func:`bootstrap_ci` -- percentile bootstrap over the test items of a single run;
- :func:`paired_difference` -- paired bootstrap of method A minus method B on the same seeds and items;
- :func:`verdict` -- ``leads`` / ``trails`` / ``unresolved`` for a difference;
- :func:`judge_target` -- ``MET`` / ``FAILED`` / ``UNRESOLVED`` for a paper's target;
- :class:`Goal` and :func:`judge` -- a target as one object (comparator, threshold, units) that renders its own
  text and judges with the one rule, ``NOT TESTABLE`` when a precondition failed;
- :func:`items_to_resolve` and :func:`paired_sd_from_rates` -- how many test items a paired comparison needs.

Why the percentile bootstrap (not BCa, scipy's default): every statistic here is a mean over >= 100 test items,
whose bootstrap distribution is close to symmetric, so BCa's bias and skew corrections move the bounds by less
than the Monte-Carlo error; the percentile interval in exchange is defined for every input (BCa returns nan with a
warning when the jackknife is degenerate, e.g. an array that is constant but for one item), never leaves the range
of the data (a score interval stays inside [0, 1]), and is the same rule the two-level paired bootstrap uses, so
every interval in a report means the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: Verdict words of a difference (:func:`verdict`) and of a target (:func:`judge_target`).
LEADS, TRAILS, UNRESOLVED_DIFF = "leads", "trails", "unresolved"
MET, FAILED, UNRESOLVED = "MET", "FAILED", "UNRESOLVED"
#: The verdict of a claim whose precondition FAILED: its test would not mean what the claim says.
NOT_TESTABLE = "NOT TESTABLE"
VERDICTS = (MET, FAILED, UNRESOLVED, NOT_TESTABLE)
#: What a measured interval is (:func:`judge`): the quantity itself, or only a bound on it (a time-to-accuracy
#: speedup where one method never reached the target is at least / at most the measured ratio).
EXACT, LOWER_BOUND, UPPER_BOUND, UNKNOWN_BOUND = "exact", "lower bound", "upper bound", "unknown"
BOUNDS = (EXACT, LOWER_BOUND, UPPER_BOUND, UNKNOWN_BOUND)

#: Bootstrap resamples drawn per batch (bounds memory: a batch holds ``batch x n_items`` floats).
_BATCH = 500


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval.

    ``mean`` is the estimate, ``[lo, hi]`` the interval at confidence ``level``, ``n`` the number of units it
    rests on (seeds for :func:`mean_ci`, test items for :func:`bootstrap_ci` and :func:`paired_difference`).
    ``lo`` and ``hi`` are nan when no interval can be computed (a single seed): such an interval contains
    nothing and decides nothing, it is never a zero-width interval in disguise.
    """

    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"Interval needs n >= 1 observations, got n={self.n}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"Interval level must lie in (0, 1), e.g. 0.95; got {self.level}")
        if math.isnan(self.lo) != math.isnan(self.hi):
            raise ValueError(f"Interval bounds must be both defined or both nan, got lo={self.lo}, hi={self.hi}")
        if self.lo > self.hi:
            raise ValueError(f"Interval lower bound {self.lo} exceeds upper bound {self.hi}")

    @property
    def defined(self) -> bool:
        """Whether the interval has bounds (False for a single seed)."""
        return not math.isnan(self.lo)

    @property
    def width(self) -> float:
        """``hi - lo`` (nan when the interval is undefined)."""
        return self.hi - self.lo

    def contains(self, x: float) -> bool:
        """Whether ``lo <= x <= hi`` (always False for an undefined interval)."""
        return self.defined and self.lo <= x <= self.hi

    def format(self, scale: float = 100, digits: int = 1) -> str:
        """``"43.1 ± 2.3 [40.8, 45.4]"``: mean ± half-width [lo, hi], each times ``scale`` (100: fraction -> points).

        A bootstrap interval need not be symmetric about the mean; the bracket gives its true bounds. A level other
        than 95% is appended (``" (90% CI)"``); an undefined interval reads ``"43.1 (n=1, no interval)"``.
        """
        def num(x: float) -> str:
            return f"{x * scale:.{digits}f}"

        if not self.defined:
            return f"{num(self.mean)} (n={self.n}, no interval)"
        text = f"{num(self.mean)} ± {num(self.width / 2)} [{num(self.lo)}, {num(self.hi)}]"
        if not math.isclose(self.level, 0.95):
            text += f" ({self.level:.0%} CI)"
        return text


def _as_finite(values, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    """``values`` as a float array with one of the allowed ``ndim``, non-empty and finite (else ValueError)."""
    array = np.asarray(values, dtype=float)
    if array.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimension(s), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: need at least one score")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds nan or inf scores: score every item before computing an interval")
    return array


def mean_ci(values, level: float = 0.95) -> Interval:
    """Mean over seeds with its Student-t interval: ``mean ± t_{(1+level)/2, n-1} * sd / sqrt(n)``.

    ``values`` holds one score per seed. One seed gives ``lo = hi = nan`` (the t interval is undefined with zero
    degrees of freedom). Seeds that agree exactly give a zero-width interval, which is what the formula says.
    """
    x = _as_finite(values, "values", (1,))
    n, mean = x.size, float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, level)
    sem = float(sps.sem(x))
    if sem == 0.0:
        return Interval(mean, mean, mean, n, level)
    lo, hi = sps.t.interval(level, df=n - 1, loc=mean, scale=sem)
    return Interval(mean, float(lo), float(hi), n, level)


def bootstrap_ci(item_scores, level: float = 0.95, n_resamples: int = 5000, seed: int = 0) -> Interval:
    """Mean over the test items of one run with its percentile bootstrap interval (``scipy.stats.bootstrap``).

    Resamples items with replacement ``n_resamples`` times (seeded by ``seed``, so the interval is reproducible).
    A single item gives an undefined interval; items that all scored the same give the zero-width interval the
    bootstrap yields (every resample has the same mean) -- honest about the data, but with few items it
    understates what another test set could score.
    """
    x = _as_finite(item_scores, "item_scores", (1,))
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, math.nan, 1, level)
    if np.ptp(x) == 0.0:
        return Interval(mean, mean, mean, x.size, level)
    result = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                           vectorized=True, batch=_BATCH, rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(mean, float(ci.low), float(ci.high), x.size, level)


def paired_difference(a, b, level: float = 0.95, seed: int = 0, n_resamples: int = 5000) -> Interval:
    """``mean(a) - mean(b)`` with a paired bootstrap interval of the per-item difference ``d = a - b``.

    ``a`` and ``b`` are per-item scores of two methods on the same seeds and the same test items, shaped
    ``[n_seeds, n_items]`` (1-D: one seed). Pairing removes what both methods share (an easy item is easy for
    both), which is why it resolves differences that two separate intervals cannot.

    - One seed: items are resampled with replacement (``scipy.stats.bootstrap``, percentile).
    - ``n_seeds >= 2``: a two-level (crossed) bootstrap. Each resample draws ``n_seeds`` seeds with replacement
      and, independently, ``n_items`` item indices with replacement, the same item indices for every seed (the
      items are shared), and takes the mean of ``d`` over the drawn seeds x drawn items. The percentile interval of
      these means covers both test-item and seed-to-seed noise. Crossed resampling counts the seed-by-item
      interaction in both levels, which makes it slightly conservative; with 2-3 seeds the seed level in turn
      understates the seed variance by a factor ``(n_seeds - 1) / n_seeds``. Differences that agree on every item
      and seed (e.g. ``a`` equal to ``b``) give the exact zero-width interval.

    ``n`` of the result is the number of items. Raises ValueError when the shapes differ (naming both).
    """
    a_arr = _as_finite(a, "a", (1, 2))
    b_arr = _as_finite(b, "b", (1, 2))
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired_difference needs a and b on the same seeds and items, got shapes {a_arr.shape} "
                         f"and {b_arr.shape}; pass both as [n_seeds, n_items] in the same seed and item order")
    d = (a_arr - b_arr).reshape(-1, a_arr.shape[-1])
    n_seeds, n_items = d.shape
    point = float(a_arr.mean() - b_arr.mean())
    if d.size == 1:
        return Interval(point, math.nan, math.nan, 1, level)
    if np.ptp(d) == 0.0:
        return Interval(point, point, point, n_items, level)
    rng = np.random.default_rng(seed)
    if n_seeds == 1:
        result = sps.bootstrap((d[0],), np.mean, n_resamples=n_resamples, confidence_level=level,
                               method="percentile", vectorized=True, batch=_BATCH, rng=rng)
        ci = result.confidence_interval
        return Interval(point, float(ci.low), float(ci.high), n_items, level)
    means = []
    for start in range(0, n_resamples, _BATCH):
        size = min(_BATCH, n_resamples - start)
        seeds = rng.integers(n_seeds, size=(size, n_seeds))
        items = rng.integers(n_items, size=(size, n_items))
        per_item = d[seeds].mean(axis=1)  # [size, n_items]: each resample's drawn seeds, averaged
        means.append(np.take_along_axis(per_item, items, axis=1).mean(axis=1))
    lo, hi = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(lo), float(hi), n_items, level)


def verdict(interval: Interval) -> str:
    """The word for a difference A - B: ``leads`` (lo > 0), ``trails`` (hi < 0), else ``unresolved``.

    An interval that touches or contains 0, or is undefined (one seed), is ``unresolved``.
    """
    if not interval.defined:
        return UNRESOLVED_DIFF
    if interval.lo > 0:
        return LEADS
    if interval.hi < 0:
        return TRAILS
    return UNRESOLVED_DIFF


def judge_target(interval: Interval, target: float, higher_is_better: bool = True) -> str:
    """``MET`` only when the whole interval clears ``target``, ``FAILED`` only when it lies wholly on the wrong side.

    With ``higher_is_better`` MET when ``lo > target``, FAILED when ``hi < target``; otherwise MET when
    ``hi < target``, FAILED when ``lo > target``. An interval touching the target does not clear it (a
    zero-width interval at the target, e.g. two runs that both score 0, decides nothing), and anything else,
    an undefined interval included, is ``UNRESOLVED``.
    """
    if not interval.defined:
        return UNRESOLVED
    if higher_is_better:
        met, failed = interval.lo > target, interval.hi < target
    else:
        met, failed = interval.hi < target, interval.lo > target
    return MET if met else FAILED if failed else UNRESOLVED


def paired_sd_from_rates(p_a: float, p_b: float, discordance: float | None = None) -> float:
    """Standard deviation of the per-item difference ``d = a - b`` of two methods scored 0/1 per item.

    ``d`` is +1, -1 or 0, so ``Var(d) = P(a != b) - (p_a - p_b)^2`` where ``discordance = P(a != b)`` is the share
    of items on which the two methods disagree. ``discordance=None`` assumes the methods err independently:
    ``p_a (1 - p_b) + p_b (1 - p_a)`` (an upper end: methods sharing a base model agree more). Raises ValueError
    for a discordance no pair of 0/1 scores with these rates can have (below ``|p_a - p_b|`` or above
    ``min(p_a + p_b, 2 - p_a - p_b)``).
    """
    for name, p in (("p_a", p_a), ("p_b", p_b)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a share of items in [0, 1], got {p}")
    delta = p_a - p_b
    if discordance is None:
        discordance = p_a * (1 - p_b) + p_b * (1 - p_a)
    upper = min(p_a + p_b, 2 - p_a - p_b)
    if not abs(delta) - 1e-12 <= discordance <= upper + 1e-12:
        raise ValueError(f"discordance {discordance} is impossible for rates {p_a} and {p_b}: it must lie in "
                         f"[{abs(delta):.4g}, {upper:.4g}] (|p_a - p_b| to min(p_a + p_b, 2 - p_a - p_b))")
    return math.sqrt(max(discordance - delta**2, 0.0))


def items_to_resolve(delta: float = 0.05, sd_diff: float = 0.5, level: float = 0.95, power: float = 0.8) -> int:
    """Test items a paired comparison needs so that a real difference ``delta`` is resolved (normal approximation).

    ``n = ceil(((z_{(1+level)/2} + z_{power}) * sd_diff / delta)^2)`` with ``z`` the standard normal quantile
    (``scipy.stats.norm.ppf``): with ``n`` items, a true difference ``delta`` gives an interval at ``level`` that
    excludes 0 with probability ``power``. At the defaults, ``(1.95996 + 0.84162)^2 * 0.5^2 / 0.05^2`` = 784.9,
    so 785 items. ``sd_diff`` is the standard deviation of the per-item difference (see
    :func:`paired_sd_from_rates`). The default 0.5 is ``sqrt(discordance - delta^2)`` for 0/1 items on which
    the two methods disagree on 25.25% of items at a 5-point difference: methods that share a base model and
    agree on most items. Methods that err independently at scores near 0.4 disagree on about half the items
    (sd near 0.7) and need about twice as many.
    """
    if delta <= 0:
        raise ValueError(f"delta must be a positive difference to resolve, got {delta}")
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
    for name, p in (("level", level), ("power", power)):
        if not 0.0 < p < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {p}")
    z = sps.norm.ppf((1 + level) / 2) + sps.norm.ppf(power)
    return max(1, math.ceil((z * sd_diff / delta) ** 2))


#: Display units of a goal: how a fraction or ratio is shown (factor, suffix, whether the threshold is signed).
UNITS = {"points": (100.0, " points", True), "percent": (100.0, "%", False), "ratio": (1.0, "x", False),
         "value": (1.0, "", True)}


@dataclass(frozen=True)
class Goal:
    """A target a measured interval is judged against: ``comparator`` ``">"`` (the whole interval above
    ``threshold``) or ``"<"`` (wholly below), in the measurement's own units (a score fraction, a ratio), shown in
    ``unit`` (:data:`UNITS`) with ``digits`` decimals. Its :meth:`text` and :meth:`judge` come from the same
    fields, so a row's goal text and its verdict cannot disagree; the comparator is strict because an interval
    that touches the threshold has not cleared it."""

    comparator: str
    threshold: float
    unit: str = "points"
    digits: int = 1

    def __post_init__(self):
        if self.comparator not in (">", "<"):
            raise ValueError(f"Goal comparator must be '>' or '<' (strict: an interval touching the threshold "
                             f"decides nothing), got {self.comparator!r}")
        if self.unit not in UNITS:
            raise ValueError(f"Goal unit must be one of {sorted(UNITS)}, got {self.unit!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"Goal threshold must be a finite number, got {self.threshold}")
        shown = self.threshold * self.scale
        if not math.isclose(round(shown, self.digits), shown, abs_tol=1e-9):
            raise ValueError(f"Goal threshold {self.threshold} in {self.unit} with {self.digits} decimals would read "
                             f"{self.text()}: give enough digits that the text shows the threshold it judges")

    @property
    def higher_is_better(self) -> bool:
        """Whether the claim wants the measurement above the threshold."""
        return self.comparator == ">"

    @property
    def scale(self) -> float:
        """Display factor of the unit (100: a fraction shown in points or percent)."""
        return UNITS[self.unit][0]

    def text(self) -> str:
        """The goal as a row shows it: ``"> -2.0 points"``, ``"> 2.00x"``, ``"< 5.0%"``."""
        scale, suffix, signed = UNITS[self.unit]
        return f"{self.comparator} {self.threshold * scale:{'+' if signed else ''}.{self.digits}f}{suffix}"

    def format(self, interval: Interval) -> str:
        """``interval`` in this goal's units, with as many more decimals (up to 3) as it takes for a bound that
        differs from the threshold not to print as the threshold (a MET ``[0.0, 1.0]`` would read as touching 0)."""
        digits, t = self.digits, self.threshold * self.scale
        bounds = [b * self.scale for b in (interval.lo, interval.hi) if interval.defined and b * self.scale != t]
        while digits < self.digits + 3 and any(round(b, digits) == round(t, digits) for b in bounds):
            digits += 1
        return interval.format(self.scale, digits)

    def judge(self, interval: Interval, bound: str = EXACT) -> str:
        """MET / FAILED / UNRESOLVED of ``interval`` (:func:`judge_target`), concluding only what a bound allows:
        a lower bound can clear a ``>`` goal but not fail it, an upper bound the reverse, an unknown one neither."""
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
        word = judge_target(interval, self.threshold, self.higher_is_better)
        if bound == EXACT:
            return word
        lower = bound == LOWER_BOUND
        allowed = () if bound == UNKNOWN_BOUND else ((MET,) if lower == self.higher_is_better else (FAILED,))
        return word if word in allowed else UNRESOLVED

    def to_json(self) -> dict:
        """The goal as JSON fields (inverse: ``Goal(**data)``)."""
        return {"comparator": self.comparator, "threshold": self.threshold, "unit": self.unit, "digits": self.digits}


def judge(interval: Interval, goal: Goal, *, bound: str = EXACT, preconditions: tuple[str, ...] = ()) -> str:
    """The one judge of a claim: ``NOT TESTABLE`` when any of its preconditions' verdicts is FAILED (the test
    would not mean what the claim says), else ``goal``'s verdict of ``interval`` (:meth:`Goal.judge`)."""
    if FAILED in preconditions:
        return NOT_TESTABLE
    return goal.judge(interval, bound)

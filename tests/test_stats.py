"""fedmoe.stats against hand-computed intervals, verdicts and sample sizes."""

import math

import numpy as np
import pytest

from fedmoe.stats import (
    Interval,
    bootstrap_ci,
    items_to_resolve,
    judge_target,
    mean_ci,
    paired_difference,
    paired_sd_from_rates,
    verdict,
)

T_975_DF3 = 3.182446305284263  # Student t quantile t_{0.975, 3}, from tables
Z_975, Z_80 = 1.959963984540054, 0.8416212335729143  # standard normal quantiles


def test_mean_ci_matches_hand_computed_t_interval():
    ci = mean_ci([1, 2, 3, 4])
    sem = math.sqrt(5 / 3) / 2  # sample sd sqrt(((1.5^2 + 0.5^2) * 2) / 3), over sqrt(4)
    assert ci.mean == 2.5 and ci.n == 4 and ci.level == 0.95
    assert ci.lo == pytest.approx(2.5 - T_975_DF3 * sem, abs=1e-12)
    assert ci.hi == pytest.approx(2.5 + T_975_DF3 * sem, abs=1e-12)
    assert ci.lo == pytest.approx(0.4457397432, abs=1e-9)


def test_single_seed_has_no_interval_never_a_zero_width_one():
    ci = mean_ci([0.431])
    assert ci.mean == 0.431 and ci.n == 1
    assert math.isnan(ci.lo) and math.isnan(ci.hi) and not ci.defined
    assert not ci.contains(0.431)
    assert ci.format() == "43.1 (n=1, no interval)"
    assert verdict(ci) == "unresolved" and judge_target(ci, 0.0) == "UNRESOLVED"


def test_identical_seeds_give_the_zero_width_interval_the_formula_gives():
    ci = mean_ci([0.5, 0.5, 0.5])
    assert (ci.lo, ci.mean, ci.hi) == (0.5, 0.5, 0.5)


def test_interval_format_width_and_contains():
    ci = Interval(mean=0.431, lo=0.408, hi=0.454, n=3)
    assert ci.format() == "43.1 ± 2.3 [40.8, 45.4]"
    assert ci.format(scale=1, digits=3) == "0.431 ± 0.023 [0.408, 0.454]"
    assert Interval(2.0, 1.5, 2.5, 3, level=0.9).format(scale=1) == "2.0 ± 0.5 [1.5, 2.5] (90% CI)"
    assert ci.width == pytest.approx(0.046)
    assert ci.contains(0.408) and ci.contains(0.45) and not ci.contains(0.46)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mean": 1.0, "lo": 2.0, "hi": 1.0, "n": 3}, "exceeds upper bound"),
    ({"mean": 1.0, "lo": 0.0, "hi": math.nan, "n": 3}, "both defined or both nan"),
    ({"mean": 1.0, "lo": 0.0, "hi": 2.0, "n": 0}, "n >= 1"),
    ({"mean": 1.0, "lo": 0.0, "hi": 2.0, "n": 3, "level": 95}, "level must lie in"),
])
def test_interval_rejects_impossible_bounds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Interval(**kwargs)


def test_bootstrap_ci_agrees_with_the_normal_approximation_on_many_items():
    scores = np.array([1.0] * 200 + [0.0] * 200)  # p = 0.5 over 400 items
    ci = bootstrap_ci(scores, n_resamples=4000)
    half = 1.959964 * math.sqrt(0.25 / 400)  # 0.0490
    assert ci.mean == 0.5 and ci.n == 400
    assert ci.lo == pytest.approx(0.5 - half, abs=0.006)
    assert ci.hi == pytest.approx(0.5 + half, abs=0.006)
    assert bootstrap_ci(scores, n_resamples=500) == bootstrap_ci(scores, n_resamples=500)  # seeded


def test_bootstrap_ci_of_constant_and_single_items():
    assert bootstrap_ci([1.0, 1.0, 1.0]) == Interval(1.0, 1.0, 1.0, 3)
    assert not bootstrap_ci([0.7]).defined


@pytest.mark.parametrize("bad", [[], [0.5, math.nan], [[0.5, 1.0]]])
def test_bootstrap_ci_rejects_bad_scores(bad):
    with pytest.raises(ValueError, match="item_scores"):
        bootstrap_ci(bad)


def test_paired_difference_of_identical_methods_is_exactly_zero():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 50)) < 0.4).astype(float)
    ci = paired_difference(a, a.copy())
    assert (ci.mean, ci.lo, ci.hi, ci.width) == (0.0, 0.0, 0.0, 0.0)
    assert verdict(ci) == "unresolved"


def test_paired_difference_one_seed_matches_normal_approximation():
    # a beats b on 60 of 400 items and loses on 20: d has mean 0.1, variance 80/400 - 0.1^2 = 0.19
    a = np.array([1.0] * 60 + [0.0] * 20 + [1.0] * 100 + [0.0] * 220)
    b = np.array([0.0] * 60 + [1.0] * 20 + [1.0] * 100 + [0.0] * 220)
    ci = paired_difference(a, b, n_resamples=4000)
    half = 1.959964 * math.sqrt(0.19 / 400)  # 0.0427
    assert ci.mean == pytest.approx(0.1) and ci.n == 400
    assert ci.lo == pytest.approx(0.1 - half, abs=0.006) and ci.hi == pytest.approx(0.1 + half, abs=0.006)
    assert verdict(ci) == "leads"
    assert verdict(paired_difference(b, a, n_resamples=1000)) == "trails"


def test_paired_bootstrap_resamples_seeds_when_they_disagree():
    base = np.tile(np.array([1.0] * 50 + [0.0] * 50), (3, 1))
    same_seeds = paired_difference(base + 0.1, base)  # every item and seed +0.1: no noise at all
    assert (same_seeds.lo, same_seeds.hi) == pytest.approx((0.1, 0.1))
    shifted = base + np.array([[0.0], [0.1], [0.2]])  # seeds disagree by a constant shift: items cancel out
    ci = paired_difference(shifted, base, n_resamples=4000)
    assert ci.mean == pytest.approx(0.1)
    # Only the seed level varies: a resample's mean is that of 3 seeds drawn from shifts {0, 0.1, 0.2}. All three
    # draws are the 0 seed with probability 1/27 = 3.7% > 2.5% (likewise the 0.2 seed), so the 95% interval is
    # [0, 0.2]; an items-only bootstrap would give the zero-width [0.1, 0.1].
    assert ci.lo == pytest.approx(0.0, abs=1e-12) and ci.hi == pytest.approx(0.2, abs=1e-12)


def test_paired_difference_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 100\) and \(2, 100\)"):
        paired_difference(np.zeros((3, 100)), np.zeros((2, 100)))
    with pytest.raises(ValueError, match=r"\(100,\) and \(1, 100\)"):
        paired_difference(np.zeros(100), np.zeros((1, 100)))


@pytest.mark.parametrize(("lo", "hi", "word"), [(0.01, 0.2, "leads"), (-0.2, -0.01, "trails"),
                                                 (-0.1, 0.1, "unresolved"), (0.0, 0.1, "unresolved")])
def test_verdict_words(lo, hi, word):
    assert verdict(Interval((lo + hi) / 2, lo, hi, 100)) == word


@pytest.mark.parametrize(("lo", "hi", "target", "higher", "word"), [
    (2.1, 2.6, 2.0, True, "MET"),
    (2.0, 2.6, 2.0, True, "UNRESOLVED"),  # touching the target does not clear it
    (2.0, 2.0, 2.0, True, "UNRESOLVED"),  # zero width at the target (e.g. both methods score 0) decides nothing
    (1.2, 1.9, 2.0, True, "FAILED"),
    (1.2, 2.0, 2.0, True, "UNRESOLVED"),
    (1.8, 2.3, 2.0, True, "UNRESOLVED"),
    (0.5, 1.5, 2.0, False, "MET"),
    (2.5, 3.0, 2.0, False, "FAILED"),
    (1.5, 2.5, 2.0, False, "UNRESOLVED"),
])
def test_judge_target(lo, hi, target, higher, word):
    assert judge_target(Interval((lo + hi) / 2, lo, hi, 3), target, higher_is_better=higher) == word


def test_items_to_resolve_matches_the_normal_approximation_formula():
    # (z_.975 + z_.8)^2 * sd^2 / delta^2 = 7.84888 * 0.25 / 0.0025 = 784.89 -> 785
    assert items_to_resolve(delta=0.05, sd_diff=0.5) == math.ceil((Z_975 + Z_80) ** 2 * 0.25 / 0.0025) == 785
    assert items_to_resolve(delta=0.10, sd_diff=0.5) == 197  # 196.22 -> 197
    assert items_to_resolve(delta=0.05, sd_diff=0.0) == 1
    with pytest.raises(ValueError, match="delta must be a positive"):
        items_to_resolve(delta=0.0)


def test_paired_sd_from_rates():
    # disagree on 25.25% of items at a 5-point gap: sqrt(0.2525 - 0.0025) = 0.5
    assert paired_sd_from_rates(0.45, 0.40, 0.2525) == pytest.approx(0.5)
    # independent errors: discordance 0.45 * 0.6 + 0.4 * 0.55 = 0.49; sqrt(0.49 - 0.0025)
    assert paired_sd_from_rates(0.45, 0.40) == pytest.approx(math.sqrt(0.4875))
    with pytest.raises(ValueError, match=r"impossible for rates 0.45 and 0.4: it must lie in \[0.05, 0.85\]"):
        paired_sd_from_rates(0.45, 0.40, 0.01)

"""The win-rate maths: ties half, the bootstrap interval's edges, coverage, width and seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluator.stats import bootstrap_ci, win_rate, win_rate_summary


def outcomes(wins: int, ties: int, losses: int) -> list[float]:
    return [1.0] * wins + [0.5] * ties + [0.0] * losses


def test_win_rate_counts_ties_half():
    assert win_rate(3, 2, 5) == pytest.approx(0.4)
    assert win_rate(0, 10, 0) == 0.5
    assert win_rate(7, 0, 3) == pytest.approx(0.7)
    assert win_rate(0, 0, 0) is None


def test_all_wins_gives_rate_one_and_a_point_interval():
    summary = win_rate_summary(outcomes(40, 0, 0))
    assert summary == {"wins": 40, "ties": 0, "losses": 0, "pairs": 40, "win_rate": 1.0,
                       "ci95": [1.0, 1.0]}


def test_all_losses_and_all_ties_give_point_intervals():
    assert win_rate_summary(outcomes(0, 0, 25))["ci95"] == [0.0, 0.0]
    ties = win_rate_summary(outcomes(0, 30, 0))
    assert ties["win_rate"] == 0.5
    assert ties["ci95"] == [0.5, 0.5]


def test_even_split_is_centred_on_one_half():
    summary = win_rate_summary(outcomes(30, 20, 30))
    assert summary["win_rate"] == 0.5
    low, high = summary["ci95"]
    assert low < 0.5 < high
    assert (low + high) / 2 == pytest.approx(0.5, abs=0.01)


def test_swapping_wins_and_losses_mirrors_the_interval():
    low, high = bootstrap_ci(outcomes(60, 15, 25))
    mirror_low, mirror_high = bootstrap_ci(outcomes(25, 15, 60))
    assert low == pytest.approx(1 - mirror_high, abs=0.01)
    assert high == pytest.approx(1 - mirror_low, abs=0.01)


def test_interval_contains_the_point_estimate_and_stays_in_range():
    for counts in [(1, 0, 0), (1, 0, 9), (5, 3, 2), (90, 5, 5)]:
        summary = win_rate_summary(outcomes(*counts))
        low, high = summary["ci95"]
        assert 0.0 <= low <= summary["win_rate"] <= high <= 1.0


def test_empty_outcomes_have_no_rate_and_no_interval():
    assert bootstrap_ci([]) is None
    assert win_rate_summary([]) == {"wins": 0, "ties": 0, "losses": 0, "pairs": 0,
                                    "win_rate": None, "ci95": None}


def test_same_seed_same_interval_other_seeds_other_intervals():
    data = outcomes(23, 9, 8)
    assert bootstrap_ci(data, seed=7) == bootstrap_ci(data, seed=7)
    # Means of 40 pairs lie on a grid of 1/80, so two seeds can land on the same quantiles.
    assert len({bootstrap_ci(data, seed=s) for s in range(10)}) > 1


def test_coverage_of_a_known_rate_is_near_95_percent():
    rng = np.random.default_rng(1234)
    covered = 0
    for i in range(200):
        sample = (rng.random(100) < 0.7).astype(float)
        low, high = bootstrap_ci(sample, seed=i)
        covered += low <= 0.7 <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_width_shrinks_with_the_square_root_of_pairs():
    low_100, high_100 = bootstrap_ci(outcomes(70, 0, 30))
    low_400, high_400 = bootstrap_ci(outcomes(280, 0, 120))
    assert (high_100 - low_100) / (high_400 - low_400) == pytest.approx(2.0, abs=0.25)


def test_agrees_with_the_normal_approximation_for_400_pairs():
    p, n = 0.7, 400
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    low, high = bootstrap_ci(outcomes(280, 0, 120))
    assert low == pytest.approx(p - half, abs=0.006)
    assert high == pytest.approx(p + half, abs=0.006)


def test_agrees_with_the_normal_approximation_with_ties():
    data = np.array(outcomes(200, 100, 100))
    half = 1.96 * data.std() / math.sqrt(data.size)
    low, high = bootstrap_ci(data)
    assert low == pytest.approx(data.mean() - half, abs=0.006)
    assert high == pytest.approx(data.mean() + half, abs=0.006)


def test_confidence_level_widens_the_interval():
    data = outcomes(50, 10, 40)
    low_80, high_80 = bootstrap_ci(data, confidence=0.8)
    low_99, high_99 = bootstrap_ci(data, confidence=0.99)
    assert low_99 < low_80 and high_80 < high_99


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="win"):
        win_rate_summary([1.0, 0.7])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bootstrap_ci([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bootstrap_ci([float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0], confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0], n_resamples=0)

"""The significance tests and the interval score on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.forecast.significance import diebold_mariano, interval_score, pesaran_timmermann


def test_dm_finds_a_real_difference_and_not_a_fake_one() -> None:
    rng = np.random.default_rng(1)
    base = rng.gamma(2.0, 1.0, size=60)
    worse = base + 0.5 + rng.normal(0, 0.2, size=60)
    stat, p = diebold_mariano(worse, base)
    assert stat > 0 and p < 1e-6
    noise = base + rng.normal(0, 0.2, size=60)
    _, p_noise = diebold_mariano(noise, base)
    assert p_noise > 0.05
    assert diebold_mariano(base, base) == (0.0, 1.0)
    assert all(math.isnan(x) for x in diebold_mariano(base[:1], base[:1]))


def test_dm_small_sample_correction_makes_it_more_cautious() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.gamma(2.0, 1.0, size=12), rng.gamma(2.0, 1.0, size=12) + 0.4
    _, p1 = diebold_mariano(a, b, h=1)
    _, p3 = diebold_mariano(a, b, h=3)
    assert 0 < p1 <= 1 and 0 < p3 <= 1 and p3 != p1


def test_pt_rewards_direction_and_not_chance() -> None:
    rng = np.random.default_rng(3)
    actual = rng.choice([-1, 1], size=400)
    right = np.where(rng.random(400) < 0.8, actual, -actual)
    _, p = pesaran_timmermann(right, actual)
    assert p < 1e-6
    _, p_random = pesaran_timmermann(rng.choice([-1, 1], size=400), actual)
    assert p_random > 0.01
    assert all(math.isnan(x) for x in pesaran_timmermann(np.ones(50), actual[:50]))  # never varies


@pytest.mark.parametrize("level", [80, 95])
def test_interval_score_is_width_plus_the_penalty_of_misses(level: int) -> None:
    y = np.array([0.0, 5.0, -5.0])
    lo, hi = np.full(3, -1.0), np.full(3, 1.0)
    alpha = 1 - level / 100
    expected = 2.0 + (2 / alpha) * (4.0 + 4.0) / 3
    assert interval_score(y, lo, hi, level) == pytest.approx(expected)
    assert interval_score(np.zeros(3), lo, hi, level) == pytest.approx(2.0)

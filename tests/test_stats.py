"""persyn.stats on numpy data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from persyn.stats import mean_ci, min_detectable, paired_difference


def binary(rng, p, shape):
    return (rng.random(shape) < p).astype(float)


def test_identical_arrays_give_a_zero_width_interval_at_zero():
    x = binary(np.random.default_rng(0), 0.4, (3, 300))
    d = paired_difference(x, x.copy())
    assert d.diff == d.lo == d.hi == d.se == d.mde == 0.0
    assert not d.resolved and d.size_factor is None and d.paired_seeds


def test_a_constant_shift_is_detected_exactly():
    b = np.random.default_rng(1).random((3, 200))
    d = paired_difference(b + 0.05, b)
    assert d.diff == pytest.approx(0.05) and d.lo == pytest.approx(0.05) and d.hi == pytest.approx(0.05)
    assert d.resolved
    neg = paired_difference(b, b + 0.05)
    assert neg.hi == pytest.approx(-0.05) and neg.resolved


def test_one_seed_se_is_the_binomial_one():
    x = binary(np.random.default_rng(2), 0.5, 1600)
    e = mean_ci(x)
    binomial = np.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert e.se == pytest.approx(binomial, rel=0.08)
    assert e.lo < x.mean() < e.hi and e.hi - e.lo == pytest.approx(2 * 1.96 * binomial, rel=0.1)
    assert (e.seeds, e.items) == (1, 1600)


def test_seed_noise_widens_the_interval():
    rng = np.random.default_rng(3)
    items = rng.random(500)
    same = np.stack([items] * 3)
    shifted = same + np.array([[-0.1], [0.0], [0.1]])  # three seeds that differ by a constant
    a, b = mean_ci(same), mean_ci(shifted)
    assert a.mean == pytest.approx(b.mean)
    assert b.se > 2 * a.se  # the seed-level resampling sees the spread between seeds


def test_pairing_cancels_the_items_shared_difficulty():
    rng = np.random.default_rng(4)
    difficulty = rng.random((1, 800))
    a = (difficulty < 0.55).astype(float)  # a solves every item b solves, and 5 % more
    b = (difficulty < 0.50).astype(float)
    d = paired_difference(a, b)
    separate = np.hypot(mean_ci(a).se, mean_ci(b).se)
    assert d.se < separate / 2 and d.resolved and d.lo > 0
    assert d.mde == pytest.approx(2.8016 * d.se, rel=1e-3)


def test_unpaired_seeds_and_bad_shapes():
    rng = np.random.default_rng(5)
    a, b = binary(rng, 0.5, (3, 100)), binary(rng, 0.5, (1, 100))
    assert not paired_difference(a, b).paired_seeds
    with pytest.raises(ValueError, match="same items"):
        paired_difference(a, binary(rng, 0.5, (3, 99)))
    with pytest.raises(ValueError, match="as many seeds"):
        paired_difference(a, b, paired_seeds=True)
    with pytest.raises(ValueError, match="finite"):
        mean_ci([0.0, np.nan])


def test_min_detectable_and_size_factor():
    assert min_detectable(0.01) == pytest.approx(0.028, abs=1e-4)  # 1.96 + 0.84 standard errors
    rng = np.random.default_rng(6)
    a, b = binary(rng, 0.5, (2, 400)), binary(rng, 0.5, (2, 400))
    d = paired_difference(a, b)
    assert d.size_factor == pytest.approx((d.mde / abs(d.diff)) ** 2)
    assert mean_ci(a, seed=1) != mean_ci(a, seed=2) and mean_ci(a, seed=1) == mean_ci(a, seed=1)

"""Properties of per-prompt normalisation, Eq. 2 and preference pairs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from persyn.router.bt import preference_pairs
from persyn.scoring.reward import METHODS, combine, normalise, reward_matrix

# Integer-valued rows keep the float arithmetic exact enough that ties and orderings are unambiguous.
rows = st.lists(st.integers(-1000, 1000), min_size=1, max_size=8).map(lambda v: np.array(v, dtype=np.float64))
methods = st.sampled_from(METHODS)
alphas = st.sampled_from([0.0, 0.25, 0.4, 0.5, 1.0])


@given(rows, st.floats(0.01, 100), st.floats(-1e3, 1e3))
def test_scale_and_shift_invariance(v, scale, shift):
    for method in ("minmax", "zscore", "rank"):
        np.testing.assert_allclose(normalise(v * scale + shift, method), normalise(v, method), atol=1e-6)


@given(rows, methods)
def test_normalise_preserves_order_and_ties(v, method):
    n = normalise(v, method)
    assert n.shape == v.shape
    assert np.array_equal(np.sign(v[:, None] - v[None, :]), np.sign(n[:, None] - n[None, :]))


@given(rows)
def test_normalise_ranges(v):
    for method in ("minmax", "rank"):
        n = normalise(v, method)
        assert n.min() >= 0 and n.max() <= 1
    if v.min() < v.max():
        n = normalise(v, "minmax")
        assert n.min() == 0 and n.max() == 1
    assert normalise(v, "rank").mean() == pytest.approx(0.5)  # average ranks: ties share, the sum is kept
    z = normalise(v, "zscore")
    assert abs(z.mean()) < 1e-9
    np.testing.assert_array_equal(normalise(v, "none"), v)


@given(st.floats(-1e6, 1e6), st.integers(1, 8))
def test_constant_values(c, size):
    v = np.full(size, c)
    assert np.all(normalise(v, "minmax") == 0.5)
    assert np.all(normalise(v, "rank") == 0.5)
    assert np.all(normalise(v, "zscore") == 0.0)
    r = combine(v, v, 0.4)
    assert len(preference_pairs(r[None])) == 0


@given(rows, st.integers(0, 7), st.sampled_from([np.nan, np.inf, -np.inf]), methods)
def test_non_finite_rejected(v, at, bad, method):
    v = v.copy()
    v[at % v.size] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalise(v, method)
    with pytest.raises(ValueError):
        combine(v, np.zeros_like(v), 0.5, method)


def test_unknown_method_and_alpha():
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(np.ones(3), "softmax")
    with pytest.raises(ValueError, match="alpha"):
        combine(np.ones(3), np.ones(3), 1.5)


@given(rows, methods)
def test_alpha_extremes(q, method):
    lq = q[::-1].copy() * 3 - 7
    np.testing.assert_array_equal(combine(q, None, 0.0, method), normalise(q, method))
    np.testing.assert_array_equal(combine(None, lq, 1.0, method), normalise(lq, method))
    mixed = combine(q, lq, 0.4, method)
    np.testing.assert_allclose(mixed, 0.6 * normalise(q, method) + 0.4 * normalise(lq, method))


@given(rows, st.lists(st.booleans(), min_size=8, max_size=8), alphas, methods)
def test_worst_loses_every_comparison(q, mask, alpha, method):
    worst = np.array(mask[: q.size])
    lq = q * 0.5 + 1
    lq[worst] = np.nan  # empty responses have no learnability: must be ignored
    r = combine(q, lq, alpha, method, worst=worst)
    assert np.all(np.isfinite(r))
    if worst.any() and not worst.all():
        assert r[worst].max() < r[~worst].min()
        for _, winner, loser in preference_pairs(r[None]).tolist():
            assert not worst[winner] or worst[loser]
    np.testing.assert_array_equal(r[~worst], combine(q[~worst], lq[~worst], alpha, method))



def test_reward_matrix_nan_and_worst():
    q = np.array([[1.0, 0.0, np.nan], [0.0, 0.0, 1.0], [np.nan, np.nan, np.nan]])
    lq = np.array([[-1.0, -2.0, -3.0], [-1.0, np.nan, -2.0], [-1.0, -2.0, -3.0]])
    worst = np.array([[False, False, False], [False, True, False], [False, False, False]])
    r = reward_matrix(q, lq, 0.5, "minmax", worst=worst)
    np.testing.assert_allclose(r[0], [1.0, 0.0, np.nan])
    np.testing.assert_allclose(r[1], [0.5, -0.5, 0.5])  # q and l disagree; the worst one sits below both
    assert np.isnan(r[2]).all()
    # alpha == 0: learnability's NaN does not matter, and None is accepted
    np.testing.assert_allclose(reward_matrix(q, None, 0.0)[1], [0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        reward_matrix(np.array([[1.0, np.inf]]), None, 0.0)
    with pytest.raises(ValueError, match="learnability"):
        reward_matrix(q, None, 0.4)

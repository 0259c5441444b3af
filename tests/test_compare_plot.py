"""The cost-versus-score plot's labels: close strategies at the same cost stay readable."""

from __future__ import annotations

import itertools

import pytest

from persyn.experiments.compare_report import spread_labels


def test_crowded_labels_are_spread_and_centred_while_lone_ones_stay_put():
    points = [("a", 1.0, 0.121), ("b", 1.0, 0.125), ("c", 1.0, 0.140), ("d", 1.0, 0.5), ("e", 2.0, 0.122)]
    placed = {name: (x, y, label_y) for name, x, y, label_y in spread_labels(points, (0.0, 1.0), gap=0.05)}
    crowded = sorted(placed[n][2] for n in "abc")
    assert crowded[1] - crowded[0] == pytest.approx(0.05) and crowded[2] - crowded[1] == pytest.approx(0.05)
    assert sum(crowded) / 3 == pytest.approx((0.121 + 0.125 + 0.140) / 3)  # centred on its points
    assert [placed[n][2] for n in "abc"] == crowded  # the points' order is kept
    assert placed["d"][2] == 0.5 and placed["e"][2] == 0.122  # nothing near them: no move
    assert {(placed[n][0], placed[n][1]) for n in "abcde"} == {(x, y) for _, x, y in points}


def test_blocks_that_meet_after_centring_merge():
    points = [("a", 1.0, 0.10), ("b", 1.0, 0.10), ("c", 1.0, 0.16)]  # a+b spread to 0.075/0.125, which meets c
    ys = sorted(label_y for *_, label_y in spread_labels(points, (0.0, 1.0), gap=0.05))
    assert all(b - a >= 0.05 - 1e-12 for a, b in itertools.pairwise(ys))

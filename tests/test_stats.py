"""persyn.experiments.stats on numpy data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from persyn.experiments.stats import mean_ci, min_detectable, paired_difference


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


def test_compare_statistics_from_records_files(tmp_path):
    """persyn.experiments.significance reads per-item records, aligns items by id, picks the references and pairs
    seeds."""
    import json

    from persyn.experiments.significance import benchmark_statistics

    rng = np.random.default_rng(7)
    ids = [f"p{i}" for i in range(400)]
    hard = rng.random(400)
    accuracy = {"strong": 0.5, "persyn": 0.7, "teacher:a": 0.3, "teacher:b": 0.5, "base": 0.1}
    files = {}
    for name, acc in accuracy.items():
        files[name] = {}
        for seed in ([0] if name == "base" else [0, 1]):
            path = tmp_path / f"{name}-{seed}.records.jsonl"
            order = list(range(400)) if seed == 0 else list(range(399, -1, -1))  # items found by id, not order
            path.write_text("".join(json.dumps({"id": ids[i], "correct": bool(hard[i] < acc)}) + "\n"
                                    for i in order))
            files[name][seed] = path
    files["random"] = {0: tmp_path / "missing.records.jsonl"}  # not evaluated yet: left out quietly
    other = tmp_path / "other.records.jsonl"
    other.write_text(json.dumps({"id": "q0", "correct": True}) + "\n")
    files["mix"] = {0: other}
    st = benchmark_statistics(files, "gym", n_boot=1000)
    assert st["items"] == 400 and st["skipped"] == ["mix"] and "random" not in st["strategies"]
    assert st["references"] == {"strong": "strong", "best single teacher": "teacher:b"}  # b beats a
    truth = {n: float((hard < a).mean()) for n, a in accuracy.items()}
    for name, e in st["strategies"].items():
        assert e["mean"] == pytest.approx(truth[name]) and e["lo"] <= e["mean"] <= e["hi"]
        assert e["seed_means"] == pytest.approx([truth[name]] * len(e["seeds_list"]), abs=1e-6)
    d = {(x["strategy"], x["against"]): x for x in st["differences"]}
    assert ("base", "strong") not in d and ("strong", "strong") not in d
    up = d[("persyn", "strong")]
    assert up["diff"] == pytest.approx(truth["persyn"] - truth["strong"]) and up["resolved"] and up["lo"] > 0
    assert up["paired_seeds"] and st["mde_median"] > 0
    same = d[("strong", "best single teacher")]  # strong and teacher:b answered alike: no difference at all
    assert same["diff"] == same["lo"] == same["hi"] == 0 and not same["resolved"]
    assert benchmark_statistics(files, "lm_eval") is None

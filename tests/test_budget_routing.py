"""The ridge router, the generation budget (top-k by margin and the cascade) and the probe strategies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import BEST, read_jsonl, recorded_config, recorded_pool

from persyn.cli import main
from persyn.config import parse_config
from persyn.errors import ConfigError
from persyn.pipeline import run_stages
from persyn.router import RidgeRouter, load_router
from persyn.run import open_run, rewards_for
from persyn.scoring.reward import calibrated_reward, probe_scales
from persyn.stages.budget import allocate, cascade_next


def topic_data(n: int, seed: int, noise: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings with a topic direction; each of 3 teachers is best on one topic (rewards with noise)."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 16))
    X[np.arange(n), topic] += 3.0
    R = 0.4 + 0.3 * (topic[:, None] == np.arange(3)) + noise * rng.normal(size=(n, 3))
    R[:, 0] += 0.1  # teacher 0 is the best single teacher
    return X, R


def test_ridge_router_routes_where_prompts_differ_and_beats_the_best_single_teacher_held_out():
    X, R = topic_data(200, 0)
    router = RidgeRouter(3, ["a", "b", "c"], seed=0)
    report = router.fit(X[:100], R[:100])
    assert not report.fallback_to_bias and report.cv_gain > 0
    routed = R[100:][np.arange(100), router.route(X[100:])].mean()
    assert routed > R[100:, 0].mean() + 0.07  # held out, vs the probe's pick (perfect routing: +0.13)
    assert len(set(router.route(X[100:]).tolist())) == 3


def test_ridge_router_falls_back_with_a_reason_on_noise_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    X, R = rng.normal(size=(60, 32)), rng.normal(size=(60, 3)) * 0.1 + [0.5, 0.2, 0.1]
    router = RidgeRouter(3, ["a", "b", "c"], seed=0)
    report = router.fit(X, R)
    assert report.fallback_to_bias and "gain" in report.fallback_reason
    assert (router.route(rng.normal(size=(20, 32))) == 0).all()  # the best probe mean, everywhere
    router.save(tmp_path / "r")
    again = load_router(tmp_path / "r")
    assert isinstance(again, RidgeRouter) and again.report == report
    Xt = rng.normal(size=(5, 32))
    np.testing.assert_allclose(again.scores(Xt), router.scores(Xt), rtol=1e-6)


def test_allocate_spends_exactly_the_budget_on_the_smallest_margins():
    S = np.array([[0.9, 0.1, 0.0], [0.5, 0.49, 0.0], [0.3, 0.6, 0.59], [0.2, 0.1, 0.15]])
    one = allocate(S, 1.0)
    assert one == [[0], [0], [1], [0]]
    two = allocate(S, 1.5)  # 2 extra: the two smallest margins (0.01 and 0.01), not prompt 0
    assert sum(map(len, two)) == 4 + 2 and two[1] == [0, 1] and two[2] == [1, 2] and two[0] == [0]
    assert all(sorted(c) == [0, 1, 2] for c in allocate(S, 3.0))
    n = 101
    S = np.random.default_rng(0).normal(size=(n, 5))
    for budget in (1.0, 1.3, 2.0, 2.5, 5.0):
        cands = allocate(S, budget)
        assert sum(map(len, cands)) == n + round((budget - 1) * n)
        assert all(c == list(np.argsort(-S[i], kind="stable")[: len(c)]) for i, c in enumerate(cands))


def test_cascade_next_asks_only_unaccepted_prompts_within_room():
    S = np.array([[0.9, 0.5], [0.6, 0.55], [0.7, 0.1]])
    assert cascade_next(S, [[0], [0], [0]], [True, False, False], room=5) == [None, 1, 1]
    assert cascade_next(S, [[0], [0], [0]], [False, False, False], room=1) == [None, 1, None]  # smallest margin
    assert cascade_next(S, [[0, 1], [0], [0]], [False, False, False], room=0) == [None, None, None]


def test_calibrated_reward_is_independent_of_which_other_teachers_answered():
    Q = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4]])
    L = np.array([[-2.0, -1.0, -3.0], [-1.5, -2.5, -2.0]])
    scales = probe_scales(Q, L, 0.4, "minmax")
    assert scales == pytest.approx((0.5, 1.5))
    full = calibrated_reward(Q[0], L[0], 0.4, scales)
    pair = calibrated_reward(Q[0, :2], L[0, :2], 0.4, scales)
    assert pair == pytest.approx(full[:2])  # per-prompt min-max over 2 candidates would give (0, 1) or (1, 0)


def budget_config(tmp_path, **over):
    return recorded_config(tmp_path, probe={"size": 30, "seed": 0}, router={"kind": "ridge"}, **over)


@pytest.mark.parametrize("budget", [1.5, 2.0])
def test_budget_generation_count_is_exact_and_a_rerun_generates_nothing(tmp_path, budget):
    prompts = recorded_pool(tmp_path, n=90)
    cfg = parse_config(budget_config(tmp_path, generation={"budget": budget}))
    n, k, T = len(prompts), 30, 3
    routed = (n - k) + round((budget - 1) * (n - k))
    # Stop after routing, generate a part of the routed pairs, then resume: nothing is made twice.
    first = run_stages(cfg, ["probe", "score", "train-router", "route"])
    assert first.generated == k * T
    run = open_run(cfg)
    try:
        from persyn.stages.generate import generate_pairs
        from persyn.stages.load import load_stage
        from persyn.stages.work import stage_pairs

        load_stage(run)
        generate_pairs(run, stage_pairs(run, "generate")[:25], "partial")
        partial = run.generated
    finally:
        run.store.close()
    rest = run_stages(cfg)
    assert partial == 25 and rest.generated == routed - 25
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generations_total"] == summary["generations_expected"] == k * T + routed
    assert summary["budget"]["routed_generations"] == routed
    routing = read_jsonl(tmp_path / "run" / "routing.jsonl")
    assert sum(len(r["candidates"]) for r in routing if not r["probe"]) == routed
    assert all(r["teacher"] in r["candidates"] for r in routing)
    assert run_stages(cfg).generated == 0


def test_budget_n_is_generate_then_select(tmp_path):
    recorded_pool(tmp_path, n=60)
    cfg = parse_config(budget_config(tmp_path, generation={"budget": 3}))
    run = run_stages(cfg)
    assert run.generated == 60 * 3
    routing = read_jsonl(tmp_path / "run" / "routing.jsonl")
    assert all(sorted(r["candidates"]) == sorted(BEST.values()) for r in routing)
    run = open_run(cfg)
    try:
        prompts = run.store.prompts()
        rewards = rewards_for(run, prompts).reward
    finally:
        run.store.close()
    names = [t.name for t in cfg.teachers]
    kept = {r["id"]: r["teacher"] for r in routing}
    # every prompt keeps the argmax of Eq. 2 over all N responses: the oracle of Generate then Select
    assert all(kept[p.id] == names[int(np.nanargmax(rewards[i]))] for i, p in enumerate(prompts))


def math_pool(tmp_path, n=40):
    """Three recorded teachers answering sums; 'strong' is right on most, 'weak' on a few, 'mid' in between."""
    rows, answers = [], {"strong": [], "mid": [], "weak": []}
    for i in range(n):
        a, b = i, 2 * i + 1
        rows.append({"instruction": f"What is {a} plus {b}?", "reference": str(a + b)})
        for name, right in (("strong", i % 4 != 0), ("mid", i % 2 == 0), ("weak", i % 5 == 0)):
            value = a + b if right else a + b + 1
            answers[name].append({"instruction": rows[-1]["instruction"],
                                  "output": f"{a} + {b} = {value}. #### {value}"})
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, out in answers.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    return rows


def test_cascade_stops_at_the_first_accepted_answer(tmp_path):
    rows = math_pool(tmp_path)
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "math.jsonl"), "field": "instruction", "reference_field": "reference"},
        "teachers": [{"name": t, "backend": "recorded", "model": str(tmp_path / f"{t}.jsonl"),
                      "quality_field": None} for t in ("strong", "mid", "weak")],
        "quality": {"kind": "math_answer"},
        "reward": {"alpha": 0.0},
        "probe": {"size": 12},
        "generation": {"budget": 3, "accept_quality": 1.0},
    })
    run_stages(cfg)
    routing = [r for r in read_jsonl(tmp_path / "run" / "routing.jsonl") if not r["probe"]]
    right = {r["instruction"]: set() for r in rows}
    for name in ("strong", "mid", "weak"):
        for line in (tmp_path / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            ref = next(x["reference"] for x in rows if x["instruction"] == row["instruction"])
            if row["output"].endswith(f"#### {ref}"):
                right[row["instruction"]].add(name)
    for r in routing:
        order = sorted(r["scores"], key=lambda t: -r["scores"][t])
        accepted = [i for i, t in enumerate(order) if t in right[r["prompt"]]]
        stop = accepted[0] + 1 if accepted else len(order)
        assert r["candidates"] == order[:stop]  # asked in router order, and no further than the first right answer
        if accepted:
            assert r["teacher"] in right[r["prompt"]]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generations_total"] == 12 * 3 + sum(len(r["candidates"]) for r in routing)
    assert run_stages(cfg).generated == 0


def test_probe_strategies_diverse_and_adaptive_resume(tmp_path):
    recorded_pool(tmp_path, n=90)
    cfg = parse_config(recorded_config(tmp_path, probe={"size": 15, "strategy": "diverse"}))
    run_stages(cfg)
    probe = [r for r in read_jsonl(tmp_path / "run" / "routing.jsonl") if r["probe"]]
    topics = {next(t for t, w in (("math", "Compute"), ("poem", "poem"), ("code", "Python")) if w in r["prompt"])
              for r in probe}
    assert len(probe) == 15 and topics == {"math", "poem", "code"}

    cfg = parse_config(recorded_config(tmp_path, run_dir=str(tmp_path / "adaptive"),
                                       probe={"size": 15, "strategy": "adaptive", "max_size": 45}))
    first = run_stages(cfg)
    run = open_run(cfg)
    try:
        rounds = run.store.get_meta("probe_rounds")
        size = len(run.store.probe_ids())
    finally:
        run.store.close()
    assert rounds[0]["size"] == 15 and rounds[-1]["size"] == size and 15 <= size <= 45
    assert all(b["size"] == a["size"] + 15 for a, b in zip(rounds, rounds[1:], strict=False))
    assert first.generated == size * 3 + (90 - size)
    assert run_stages(cfg).generated == 0


@pytest.mark.parametrize(("over", "key"), [
    ({"generation": {"budget": 4}}, "generation.budget"),
    ({"generation": {"budget": 0.5}}, "generation.budget"),
    ({"probe": {"size": 10, "strategy": "clever"}}, "probe.strategy"),
    ({"generation": {"accept_quality": 1.0}, "reward": {"alpha": 1.0}, "student": {"model": "x"}},
     "generation.accept_quality"),
    ({"probe": {"size": 10, "max_size": 20}}, "probe.max_size"),
])
def test_bad_budget_and_probe_settings_name_the_key(tmp_path, over, key):
    recorded_pool(tmp_path, n=12)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(recorded_config(tmp_path, **over))


def test_unknown_router_kind_is_one_line_and_exit_2(tmp_path, capsys):
    recorded_pool(tmp_path, n=12)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(recorded_config(tmp_path, router={"kind": "magic"})))
    with pytest.raises(SystemExit) as exc:
        main(["run", str(config)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "router.kind" in err and "magic" in err and len(err.splitlines()) == 1

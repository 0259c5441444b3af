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
from persyn.run import RewardMatrices, open_run, rewards_for
from persyn.scoring.reward import reward_matrix, reward_rows
from persyn.stages import budget as budget_module
from persyn.stages.budget import allocate, candidate_rule, cascade_next, keep_best


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


def typed_pool(n_types: int = 6, copies: int = 8, seed: int = 0):
    """Prompts of a few types; a type fixes every teacher's quality and (up to a per-prompt level) learnability.
    Teachers 0 and 1 are asked, 2-4 are not. Teacher 1's quality is 0.05 higher, teacher 0's learnability 0.5
    higher; the unasked teachers' quality is flat on even types (so quality decides: keep 1) and spans [0, 1] on
    odd ones (learnability decides: keep 0). Returns (Q, L) of a probe holding each type once, and of held-out
    copies of the types, learnability moved by a per-prompt level."""
    rng = np.random.default_rng(seed)
    base = np.arange(n_types) * 0.9 / n_types  # the asked teachers' quality tells the types apart
    Qt = np.empty((n_types, 5))
    Qt[:, 0], Qt[:, 1] = base, base + 0.05
    Qt[0::2, 2:] = base[0::2, None] + [0.0, 0.02, 0.04]
    Qt[1::2, 2:] = [0.0, 0.5, 1.0]
    Lt = rng.normal(-2.0, 0.3, (n_types, 5))
    Lt[:, 1] = Lt[:, 0] - 0.5
    kinds = np.repeat(np.arange(n_types), copies)
    level = rng.normal(0, 1.0, len(kinds))[:, None]
    return (Qt, Lt), (Qt[kinds], Lt[kinds] + level)


def test_keep_best_is_the_true_best_when_the_probe_predicts_the_unasked_teachers_exactly():
    (pq, pl), (Q, L) = typed_pool()
    R = reward_matrix(Q, L, 0.4)
    asked = [[0, 1]] * len(Q)
    truth = [int(np.argmax(R[i, :2])) for i in range(len(Q))]
    rule = candidate_rule(pq, pl, 0.4, "minmax")
    assert keep_best(rule, asked, Q, L) == truth and set(truth) == {0, 1}
    # not a trivial choice: Eq. 2 over the two candidates alone, or one fixed scale per component, miss some
    alone = [int(np.argmax(r)) for r in reward_matrix(Q[:, :2], L[:, :2], 0.4)]
    qs, ls = np.ptp(pq, 1).mean(), np.ptp(pl, 1).mean()
    fixed = [int(np.argmax(0.6 * Q[i, :2] / qs + 0.4 * L[i, :2] / ls)) for i in range(len(Q))]
    assert alone != truth and fixed != truth


@pytest.mark.parametrize("method", ["minmax", "zscore", "rank", "none"])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_keep_best_with_every_teacher_asked_is_eq2(method, alpha):
    rng = np.random.default_rng(1)
    Q = np.round(rng.normal(size=(80, 4)), 1)  # rounding makes ties
    L = rng.normal(size=(80, 4))
    Q[rng.random(Q.shape) < 0.1] = np.nan  # not scored
    empty = rng.random(Q.shape) < 0.1
    empty[0] = True
    R = reward_matrix(Q if alpha < 1 else np.zeros_like(Q), L if alpha > 0 else None, alpha, method, worst=empty)
    rule = candidate_rule(Q[:40], L[:40], alpha, method, worst=empty[:40])
    order = [list(rng.permutation(4)) for _ in range(80)]  # candidate order does not matter, but for ties
    kept = keep_best(rule, order, Q, L, empty)
    for i, (k, cols) in enumerate(zip(kept, order, strict=True)):
        Rw = np.where(np.isnan(R[i]), -np.inf, R[i])
        assert Rw[k] == Rw.max()
        assert k == cols[int(np.argmax(Rw[cols]))]  # the earlier candidate on a tie
    # the rows of Eq. 2 the rule completes are reward_matrix's, for every normalisation
    Qf = np.where(empty, np.nan, Q if alpha < 1 else 0.0)
    Lf = np.where(empty, np.nan, L if alpha > 0 else 0.0)
    mine = reward_rows(Qf, Lf, alpha, method)
    ref = reward_matrix(Qf, Lf if alpha > 0 else None, alpha, method)
    np.testing.assert_allclose(np.nan_to_num(mine, nan=-9.0), np.nan_to_num(ref, nan=-9.0), atol=1e-12)


def test_keep_best_is_deterministic_and_ignores_which_prompts_share_a_call():
    (pq, pl), (Q, L) = typed_pool(seed=3)
    rule = candidate_rule(pq, pl, 0.4, "minmax")
    rng = np.random.default_rng(0)
    asked = [sorted(rng.choice(5, size=int(rng.integers(1, 5)), replace=False).tolist()) for _ in range(len(Q))]
    together = keep_best(rule, asked, Q, L)
    assert together == keep_best(rule, asked, Q, L)
    assert together == [keep_best(rule, [a], Q[i:i + 1], L[i:i + 1])[0] for i, a in enumerate(asked)]
    assert all(k in a for k, a in zip(together, asked, strict=True))


def test_stage_and_frontier_keep_candidates_with_the_same_function(tmp_path, monkeypatch, tiny_lm_dir):
    """Both call persyn.stages.budget.keep_best: replaced by one that keeps the last candidate, both follow it."""
    from persyn.config import RewardConfig
    from persyn.experiments.frontier import frontier_for_split

    calls = []

    def last(rule, asked, quality, learnability, empty=None):
        calls.append(len(asked))
        return [int(c[-1]) for c in asked]

    monkeypatch.setattr(budget_module, "keep_best", last)
    (pq, pl), (Q, L) = typed_pool()
    R = reward_matrix(Q, L, 0.4)
    S = np.tile([0.9, 0.8, 0.1, 0.0, 0.0], (len(Q), 1))
    rows = frontier_for_split(S, RewardMatrices([], pq, pl, reward_matrix(pq, pl, 0.4)), RewardMatrices([], Q, L, R),
                              reward=RewardConfig(alpha=0.4), budgets=[2.0])
    router = next(r for r in rows if r["method"] == "router")
    assert calls and router["mean_reward"] == pytest.approx(R[:, 1].mean())

    learnability_pool(tmp_path)
    calls.clear()
    cfg = parse_config(budget_config(tmp_path, generation={"budget": 2}, reward={"alpha": 0.4},
                                     student={"model": str(tiny_lm_dir)}))
    run_stages(cfg)
    routed = [r for r in read_jsonl(tmp_path / "run" / "routing.jsonl") if not r["probe"]]
    assert calls and routed and all(r["teacher"] == r["candidates"][-1] for r in routed)


def learnability_pool(tmp_path, n=60):
    """recorded_pool, each response with a recorded learnability (no student runs)."""
    recorded_pool(tmp_path, n=n)
    rng = np.random.default_rng(0)
    for teacher in BEST.values():
        path = tmp_path / f"{teacher}.jsonl"
        rows = [{**r, "learnability": float(rng.normal(-2, 0.5))} for r in read_jsonl(path)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_stage_keeps_what_the_rule_fitted_on_its_probe_keeps(tmp_path, tiny_lm_dir):
    learnability_pool(tmp_path)
    cfg = parse_config(budget_config(tmp_path, generation={"budget": 2}, reward={"alpha": 0.4},
                                     student={"model": str(tiny_lm_dir)}))
    run_stages(cfg)
    routing = {r["id"]: r for r in read_jsonl(tmp_path / "run" / "routing.jsonl")}
    run = open_run(cfg)
    try:
        prompts = run.store.prompts()
        m = rewards_for(run, prompts)
    finally:
        run.store.close()
    names = [t.name for t in cfg.teachers]
    probe = [i for i, p in enumerate(prompts) if routing[p.id]["probe"]]
    routed = [i for i, p in enumerate(prompts) if not routing[p.id]["probe"]]
    rule = candidate_rule(m.quality[probe], m.learnability[probe], 0.4, "minmax")
    asked = [[names.index(t) for t in routing[prompts[i].id]["candidates"]] for i in routed]
    assert sum(len(a) > 1 for a in asked) >= 10
    kept = keep_best(rule, asked, m.quality[routed], m.learnability[routed])
    assert [routing[prompts[i].id]["teacher"] for i in routed] == [names[k] for k in kept]


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

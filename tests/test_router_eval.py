"""Router metrics on a synthetic case with known values, and `persyn router-eval` over a recorded pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import recorded_config, recorded_pool

from persyn.cli import main
from persyn.experiments.router_eval import routing_metrics, split_prompts


def test_metrics_on_a_known_case():
    nan = np.nan
    R = np.array([[1.0, 0.0, 0.5],   # router picks 0: best -> hit1
                  [0.0, 1.0, 0.2],   # router picks 2: second best -> hit3 only
                  [0.2, 0.9, 0.1],   # router picks 1: best
                  [0.4, nan, 0.6],   # router's top (1) has no response: falls to 2, the best present
                  [nan, nan, nan]])  # no responses: left out
    scores = np.array([[3, 1, 2], [0, 1, 2], [0, 5, 1], [0, 9, 1], [1, 2, 3]], dtype=float)
    m = routing_metrics(scores, R, R_train=np.array([[0.0, 1.0, 0.0]]), names=["a", "b", "c"])
    assert m["prompts"] == 4
    assert m["hit1"] == 0.75 and m["hit3"] == 1.0
    assert m["router"] == pytest.approx((1.0 + 0.2 + 0.9 + 0.6) / 4)
    assert m["oracle"] == pytest.approx((1.0 + 1.0 + 0.9 + 0.6) / 4)
    # Per-teacher means: a (1+0+0.2+0.4)/4 = 0.4, b (0+1+0.9)/3 = 0.633, c (0.5+0.2+0.1+0.6)/4 = 0.35.
    assert m["best_single_teacher"] == "b" and m["best_single"] == pytest.approx(1.9 / 3)
    assert m["random"] == pytest.approx((0.5 + 0.4 + 0.4 + 0.5) / 4)
    assert m["gap_captured"] == pytest.approx((0.675 - 1.9 / 3) / (0.875 - 1.9 / 3))
    assert m["probe_pick_teacher"] == "b" and m["probe_pick"] == pytest.approx(1.9 / 3)
    assert m["routed_shares"] == {"a": 0.25, "b": 0.25, "c": 0.5}


def test_gap_is_undefined_when_one_teacher_is_always_best():
    R = np.array([[1.0, 0.0], [1.0, 0.5]])
    m = routing_metrics(np.array([[1.0, 0.0], [0.0, 1.0]]), R)
    assert m["gap_captured"] is None and m["hit1"] == 0.5


def test_split_keeps_held_out_outside_the_training_pool():
    from persyn.prompts import Prompt

    prompts = [Prompt(f"p{i}", f"t{i}") for i in range(30)]
    probe = {f"p{i}" for i in range(10)}
    pool, held = split_prompts(prompts, probe, held_out=8, pool_size=15, seed=0)
    assert len(held) == 8 and len(pool) == 15
    assert not {p.id for p in held} & probe and not {p.id for p in held} & {p.id for p in pool}
    assert {p.id for p in pool[:10]} == probe  # the probe comes first


def test_router_eval_command_learns_the_topic_map(tmp_path, capsys, tiny_lm_dir):
    recorded_pool(tmp_path, n=90)
    cfg = recorded_config(tmp_path, probe={"size": 30},
                          compare={"router_eval": {"held_out": 30, "probe_sizes": [6, 30]}})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    main(["router-eval", str(config), "--backbone", "all-minilm-l6-v2", "--backbone", str(tiny_lm_dir)])
    out = capsys.readouterr().out
    assert "held-out" in out and "Hit@1" in out
    result = json.loads((tmp_path / "run" / "router_eval.json").read_text())
    assert result["held_out"] == 30 and result["generations_needed"] == (30 + 30) * 3
    rows = {(r["backbone"], r["probe_size"]): r for r in result["results"]}
    assert len(rows) == 4
    minilm = rows[("all-minilm-l6-v2", 30)]
    # Topics decide the best teacher; a sentence encoder sees topics, so routing beats any single teacher.
    assert minilm["hit1"] > 0.8 and minilm["gap_captured"] > 0.5
    assert minilm["oracle"] >= minilm["router"] >= minilm["random"]
    # Everything is in the store now: a second run generates nothing.
    main(["router-eval", str(config), "--probe-size", "30"])
    assert "0 new" in capsys.readouterr().out


def test_frontier_spans_route_then_generate_to_generate_then_select(tmp_path, capsys):
    recorded_pool(tmp_path, n=60)
    cfg = recorded_config(tmp_path, probe={"size": 20},
                          compare={"router_eval": {"held_out": 40, "seeds": [0, 1], "budgets": [1, 2, 3]}})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    main(["router-eval", str(config), "--kind", "ridge", "--kind", "bt", "--strategy", "random",
          "--strategy", "diverse"])
    assert "cost-reward frontier" in capsys.readouterr().out
    rows = json.loads((tmp_path / "run" / "frontier.json").read_text())
    assert (tmp_path / "run" / "router_eval_frontier.png").stat().st_size > 10_000
    by = {(r["method"], r["budget"]): r for r in rows}
    oracle = by[("oracle", 3.0)]["mean_reward"]
    for method in ("persyn ridge (random probe)", "persyn bt (diverse probe)", "top-k by probe mean"):
        assert [by[(method, b)]["generations_per_prompt"] for b in (1.0, 2.0, 3.0)] == [1.0, 2.0, 3.0]
        assert by[(method, 3.0)]["mean_reward"] == pytest.approx(oracle)  # budget N keeps the oracle's choice
        assert by[(method, 3.0)]["gap_captured"] == pytest.approx(1.0)
        assert by[(method, 2.0)]["seeds"] == 2 and len(by[(method, 2.0)]["gain_per_seed"]) == 2
    # the topic map is learnable: the ridge router beats the probe's best single teacher at budget 1
    assert by[("persyn ridge (random probe)", 1.0)]["gap_captured"] > 0.5
    assert by[("best single", 1.0)]["gap_captured"] == 0.0 and by[("oracle", 3.0)]["gap_captured"] == 1.0


def test_the_cascade_asks_in_router_order_until_accepted_or_out_of_room():
    from persyn.stages.budget import cascade, first_candidates

    S = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.6], [0.7, 0.6, 0.5]])
    Q = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    first = first_candidates(S, 3.0, cascade=True)
    assert first == [[0], [1], [0]]
    assert cascade(S, first, 1.0, 9, lambda _: Q) == [[0, 1], [1], [0, 1, 2]]
    assert cascade(S, first, 1.0, 4, lambda _: Q) == [[0], [1], [0, 1]]  # 1 spare generation: the smallest margin


RULES = {"persyn.stages.budget": ("first_candidates", "cascade", "candidate_rule", "keep_best"),
         "persyn.stages.probe": ("choose_probe", "next_probe_size")}


def test_router_eval_and_the_frontier_replay_the_stages_own_rules(monkeypatch):
    """The frontier calls the generate stage's candidate, cascade and keep rules and the probe stage's choice and
    growth rules, and names none of the primitives they are built from (so it cannot hold a copy of its own)."""
    import ast
    import importlib
    from pathlib import Path

    from persyn.config import parse_config
    from persyn.experiments import frontier, router_eval
    from persyn.run import RewardMatrices

    calls: dict[str, int] = {}
    for module, names in RULES.items():
        mod = importlib.import_module(module)
        for name in names:
            def spy(*a, _f=getattr(mod, name), _n=name, **k):
                calls[_n] = calls.get(_n, 0) + 1
                return _f(*a, **k)
            monkeypatch.setattr(mod, name, spy)
    rng = np.random.default_rng(0)
    X, Q, L = rng.normal(size=(40, 8)), rng.integers(0, 2, (40, 3)).astype(float), rng.normal(size=(40, 3))
    R = 0.6 * Q + 0.4 * L
    cfg = parse_config({"run_dir": "unused", "prompts": {"path": "unused.jsonl"},
                        "teachers": [{"name": n, "backend": "recorded", "model": "x"} for n in "abc"],
                        "student": {"model": "unused"}, "generation": {"accept_quality": 1.0}})
    rows = router_eval.cost_reward_frontier(cfg, X, RewardMatrices([], Q, L, R), 16, ["ridge"],
                                            ["random", "diverse", "adaptive"], [0], [1.0, 2.0])
    assert {r["method"] for r in rows} >= {"persyn ridge (adaptive probe) cascade (accept quality >= 1)"}
    assert set(calls) == {n for names in RULES.values() for n in names}, calls
    primitives = {"allocate", "cascade_next", "best_candidate", "calibrated_reward", "kcenter_order", "draw_probe"}
    for module in (frontier, router_eval):
        names = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(ast.parse(Path(module.__file__)
                 .read_text())) if isinstance(n, (ast.Name, ast.Attribute))}
        assert not names & primitives, (module.__name__, names & primitives)

"""Selection strategies on recorded pools whose qualities and learnabilities are known in advance."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
from helpers import read_jsonl

from persyn.config import parse_config
from persyn.errors import ConfigError, PersynError
from persyn.experiments.selection import build_datasets, prepare_inputs
from persyn.experiments.strategies import SelectionInputs, car_values, make_strategy
from persyn.pipeline import run_stages
from persyn.run import RewardMatrices, open_run
from persyn.stages.load import load_stage

# teacher -> (family, mean quality, mean learnability). Strong = a; CAR(beta=1) = b: 0.6/1.5 > 0.3/1.2 > 0.9/4.
POOL = {"a": ("x", 0.9, -3.0), "b": ("y", 0.6, -0.5), "c": ("y", 0.3, -0.2)}


def write_pool(tmp_path, n=200, seed=0):
    rng = random.Random(seed)
    prompts = [f"Question {i}: tell me about {rng.randint(0, 10**6)}." for i in range(n)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
    table = {}
    for t, (_, q, lrn) in POOL.items():
        rows = []
        for p in prompts:
            row = {"instruction": p, "output": f"{t}: {p}", "quality": q + rng.uniform(-0.25, 0.25),
                   "learnability": lrn + rng.uniform(-0.15, 0.15)}
            table[(p, t)] = (row["quality"], row["learnability"])
            rows.append(row)
        (tmp_path / f"{t}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prompts, table


def pool_config(tmp_path, tiny_lm_dir, **compare):
    return parse_config({
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "prompts.jsonl"), "field": "instruction"},
        "teachers": [{"name": t, "backend": "recorded", "model": str(tmp_path / f"{t}.jsonl"), "family": fam}
                     for t, (fam, _, _) in POOL.items()],
        "student": {"model": str(tiny_lm_dir), "family": "y"},
        "quality": {"kind": "field"},
        "reward": {"alpha": 0.4},
        "probe": {"size": 40},
        "router": {"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 10}},
        "compare": compare,
    })


@pytest.fixture
def pool(tmp_path, tiny_lm_dir):
    prompts, table = write_pool(tmp_path)
    cfg = pool_config(tmp_path, tiny_lm_dir)
    run_stages(cfg, ("probe", "score"))
    run = open_run(cfg)
    yield run, load_stage(run), table
    run.store.close()


def by_hand_rewards(prompts, table, alpha=0.4):
    """Eq. 2 with per-prompt min-max normalisation, written out independently of persyn.scoring."""
    names = list(POOL)
    out = []
    for p in prompts:
        q = np.array([table[(p, t)][0] for t in names])
        lrn = np.array([table[(p, t)][1] for t in names])
        qn, ln = (q - q.min()) / (q.max() - q.min()), (lrn - lrn.min()) / (lrn.max() - lrn.min())
        out.append((1 - alpha) * qn + alpha * ln)
    return np.array(out)


def test_oracle_is_the_per_prompt_argmax_and_needs_every_response(pool, tmp_path):
    run, prompts, table = pool
    n, k = len(prompts), 40
    generated_before = run.generated
    oracle = make_strategy("oracle")
    inputs = prepare_inputs(run, prompts, [oracle])
    assert run.generated - generated_before == (n - k) * 3  # up front, and only what the probe lacked
    sel = oracle.select(inputs)
    expected = by_hand_rewards([p.text for p in prompts], table).argmax(1)
    assert sel.teachers == [list(POOL)[i] for i in expected]
    assert len(set(sel.teachers)) == 3  # the per-prompt choice really varies
    summary = build_datasets(run, prompts, inputs, {"oracle": sel}, tmp_path)["oracle"]
    assert run.generated - generated_before == (n - k) * 3  # the dataset's responses were all there
    assert summary["needs_all_responses"] and summary["generations_needed"] == n * 3 == summary["generations"]
    # Nothing the store holds is generated again.
    again = run.generated
    build_datasets(run, prompts, inputs, {"strong": make_strategy("strong").select(inputs)}, tmp_path)
    assert run.generated == again


def test_car_uses_the_formula_over_every_prompt(pool):
    run, prompts, table = pool
    car_strategy = make_strategy("car")
    sel = car_strategy.select(prepare_inputs(run, prompts, [car_strategy]))
    names = list(POOL)
    q = np.array([[table[(p.text, t)][0] for t in names] for p in prompts])
    lrn = np.array([[table[(p.text, t)][1] for t in names] for p in prompts])
    car = q.mean(0) / (1 + 1.0 * (-lrn).mean(0))
    assert sel.info["teacher"] == names[int(car.argmax())] == "b"
    assert set(sel.teachers) == {"b"}
    np.testing.assert_allclose([sel.info["car"][t] for t in names], car)
    np.testing.assert_allclose(car_values(q, lrn, 0.0), q.mean(0))  # beta = 0 is plain mean quality


def test_strong_family_strong_and_random(pool, tmp_path):
    run, prompts, _ = pool
    strategies = [make_strategy(n) for n in ("strong", "family-strong", "random")]
    inputs = prepare_inputs(run, prompts, strategies)
    strong, fam, rnd = (s.select(inputs) for s in strategies)
    assert set(strong.teachers) == {"a"}
    assert set(fam.teachers) == {"b"}  # the strongest of the student's family y = {b, c}
    shares = [rnd.teachers.count(t) / len(prompts) for t in POOL]
    assert all(abs(s - 1 / 3) < 0.1 for s in shares)
    assert make_strategy("random").select(inputs).teachers == rnd.teachers  # seeded
    summary = build_datasets(run, prompts, inputs, {"strong": strong}, tmp_path)["strong"]
    assert summary["rows"] == len(prompts) and summary["teacher_counts"] == {"a": 200, "b": 0, "c": 0}
    assert summary["generations_needed"] == len(prompts) + 40 * 2  # its dataset plus the probe it reads
    rows = read_jsonl(tmp_path / "strong" / "dataset.jsonl")
    assert rows[0]["messages"][1]["content"].startswith("a: ") and rows[0]["source"] == "strong"
    assert [r["id"] for r in rows] == [p.id for p in prompts]


def test_mix_ratio_is_one_to_four_within_tolerance(pool):
    run, prompts, _ = pool
    mix = make_strategy("mix")
    sel = mix.select(prepare_inputs(run, prompts, [mix]))
    assert sel.info["strong"] == "a" and sel.info["weak"] == "c"
    assert set(sel.teachers) == {"a", "c"}
    assert abs(sel.teachers.count("a") / len(prompts) - 0.2) < 0.08


def test_family_strong_without_a_family_is_a_config_error(tmp_path, tiny_lm_dir):
    write_pool(tmp_path, n=50)
    cfg = pool_config(tmp_path, tiny_lm_dir)
    cfg.student.family = "z"
    run_stages(cfg, ("probe", "score"))
    run = open_run(cfg)
    family_strong = make_strategy("family-strong")
    generated = run.generated
    with pytest.raises(ConfigError, match="student.family"):  # checked before anything is generated
        prepare_inputs(run, load_stage(run), [family_strong, make_strategy("oracle")])
    assert run.generated == generated
    with pytest.raises(ConfigError, match="student.family"):
        family_strong.select(SelectionInputs.from_config(cfg, 50))
    with pytest.raises(ConfigError, match="compare.strategies"):
        make_strategy("best")
    run.store.close()


def test_unknown_strategy_in_config_names_the_key(tmp_path, tiny_lm_dir):
    write_pool(tmp_path, n=5)
    with pytest.raises(ConfigError, match="compare.strategies"):
        pool_config(tmp_path, tiny_lm_dir, strategies=["persyn", "stronk"])


def test_strategies_are_pure_functions_of_the_matrices(tiny_lm_dir, tmp_path):
    """No run, no store: hand-made matrices decide every choice."""
    write_pool(tmp_path, n=5)
    cfg = pool_config(tmp_path, tiny_lm_dir, strong_teacher=None, seed=3)
    quality = np.array([[0.9, 0.5, 0.1], [0.8, 0.6, 0.2]])  # a strongest, c weakest on the probe
    learn = np.array([[-3.0, -0.5, -0.2], [-3.0, -0.4, -0.3]])
    reward = np.array([[0.2, 0.9, 0.1], [0.7, 0.1, 0.3]])
    matrices = RewardMatrices([], quality, learn, reward)
    inputs = replace(SelectionInputs.from_config(cfg, 2), probe=matrices, everything=matrices, routes=["c", "b"])
    assert make_strategy("oracle").select(inputs).teachers == ["b", "a"]
    assert make_strategy("strong").select(inputs).teachers == ["a", "a"]
    assert make_strategy("family-strong").select(inputs).teachers == ["b", "b"]  # y = {b, c}
    # persyn takes the routes `persyn run` stored, not any reward: here they disagree with every reward rule
    assert make_strategy("persyn").select(inputs).teachers == ["c", "b"]
    with pytest.raises(PersynError, match="1 prompts are not routed"):
        make_strategy("persyn").select(replace(inputs, routes=["c", None]))
    mix = make_strategy("mix").select(inputs)
    assert (mix.info["strong"], mix.info["weak"]) == ("a", "c") and set(mix.teachers) <= {"a", "c"}
    car = car_values(quality, learn, 1.0)
    assert make_strategy("car").select(inputs).info["teacher"] == list(POOL)[int(car.argmax())]
    many = replace(inputs, n_prompts=600)
    picks = make_strategy("random").select(many).teachers
    again = make_strategy("random").select(replace(many, options=cfg.compare.model_copy())).teachers
    other = make_strategy("random").select(replace(many, options=cfg.compare.model_copy(update={"seed": 4})))
    assert picks == again and picks != other.teachers  # seeded by compare.seed, and by nothing else
    assert all(abs(picks.count(n) / 600 - 1 / 3) < 0.06 for n in POOL)  # uniform over the teachers

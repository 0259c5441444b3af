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
from persyn.experiments.selection_rules import car_values
from persyn.experiments.strategies import SelectionInputs, make_strategy
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


def test_single_teacher_strategies_and_their_names(pool, tmp_path, tiny_lm_dir):
    run, prompts, _ = pool
    singles = [make_strategy(f"teacher:{t}") for t in POOL]
    inputs = prepare_inputs(run, prompts, singles)
    selections = {s.name: s.select(inputs) for s in singles}
    assert [set(sel.teachers) for sel in selections.values()] == [{t} for t in POOL]
    summaries = build_datasets(run, prompts, inputs, selections, tmp_path)
    for t in POOL:
        s = summaries[f"teacher:{t}"]
        assert s["rows"] == len(prompts) and s["teacher_counts"][t] == len(prompts)
        assert s["generations_needed"] == len(prompts)  # reads nothing but its own responses
        assert (tmp_path / f"teacher_{t}" / "dataset.jsonl").is_file()  # no ':' in the folder name
    with pytest.raises(ConfigError, match="compare.strategies"):
        pool_config(tmp_path, tiny_lm_dir, strategies=["teacher:zz"])
    with pytest.raises(ConfigError, match="compare.strategies"):
        make_strategy("teacher:zz").check(inputs)


def test_oracle_ties_are_drawn_among_the_tied_teachers():
    from persyn.experiments.selection_rules import oracle_choice

    reward = np.array([[0.5, 0.5, 0.0]] * 200 + [[0.0, 1.0, 1.0]])
    names = ["a", "b", "c"]
    assert oracle_choice(reward, names) == ["a"] * 200 + ["b"]  # no seed: the first listed
    drawn = oracle_choice(reward, names, seed=0)
    assert set(drawn[:200]) == {"a", "b"} and 70 < drawn.count("a") < 130 and drawn[200] in ("b", "c")
    assert drawn == oracle_choice(reward, names, seed=0) != oracle_choice(reward, names, seed=1)
    assert oracle_choice(np.array([[0.1, 0.9, np.nan]]), names, seed=0) == ["b"]  # no tie: the argmax


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_oracle_at_alpha_0_and_1(tmp_path, tiny_lm_dir, alpha):
    """alpha 0: the best quality (ties drawn); alpha 1: the best learnability, and quality is never computed."""
    import sqlite3

    prompts, table = write_pool(tmp_path, n=60)
    cfg = pool_config(tmp_path, tiny_lm_dir)
    cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"alpha": alpha})})
    run_stages(cfg, ("probe", "score"))
    run = open_run(cfg)
    oracle = make_strategy("oracle")
    sel = oracle.select(prepare_inputs(run, load_stage(run), [oracle]))
    column = 0 if alpha == 0 else 1
    best = [max(POOL, key=lambda t: table[(p, t)][column]) for p in prompts]
    assert sel.teachers == best and sel.info["alpha"] == alpha
    with sqlite3.connect(tmp_path / "run" / "persyn.sqlite") as db:
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM scores GROUP BY kind").fetchall())
    assert kinds == ({"quality": 60 * 3} if alpha == 0 else {"learnability": 60 * 3})
    run.store.close()


def test_verified_strategy_drops_rows_below_min_quality(tmp_path, tiny_lm_dir):
    prompts, table = write_pool(tmp_path, n=60)
    cfg = pool_config(tmp_path, tiny_lm_dir)
    cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"min_quality": 0.8})})
    run_stages(cfg, ("probe", "score"))
    run = open_run(cfg)
    names = ["strong+verified", "teacher:b+verified", "strong"]
    strategies = [make_strategy(n) for n in names]
    inputs = prepare_inputs(run, load_stage(run), strategies)
    summaries = build_datasets(run, load_stage(run), inputs, {s.name: s.select(inputs) for s in strategies},
                               tmp_path / "out")
    for name, teacher in (("strong+verified", "a"), ("teacher:b+verified", "b")):
        keep = [p for p in prompts if table[(p, teacher)][0] >= 0.8]
        rows = [json.loads(line) for line in (tmp_path / "out" / name.replace(":", "_") / "dataset.jsonl")
                .read_text().splitlines()]
        assert [r["messages"][0]["content"] for r in rows] == keep and 0 < len(keep) < 60
        s = summaries[name]
        assert s["rows"] == len(keep) and s["dropped_below_min_quality"] == 60 - len(keep) and s["missing"] == []
    assert summaries["strong"]["rows"] == 60 and "dropped_below_min_quality" not in summaries["strong"]
    with pytest.raises(ConfigError, match="export.min_quality"):
        pool_config(tmp_path, tiny_lm_dir, strategies=["persyn+verified"])  # no min_quality set
    run.store.close()


def test_oracle_at_other_alphas_from_the_same_scores(pool, tiny_lm_dir, tmp_path):
    """oracle@ALPHA re-weighs the stored scores: @0.4 is the config's oracle, @0 the best quality, @1 the best
    learnability, with no new generation or score."""
    run, prompts, table = pool
    names = ["oracle", "oracle@0.40", "oracle@0", "oracle@1"]
    strategies = [make_strategy(n) for n in names]
    inputs = prepare_inputs(run, prompts, strategies)
    sel = {s.name: s.select(inputs).teachers for s in strategies}
    assert sel["oracle@0.40"] == sel["oracle"]  # named as the config spells it
    for name, column in (("oracle@0", 0), ("oracle@1", 1)):
        assert sel[name] == [max(POOL, key=lambda t: table[(p.text, t)][column]) for p in prompts]
    assert len({tuple(v) for v in sel.values()}) == 3
    with pytest.raises(ConfigError, match="expected oracle@ALPHA"):
        pool_config(tmp_path, tiny_lm_dir, strategies=["oracle@2"])
    zero = replace(inputs, reward=inputs.reward.model_copy(update={"alpha": 0.0}))
    with pytest.raises(ConfigError, match="reward.alpha"):
        make_strategy("oracle@0.5").check(zero)

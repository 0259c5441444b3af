"""Config validation and prompt readers: bad input gets a located one-line error."""

from __future__ import annotations

import json
import re

import pytest

from persyn.config import PromptsConfig, load_config, parse_config
from persyn.errors import ConfigError, InputError
from persyn.prompts import load_prompts


def base_config(tmp_path, **over):
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        prompts.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(prompts)},
        "teachers": [{"name": "t1", "backend": "recorded", "model": "x"},
                     {"name": "t2", "backend": "recorded", "model": "y"}],
        "reward": {"alpha": 0.0},
        "quality": {"kind": "field"},
    }
    cfg.update(over)
    return cfg


def test_valid_config_round_trips(tmp_path):
    cfg = parse_config(base_config(tmp_path))
    assert cfg.reward.alpha == 0.0
    assert cfg.probe.resolve(100) == 5  # default fraction 0.05
    assert [t.name for t in cfg.teachers] == ["t1", "t2"]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"reward": {"alpha": "lots"}}, "reward.alpha"),
        ({"reward": {"alpha": 2}}, "reward.alpha"),
        ({"router": {"bt": {"epochs": 10}, "colour": "red"}}, "router.colour: unknown key"),
        ({"router": {"kind": "bt", "epochs": 10}}, "router: router.epochs is now router.bt.epochs"),
        ({"router": {"ridge": {"lr": 0.1}}}, "router.ridge.lr: unknown key"),
        ({"teachers": [{"name": "a", "model": "m"}]}, "routing needs at least two teachers"),
        ({"teachers": [{"name": "a"}, {"name": "a"}]}, "given twice"),
        ({"teachers": [{"name": "a"}, {"name": "b", "tempreature": 1}]}, "teachers[b].tempreature: unknown key"),
        ({"probe": {"size": 3, "fraction": 0.1}}, "not both"),
        ({"reward": {"alpha": 0.4}}, "needs a student"),
    ],
)
def test_bad_config_names_the_key(tmp_path, over, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(base_config(tmp_path, **over))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_errors_are_located(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run_dir: x\nprompts: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = write(tmp_path, "a.jsonl", b'{"prompt": "x"}\n{"prompt": \n')
    with pytest.raises(InputError, match=r"a.jsonl:2: malformed JSON"):
        load_prompts(PromptsConfig(path=path))
    path = write(tmp_path, "b.jsonl", b'{"prompt": "x"}\n{"question": "y"}\n')
    with pytest.raises(InputError, match=r"b.jsonl:2 \[prompt\]: missing prompt field"):
        load_prompts(PromptsConfig(path=path))
    path = write(tmp_path, "c.jsonl", b'{"prompt": "x"}\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(InputError, match=r"c.jsonl:2: not UTF-8"):
        load_prompts(PromptsConfig(path=path))
    path = write(tmp_path, "d.jsonl", b'{"prompt": "x"}\n{"prompt": "   "}\n')
    with pytest.raises(InputError, match=r"d.jsonl:2 \[prompt\]: empty prompt"):
        load_prompts(PromptsConfig(path=path))
    path = write(tmp_path, "e.jsonl", b'{"prompt": "x", "answer": "1"}\n{"prompt": "y"}\n')
    with pytest.raises(InputError, match=r"e.jsonl:2 \[answer\]: missing"):
        load_prompts(PromptsConfig(path=path, reference_field="answer"), require_reference=True)


def test_duplicates_are_removed_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, "a.jsonl", b'{"prompt": "x"}\n{"prompt": "y"}\n{"prompt": "x"}\n')
    prompts = load_prompts(PromptsConfig(path=path))
    assert [p.text for p in prompts] == ["x", "y"]
    assert "removed 1 duplicate" in caplog.text


def test_all_formats_read_the_same_prompts(tmp_path):
    import pandas as pd

    rows = [{"q": f"question {i}", "a": str(i), "key": f"k{i}"} for i in range(5)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    got = [
        load_prompts(PromptsConfig(path=str(tmp_path / f"p.{ext}"), field="q", id_field="key",
                                   reference_field="a"))
        for ext in ("jsonl", "json", "csv", "parquet")
    ]
    assert all(g == got[0] for g in got)
    assert [p.id for p in got[0]] == [f"k{i}" for i in range(5)]
    limited = load_prompts(PromptsConfig(path=str(tmp_path / "p.csv"), field="q", limit=3, seed=1))
    assert len(limited) == 3 and limited == load_prompts(PromptsConfig(path=str(tmp_path / "p.csv"), field="q",
                                                                      limit=3, seed=1))


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unsupported prompt file type"):
        load_prompts(PromptsConfig(path=str(tmp_path / "p.txt")))
    with pytest.raises(InputError, match="not found"):
        load_prompts(PromptsConfig(path=str(tmp_path / "p.jsonl")))


def test_gym_prompts_are_made_offline():
    pytest.importorskip("reasoning_gym")
    prompts = load_prompts(PromptsConfig(path="gym:basic_arithmetic+leg_counting:6:3", reference_field="answer"),
                           require_reference=True)
    assert len(prompts) == 6
    assert all(p.reference for p in prompts)
    again = load_prompts(PromptsConfig(path="gym:basic_arithmetic+leg_counting:6:3", reference_field="answer"))
    assert prompts == again


def test_dtype_is_checked_with_its_key_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\nprompts: {path: p.jsonl}\nteachers: [{name: a, model: m}, {name: b, model: m}]\n"
                    "generation: {dtype: bf16}\n")
    with pytest.raises(ConfigError, match="generation.dtype"):
        load_config(path)


def test_gym_task_settings_reach_the_task_and_templates_wrap_the_prompt():
    pytest.importorskip("reasoning_gym")
    cfg = PromptsConfig(path="gym:chain_sum(max_terms=2,max_digits=1)+gcd:8:3", reference_field="entry",
                        template="Q: {prompt}\nEnd with Answer:")
    prompts = load_prompts(cfg, require_reference=True)
    sums = [p for p in prompts if json.loads(p.reference)["task"] == "chain_sum"]
    assert len(sums) == 4 and len(prompts) == 8
    for p in sums:  # two one-digit terms: "a + b =" or "a - b ="
        expr = p.text.split(":", 1)[1].split("=")[0]
        assert len(re.findall(r"\d+", expr)) == 2 and all(len(d) == 1 for d in re.findall(r"\d+", expr))
    assert all(p.text.startswith("Q: ") and p.text.endswith("\nEnd with Answer:") for p in prompts)
    with pytest.raises(InputError, match="reasoning-gym task 'chain_sum'"):
        load_prompts(PromptsConfig(path="gym:chain_sum(no_such_setting=1):4:0"))
    with pytest.raises(InputError, match="expected key=value"):
        load_prompts(PromptsConfig(path="gym:chain_sum(max_terms):4:0"))


def test_compare_pairs_name_strategies_of_the_run(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\nprompts: {path: p.jsonl}\nteachers: [{name: a, model: m}, {name: b, model: m}]\n"
                    "student: {model: s}\ncompare: {strategies: [persyn, strong], pairs: [[persyn, oracle]]}\n")
    with pytest.raises(ConfigError, match="'oracle' is not one of compare.strategies"):
        load_config(path)
    path.write_text(path.read_text().replace("[persyn, oracle]", "[persyn, strong]"))
    assert load_config(path).compare.pairs == [("persyn", "strong")]

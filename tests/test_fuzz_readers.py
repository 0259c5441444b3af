"""Property tests: prompt-file readers under fuzzed input, and the router's preference pairs.

Whatever a .jsonl/.json/.csv/.parquet file holds, `load_prompts` returns valid prompts or raises InputError naming
the file; nothing else escapes. (Normalisation, Eq. 2 and per-row pairs are in test_reward_props.py.)
"""

from __future__ import annotations

import csv
import io
import json
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from persyn.config import PromptsConfig
from persyn.errors import InputError
from persyn.prompts import Prompt, load_prompts
from persyn.router.bt import BTRouter
from persyn.router.bt import preference_pairs as bt_pairs

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FIELDS = ["prompt", "answer", "id", "", "prompt ", "\ufeffprompt"]
configs = st.builds(
    lambda field, ref, id_field, limit, require: (PromptsConfig(path="", field=field, reference_field=ref,
                                                                id_field=id_field, limit=limit), require),
    st.sampled_from(["prompt", "q"]), st.sampled_from([None, "answer"]), st.sampled_from([None, "id"]),
    st.sampled_from([None, 1, 3]), st.booleans())


def check_read(path, cfg_and_require) -> list[Prompt] | None:
    """load_prompts gives valid prompts or an InputError that names the file; returns the prompts or None."""
    cfg, require = cfg_and_require
    cfg = cfg.model_copy(update={"path": str(path)})
    require = require and cfg.reference_field is not None
    try:
        prompts = load_prompts(cfg, require_reference=require)
    except InputError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message
        return None
    assert prompts and all(isinstance(p, Prompt) and p.text.strip() for p in prompts)
    assert len({p.text for p in prompts}) == len(prompts) == len({p.id for p in prompts})
    if cfg.limit is not None:
        assert len(prompts) <= cfg.limit
    if require:
        assert all(p.reference and p.reference.strip() for p in prompts)
    for p in prompts:
        p.text.encode("utf-8")  # storable: no lone surrogates
    assert load_prompts(cfg, require_reference=require) == prompts  # deterministic
    return prompts


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]),
       cfg=configs)
@example(data=b'{"prompt": 1' + b"0" * 5000 + b"}\n", suffix=".jsonl", cfg=(PromptsConfig(path=""), False))
@example(data=b"[" * 50_000, suffix=".json", cfg=(PromptsConfig(path=""), False))
@example(data=b'{"prompt": "\\udc00"}', suffix=".jsonl", cfg=(PromptsConfig(path=""), False))
@example(data=b"prompt\n\x00\n", suffix=".csv", cfg=(PromptsConfig(path=""), False))
@example(data=b"\xef\xbb\xbfprompt\nhello\n", suffix=".csv", cfg=(PromptsConfig(path=""), False))
@example(data=b"PAR1\x00\x00PAR1", suffix=".parquet", cfg=(PromptsConfig(path=""), False))
def test_random_bytes(tmp_path, data, suffix, cfg):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    check_read(path, cfg)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS + ["q"]), inner, max_size=4)), max_leaves=12)
rows = st.lists(st.one_of(st.dictionaries(st.sampled_from(FIELDS + ["q"]), json_values, max_size=4), json_values),
                max_size=8)


@FUZZ
@given(doc=rows, wrap=st.booleans(), cfg=configs)
def test_random_json_documents(tmp_path, doc, wrap, cfg):
    (tmp_path / "fuzz.json").write_text(json.dumps({"data": doc} if wrap else doc))
    check_read(tmp_path / "fuzz.json", cfg)
    (tmp_path / "fuzz.jsonl").write_text("".join(json.dumps(row) + "\n" for row in doc))
    got = check_read(tmp_path / "fuzz.jsonl", cfg)
    # Rows that are objects with a non-blank text prompt, and nothing else in the file to object to, all load.
    c = cfg[0]
    if doc and c.id_field is None and c.reference_field is None and \
            all(isinstance(r, dict) and isinstance(r.get(c.field), str) and r[c.field].strip() for r in doc):
        unique = list(dict.fromkeys(r[c.field] for r in doc))
        assert got is not None
        if c.limit is None:
            assert [p.text for p in got] == unique
        else:
            assert len(got) == min(c.limit, len(unique)) and {p.text for p in got} <= set(unique)


cells = st.text(alphabet=string.printable + "éß\u2028", max_size=10)


@FUZZ
@given(header=st.lists(st.sampled_from(FIELDS + ["q", "x"]), min_size=1, max_size=4),
       body=st.lists(st.lists(cells, max_size=5), max_size=8), cfg=configs)
def test_random_csv(tmp_path, header, body, cfg):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    (tmp_path / "fuzz.csv").write_text(buf.getvalue(), encoding="utf-8")
    check_read(tmp_path / "fuzz.csv", cfg)


# ---- router preference pairs ---------------------------------------------------------------------------------

reward_rows = st.integers(2, 5).flatmap(lambda t: st.lists(
    st.lists(st.one_of(st.integers(-3, 3).map(float), st.just(np.nan)), min_size=t, max_size=t),
    min_size=0, max_size=6))


@given(reward_rows, st.floats(0.01, 100), st.floats(-50, 50))
def test_router_pairs_are_every_strict_win_per_prompt(R, scale, shift):
    R = np.array(R, dtype=np.float64).reshape(len(R), -1) if R else np.zeros((0, 3))
    pairs = bt_pairs(R)
    assert pairs.dtype == np.int64 and pairs.shape[1] == 3
    expected = {(p, i, j) for p in range(R.shape[0]) for i in range(R.shape[1]) for j in range(R.shape[1])
                if R[p, i] > R[p, j]}  # NaN compares False: missing responses make no pairs; ties make none
    assert {tuple(row) for row in pairs.tolist()} == expected and len(pairs) == len(expected)
    assert pairs.tolist() == sorted(pairs.tolist())  # a deterministic order for seeded training
    # Only the order of rewards within a prompt matters.
    np.testing.assert_array_equal(bt_pairs(R * scale + shift), pairs)


@given(st.integers(2, 4), st.floats(-1, 1))
def test_constant_rewards_make_no_pairs(T, c):
    assert len(bt_pairs(np.full((5, T), c))) == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 5), st.integers(0, 2), st.sampled_from([np.inf, -np.inf]))
def test_router_rejects_infinite_rewards(p, t, bad):
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    R = np.random.default_rng(1).normal(size=(6, 3))
    R[p, t] = bad
    with pytest.raises(InputError, match="finite"):
        BTRouter(3, ["a", "b", "c"], epochs=2).fit(X, R)
    X[p, 0] = np.nan
    with pytest.raises(InputError, match="finite"):
        BTRouter(3, ["a", "b", "c"], epochs=2).fit(X, np.zeros((6, 3)))

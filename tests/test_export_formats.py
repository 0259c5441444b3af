"""persyn export --format: run -> export in every format -> load with `datasets`; TRL trains one step on the
messages and prompt-completion exports; the dataset card's numbers are summary.json's; bad input exits 2."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys

import pytest
import yaml
from helpers import LICENSES, make_run, read_jsonl

from persyn.cli import main
from persyn.outputs.formats import FORMATS

META = {"id", "teacher", "source", "quality", "learnability"}
TRAINING_COLUMNS = {"messages": {"messages"}, "prompt-completion": {"prompt", "completion"},
                    "sharegpt": {"conversations"}, "alpaca": {"instruction", "input", "output"},
                    "hf": {"messages"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config, cfg = make_run(root)
    run_dir = root / "run"
    return {"config": config, "cfg": cfg, "run_dir": run_dir, "dataset": read_jsonl(run_dir / "dataset.jsonl"),
            "summary": json.loads((run_dir / "summary.json").read_text())}


def export(run, fmt, *extra):
    main(["export", str(run["config"]), "--format", fmt, *extra])
    return run["run_dir"] / "export" / fmt


def user_and_answer(fmt, row):
    """The (prompt, response) pair a row of `fmt` holds."""
    if fmt in ("messages", "hf"):
        return row["messages"][0]["content"], row["messages"][1]["content"]
    if fmt == "prompt-completion":
        return row["prompt"][0]["content"], row["completion"][0]["content"]
    if fmt == "sharegpt":
        assert [m["from"] for m in row["conversations"]] == ["human", "gpt"]
        return row["conversations"][0]["value"], row["conversations"][1]["value"]
    assert row["input"] == ""
    return row["instruction"], row["output"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_through_datasets(run, fmt):
    import datasets

    out = export(run, fmt)
    loaded = []
    if fmt == "hf":
        loaded.append(datasets.load_from_disk(str(out / "arrow")))
        loaded.append(datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train"))
    else:
        loaded.append(datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train"))
    loaded.append(datasets.load_dataset(str(out), split="train"))  # through the card's `configs`
    expected = run["dataset"]
    assert len(expected) == run["summary"]["dataset_rows"] == 30
    for ds in loaded:
        assert set(ds.column_names) == TRAINING_COLUMNS[fmt] | META
        assert len(ds) == len(expected)
        for row, want in zip(ds, expected, strict=True):
            assert {k: row[k] for k in META} == {k: want[k] for k in META}
            assert user_and_answer(fmt, row) == (want["messages"][0]["content"], want["messages"][1]["content"])
    rows = list(loaded[0])
    # Every row carries the judge's quality of the kept response: quality kind `field` needs no model, so routed
    # responses are scored too.
    assert {r["source"] for r in rows} == {"probe", "routed"}
    assert all(isinstance(r["quality"], float) for r in rows)
    assert all(r["learnability"] is None for r in rows)  # alpha = 0: no student scored anything
    assert (out / "README.md").is_file()


def front_matter(text):
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "the card starts with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_card_numbers_equal_the_summary(run):
    from huggingface_hub import DatasetCard

    out = export(run, "hf")
    text = (out / "README.md").read_text()
    s = run["summary"]
    meta = front_matter(text)
    card = DatasetCard.load(out / "README.md")  # the hub's own parser accepts it
    assert card.data.license == "other"  # two licences given, one unknown
    assert meta["configs"][0]["data_files"][0]["path"] == ["data/train-00000-of-00001.parquet"]
    p = meta["persyn"]
    assert p["rows"] == s["dataset_rows"] and p["prompts"] == s["prompts"] and p["probe_size"] == s["probe_size"]
    assert p["generations_total"] == s["generations_total"]
    assert p["generate_then_select_generations"] == s["generate_then_select_generations"]
    assert p["teacher_counts"] == s["teacher_counts"] and p["teacher_shares"] == s["teacher_shares"]
    table = {cells[0]: cells for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| teacher")
             for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert set(table) == set(s["per_teacher"])
    for name, info in s["per_teacher"].items():
        _, _, share, rows, gens, tokens, cost, licence = table[name]
        assert float(share.rstrip("%")) / 100 == pytest.approx(s["teacher_shares"][name], abs=5e-5)
        assert int(rows) == s["teacher_counts"][name]
        assert (int(gens), int(tokens), float(cost)) == (info["generations"], info["completion_tokens"],
                                                         info["cost"])
        assert licence == LICENSES.get(name, "unknown")
        assert f"- {name}: {LICENSES.get(name, 'unknown')}" in text  # the licence section
    assert f"{s['generations_total']} in total, against {s['generate_then_select_generations']}" in text
    r = s["router"]
    assert f"Hit@1 {r['val_hit1']:.4f}" in text
    assert f"gain {r['val_mean_reward'] - r['val_best_single_mean_reward']:.4f}" in text
    assert f"size: {s['probe_size']} prompts" in text and f"alpha = {s['alpha']}" in text
    assert re.search(r"persyn \d+\.\d+\.\d+, config hash `[0-9a-f]{16}`", text)


@pytest.mark.parametrize("fmt", ["messages", "prompt-completion"])
def test_trl_sft_trains_one_step_on_the_export(run, fmt, tiny_lm_dir, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out = export(run, fmt)
    ds = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    from persyn.experiments.train import _checkpointing_field

    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, max_length=128,
                     use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                     **{_checkpointing_field(SFTConfig): False})  # TRL's default uses transformers' old name
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir), args=args, train_dataset=ds,
                         processing_class=AutoTokenizer.from_pretrained(tiny_lm_dir))
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(result.training_loss) and result.training_loss > 0


def cli_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_push_to_hub_offline_fails_at_once_in_one_line(run, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    msg = cli_error(capsys, ["export", str(run["config"]), "--format", "hf", "--push-to-hub", "someone/persyn-x"])
    assert "--push-to-hub someone/persyn-x" in msg and "offline" in msg


def test_push_to_an_unreachable_hub_is_one_line(run):
    """A real refused connection (a closed local port as the hub), in a fresh process: one line, exit 2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_x"}
    proc = subprocess.run([sys.executable, "-m", "persyn.cli", "export", str(run["config"]), "--format", "alpaca",
                           "--push-to-hub", "someone/persyn-x"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    # stderr also carries the run's "changed since last run" line; the failure itself is one line
    lines = [line for line in proc.stderr.strip().splitlines() if "since last run" not in line]
    assert "Traceback" not in proc.stderr and len(lines) == 1
    assert lines[0].startswith("error: --push-to-hub someone/persyn-x:") and "refused" in lines[0]
    assert (run["run_dir"] / "export" / "alpaca" / "README.md").is_file()  # the export on disk is kept


def test_unknown_format_is_one_line(run, capsys):
    msg = cli_error(capsys, ["export", str(run["config"]), "--format", "csv"])
    assert "unknown format 'csv'" in msg and "sharegpt" in msg


def test_export_before_any_run_is_one_line(run, tmp_path, capsys):
    cfg = dict(run["cfg"], run_dir=str(tmp_path / "never_run"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    msg = cli_error(capsys, ["export", str(path), "--format", "hf"])
    assert "nothing to export yet" in msg and "never_run" in msg
    assert not (tmp_path / "never_run").exists()


@pytest.mark.parametrize("licence", [3, ["MIT"], {"spdx": "MIT"}])
def test_non_string_teacher_licence_is_one_line(run, tmp_path, capsys, licence):
    cfg = json.loads(json.dumps(run["cfg"]))
    cfg["teachers"][1]["license"] = licence
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    msg = cli_error(capsys, ["export", str(path), "--format", "messages"])
    assert "teachers[beta].license" in msg and "string" in msg


def test_rows_holding_line_separators_read_back_whole(tmp_path):
    """JSON leaves U+2028 and U+0085 unescaped; str.splitlines would cut such a row in two (seen at 20K prompts)."""
    from persyn.outputs.html_report import _jsonl

    rows = [{"id": "a", "text": "one\u2028two\x85three"}, {"id": "b", "text": "plain"}]
    path = tmp_path / "dataset.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert _jsonl(path) == rows

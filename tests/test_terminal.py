"""What a user sees when output is not a terminal (a file, a CI log): plain lines, one per stage and a periodic
count, and no library progress bars ("Loading weights" at every model load)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console

from persyn import progress

SRC = Path(__file__).resolve().parents[1] / "src"


def test_progress_off_a_terminal_is_plain_lines(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=out, width=60))  # a file: not a terminal
    monkeypatch.delenv("PERSYN_QUIET", raising=False)
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a count line at every step
    with progress.progress("probe: generating", 3, unit="texts") as advance:
        for _ in range(3):
            advance(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("probe: generating: 1/3 (") and lines[1].startswith("probe: generating: 2/3 (")
    assert lines[-1].startswith("probe: generating: 3/3 in ") and len(lines) == 3
    assert not any(c in out.getvalue() for c in "━\r\x1b")
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 3600.0)  # a short stage: its one line
    out.truncate(0), out.seek(0)
    with progress.progress("score: learnability", 5) as advance:
        advance(5)
    [line] = out.getvalue().splitlines()
    assert line.startswith("score: learnability: 5/5 in ")


def test_a_run_logged_to_a_file_has_no_bars(tmp_path, tiny_lm_dir, tiny_lm_dir_b):
    """`persyn run` with its output piped: each stage's line, no Rich bar fragments, no "Loading weights"."""
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n"
                                              for i in range(6)))
    cfg = {"run_dir": str(tmp_path / "run"), "prompts": {"path": str(tmp_path / "p.jsonl")},
           "teachers": [{"name": "a", "model": str(tiny_lm_dir)}, {"name": "b", "model": str(tiny_lm_dir_b)}],
           "student": {"model": str(tiny_lm_dir), "max_length": 64}, "reward": {"alpha": 1.0},
           "probe": {"size": 3}, "router": {"backbone": str(tiny_lm_dir), "pooling": "last"},
           "generation": {"max_new_tokens": 4}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("PERSYN_QUIET", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env |= {"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "persyn.cli", "run", str(tmp_path / "c.yaml")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = proc.stderr
    assert "Loading weights" not in err and "━" not in err and "\r" not in err
    lines = err.splitlines()
    for stage in ("probe: generating: 6/6 in ", "score: learnability: 6/6 in ", "generate: generating: 3/3 in "):
        assert sum(line.startswith(stage) for line in lines) == 1, err

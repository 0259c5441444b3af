"""CLI usage mistakes, through the installed `persyn` entry point: click's usage message, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PERSYN = Path(sys.executable).parent / "persyn"


@pytest.mark.parametrize(("args", "error"), [
    (["runn", "c.yaml"], "Error: No such command 'runn'. Did you mean 'run'?"),
    (["run", "--frobnicate", "c.yaml"], "Error: No such option: --frobnicate"),
    (["run"], "Error: Missing argument"),
])
def test_usage_errors_give_one_error_line_and_exit_2(tmp_path, args, error):
    if not PERSYN.exists():
        pytest.skip(f"no installed entry point at {PERSYN}")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([str(PERSYN), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Usage: persyn")
    assert [line for line in lines if line.startswith("Error:")] == [lines[-1]]
    assert lines[-1].startswith(error)

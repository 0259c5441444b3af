"""One run at a time per run_dir: a second `persyn run` fails at once; a killed holder leaves no stale lock."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from kill_driver import logged_config, run_to_end, spawn, wait_for_pause

from persyn.cli import main
from persyn.errors import PersynError
from persyn.store import RunLock

N_PROMPTS, PROBE = 8, 4


def recorded_run(tmp_path: Path, backbone: Path) -> tuple[Path, Path]:
    """Two recorded teachers behind the driver's logging backend; returns (config, a second config for the same
    run_dir spelled differently)."""
    prompts = [f"Question number {i}: what is {i} times 3?" for i in range(N_PROMPTS)]
    quality = {"a": 0.9, "b": 0.2}
    cfg = logged_config(tmp_path, prompts, lambda t, i: (f"{t} says {i * 3}", quality[t]), probe=PROBE,
                        backbone=backbone)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**cfg, "run_dir": str(tmp_path / "." / "run") + "/"}))
    return config, other


def test_second_run_fails_at_once_and_a_killed_holder_leaves_no_stale_lock(tmp_path, tiny_lm_dir, capsys,
                                                                           monkeypatch):
    from persyn.backends.base import BACKENDS, make_backend

    # status keys generations by the backend's fingerprint, so it needs the driver's `logged` backend here too:
    # the recorded backend it wraps, whose fingerprint it reports.
    monkeypatch.setitem(BACKENDS._items, "logged", lambda teacher, **context: make_backend(
        teacher.model_copy(update={"backend": teacher.extra["inner"]}), **context))
    config, other = recorded_run(tmp_path, tiny_lm_dir)
    log = tmp_path / "calls.log"
    holder = spawn(config, "probe:1", log, pause=True)
    try:
        wait_for_pause(holder, log)
        start = time.monotonic()
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(other)])
        assert exit_info.value.code == 2
        assert time.monotonic() - start < 5  # at once, not after waiting for the holder
        err = capsys.readouterr().err
        assert f"another persyn run (pid {holder.pid}) is using this run_dir" in err
        assert err.strip().count("\n") == 0 and "Traceback" not in err
        with pytest.raises(SystemExit) as exit_info:  # a single stage command is refused the same way
            main(["probe", str(config)])
        assert exit_info.value.code == 2
        assert "another persyn run" in capsys.readouterr().err
        # status only reads: it works while the run holds the run_dir, and sees the committed probe row
        main(["status", str(config)])
        out = capsys.readouterr().out
        assert _status_numbers(out, "probe") == (1, PROBE * 2 - 1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    lock = tmp_path / "run" / ".lock"
    assert lock.read_text() == str(holder.pid)  # the dead holder's pid is still written there...
    finished = run_to_end(config, "none", log)  # ...but the kernel dropped its flock: the re-run goes ahead
    assert finished.returncode == 0, finished.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generations_total"] == PROBE * 2 + (N_PROMPTS - PROBE)
    calls = [line for line in log.read_text().splitlines() if line.startswith("gen ")]
    assert len(calls) == len(set(calls)) == summary["generations_total"]


def _status_numbers(out: str, stage: str) -> tuple[int, int]:
    for line in out.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│") if c.strip()]
        if cells and cells[0] == stage:
            return int(cells[1]), int(cells[2])
    raise AssertionError(f"no {stage} row in:\n{out}")


def test_run_lock_is_exclusive_and_released(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        assert (run_dir / ".lock").read_text() == str(os.getpid())
        with pytest.raises(PersynError, match=r"another persyn run \(pid \d+\)"):
            RunLock(run_dir).acquire()
    with RunLock(run_dir):  # released on exit, also after an error inside
        pass
    with pytest.raises(RuntimeError), RunLock(run_dir):
        raise RuntimeError("stage failed")
    with RunLock(run_dir):
        pass


def test_a_leftover_lock_file_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("999999999 garbage left by a crashed run\n")
    with RunLock(run_dir):
        assert (run_dir / ".lock").read_text() == str(os.getpid())

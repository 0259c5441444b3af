"""Runs `persyn run CONFIG` with a fault at a chosen point, for the kill-and-resume tests.

    python tests/kill_driver.py CONFIG POINT CALL_LOG [pause]

Teachers with `backend: logged` wrap the real backend named by their `extra.inner` (default `transformers`) and
append `gen <key>` to CALL_LOG (flushed and fsync'd) before each request, one request per call. The student's
learnability calls append `learn <sha>` per scored response.

POINT is `none` or `WHERE:N`:
- `probe:N` / `generate:N`: right after the N-th result of this invocation's probe / routed stage is committed
  (the pipeline asks for the next result only after storing the last one), before the next request;
- `learnability:N`: on entering the N-th learnability chunk (SCORE_CHUNK is 4), before it is computed;
- `router:1`: after the router is fitted, before it is saved;
- `embed:N`: on entering the N-th chunk of texts the router's embedder encodes (EMBED_CHUNK is 4), after its
  texts are logged (`enc STAGE <sha>`) and before they are encoded and committed to the embedding cache.
At the point the process SIGKILLs itself; with `pause` it writes CALL_LOG + ".paused" and sleeps instead, so a
test can send it a signal or try a second run while it holds the run_dir.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PERSYN_QUIET", "1")

SCORE_CHUNK = 4
EMBED_CHUNK = 4


def logged_config(tmp_path: Path, prompts: list[str], answer: Any, *, probe: int, backbone: Path) -> dict[str, Any]:
    """A run over `prompts` with two recorded teachers, a and b, behind this driver's logging backend;
    `answer(teacher, i)` gives (output, quality) of a teacher's row for prompt i. The router embeds with the tiny
    causal LM at `backbone`."""
    import json

    def write(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(tmp_path / "prompts.jsonl", [{"instruction": p} for p in prompts])
    for t in ("a", "b"):
        write(tmp_path / f"{t}.jsonl", [{"instruction": p, "output": answer(t, i)[0], "quality": answer(t, i)[1]}
                                        for i, p in enumerate(prompts)])
    return {
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "prompts.jsonl"), "field": "instruction"},
        "teachers": [{"name": t, "backend": "logged", "model": str(tmp_path / f"{t}.jsonl"),
                      "extra": {"inner": "recorded"}} for t in ("a", "b")],
        "quality": {"kind": "field"},
        "reward": {"alpha": 0.0},
        "probe": {"size": probe},
        "router": {"backbone": str(backbone), "pooling": "last", "bt": {"epochs": 5}},
    }


class Faults:
    def __init__(self, point: str, call_log: Path, pause: bool) -> None:
        self.point, self.call_log, self.pause = point, call_log, pause
        self.counts: Counter[str] = Counter()
        self.stage = "load"

    def log(self, *lines: str) -> None:
        with self.call_log.open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())

    def reached(self, where: str) -> None:
        """Count one event at `where`; at the chosen point, die (or pause)."""
        self.counts[where] += 1
        if self.point != f"{where}:{self.counts[where]}":
            return
        if self.pause:
            Path(str(self.call_log) + ".paused").write_text(str(os.getpid()))
            while True:
                time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, call_log: Path, pause: bool = False) -> Faults:
    import torch

    import persyn.executors.local as local
    import persyn.pipeline as pipeline
    import persyn.router.embed as embed
    import persyn.stages.score as score
    from persyn.backends.base import make_backend, register_backend
    from persyn.router.bt import BTRouter
    from persyn.router.ridge import RidgeRouter

    torch.set_num_threads(1)  # the same float arithmetic in every run, and kind to a shared machine
    faults = Faults(point, call_log, pause)
    score.SCORE_CHUNK = SCORE_CHUNK
    embed.EMBED_CHUNK = EMBED_CHUNK

    for name, func in list(pipeline.STAGE_FUNCS.items()):
        def tracked(run: Any, _name: str = name, _func: Any = func) -> Any:
            faults.stage = _name
            return _func(run)

        pipeline.STAGE_FUNCS[name] = tracked

    class LoggedBackend:
        def __init__(self, teacher: Any, **context: Any) -> None:
            inner = teacher.model_copy(update={"backend": teacher.extra.get("inner", "transformers")})
            self.inner = make_backend(inner, **context)
            self.name = teacher.name

        def fingerprint(self) -> str:
            return self.inner.fingerprint()

        def generate(self, requests: list[Any]) -> Any:
            for req in requests:
                faults.log(f"gen {req.key}")
                yield from self.inner.generate([req])
                faults.reached(faults.stage)  # resumed: the result above is in the store

        def close(self) -> None:
            self.inner.close()

    register_backend("logged")(LoggedBackend)

    real_learnability = local.student_learnability

    def learnability(student: Any, prompts: list[str], responses: list[str]) -> Any:
        faults.reached("learnability")
        faults.log(*("learn " + hashlib.sha256((p + "\0" + r).encode()).hexdigest()[:24]
                     for p, r in zip(prompts, responses, strict=True)))
        return real_learnability(student, prompts, responses)

    local.student_learnability = learnability

    real_encode = embed.Embedder._encode

    def encode(self: Any, texts: list[str]) -> Any:
        faults.log(*(f"enc {faults.stage} " + hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts))
        faults.reached("embed")
        return real_encode(self, texts)

    embed.Embedder._encode = encode  # type: ignore[method-assign]

    for cls in (BTRouter, RidgeRouter):
        def save(self: Any, directory: Any, _real: Any = cls.save) -> None:
            faults.reached("router")
            _real(self, directory)

        cls.save = save  # type: ignore[method-assign]
    return faults


def spawn(config: Path, point: str, call_log: Path, *, pause: bool = False) -> subprocess.Popen:
    """Start this driver in a subprocess (for the tests)."""
    args = [sys.executable, __file__, str(config), point, str(call_log)] + (["pause"] if pause else [])
    env = {**os.environ, "PERSYN_QUIET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_to_end(config: Path, point: str, call_log: Path) -> subprocess.CompletedProcess:
    proc = spawn(config, point, call_log)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for_pause(proc: subprocess.Popen, call_log: Path, timeout: float = 240) -> None:
    marker = Path(str(call_log) + ".paused")
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its pause point: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("the run never reached its pause point")
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    config, point, call_log = argv[:3]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started in background
    install(point, Path(call_log), pause=len(argv) > 3 and argv[3] == "pause")
    from persyn.cli import main as persyn_main

    persyn_main(["run", config])


if __name__ == "__main__":
    main(sys.argv[1:])

"""Peak memory of a whole run with three local registry teachers and the student (issue 11, item 4).

Each run is a fresh child process (`persyn run` through the Python API), so its peak RSS (ru_maxrss) is its own.
The same tiny run is made with `max_resident_models: 2` (the default) and as before this change (every model
kept resident until the process ends: no release, no cap), against the sum of the models' sizes and the
target: peak <= the largest model + the student + 1 GB.

    python benchmarks/bench_memory.py [--prompts 4] [--max-new-tokens 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, gsm8k_pairs

TEACHERS = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]
STUDENT = "smollm2-135m-instruct"
GB = 1024**3


def model_bytes(name: str) -> int:
    """Bytes of the model's weights as loaded on a CPU (float32, as the converted safetensors store them)."""
    from persyn.models import resolve

    return sum(p.stat().st_size for p in Path(resolve(name)).glob("*.safetensors"))


def child(config: str, threads: int, keep_all: bool) -> None:
    import torch

    from persyn.config import load_config
    from persyn.executors.local import LocalExecutor
    from persyn.pipeline import run_stages

    torch.set_num_threads(threads)
    if keep_all:  # the behaviour before bounded memory: nothing is ever released
        LocalExecutor.release = lambda self, teacher=None: None  # type: ignore[method-assign]
        LocalExecutor._evict = lambda self, key: None  # type: ignore[method-assign]
    t0 = time.perf_counter()
    run = run_stages(load_config(config))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"peak_rss": peak, "seconds": time.perf_counter() - t0, "generated": run.generated}))


def write_config(tmp: Path, n: int, max_new_tokens: int, resident: int) -> Path:
    questions, _ = gsm8k_pairs(n, seed=3)
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    cfg = {
        "run_dir": str(tmp / f"run-{resident}"), "prompts": {"path": str(tmp / "prompts.jsonl")},
        "teachers": [{"name": name, "model": name} for name in TEACHERS],
        "student": {"model": STUDENT, "max_length": 512}, "reward": {"alpha": 1.0},
        "probe": {"size": max(2, n // 2)}, "generation": {"max_new_tokens": max_new_tokens, "batch_size": 4},
        "router": {"backbone": "student", "bt": {"epochs": 5}}, "max_resident_models": resident,
    }
    path = tmp / f"config-{resident}.json"
    path.write_text(json.dumps(cfg))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--keep-all", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.threads, args.keep_all)
    sizes = {name: model_bytes(name) for name in dict.fromkeys([*TEACHERS, STUDENT])}
    total = sum(model_bytes(name) for name in [*TEACHERS, STUDENT])
    target = max(sizes.values()) + sizes[STUDENT] + GB
    print("model sizes (float32): " + ", ".join(f"{n} {b / GB:.2f} GB" for n, b in sizes.items()))
    print(f"sum of the three teachers and the student: {total / GB:.2f} GB; "
          f"target peak <= largest + student + 1 GB = {target / GB:.2f} GB")
    with tempfile.TemporaryDirectory() as tmp:
        for label, resident, keep_all in (("max_resident_models=2 (default)", 2, False),
                                          ("every model kept (before)", 4, True)):
            config = write_config(Path(tmp), args.prompts, args.max_new_tokens, resident)
            command = [sys.executable, __file__, "--child", str(config), "--threads", str(args.threads)]
            out = subprocess.run(command + ["--keep-all"] * keep_all, capture_output=True, text=True, cwd=ROOT,
                                 check=False)
            if out.returncode:
                sys.exit(f"run failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            verdict = "meets" if r["peak_rss"] <= target else "misses"
            print(f"{label}: peak RSS {r['peak_rss'] / GB:.2f} GB "
                  f"({r['generated']} generations, {r['seconds']:.0f} s); {verdict} the target")


if __name__ == "__main__":
    main()

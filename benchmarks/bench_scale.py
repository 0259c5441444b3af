"""persyn at scale: N recorded teachers x M prompts, quality and learnability recorded, probe K.

Writes a synthetic pool from real prompt text in ../shared/data (GSM8K questions, AlpacaEval instructions, IFEval
prompts, varied to reach M distinct prompts), runs `persyn run` in a subprocess, then a no-op resume, `persyn
status`, and a resume that walks every stage (after `persyn export` rewrote the outputs), and prints per-stage
seconds, the peak RSS of each process, and the size of each store.

    python benchmarks/bench_scale.py --prompts 20000 --teachers 19 --probe 2500 [--dir /tmp/persyn-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import ROOT, SHARED

SOURCES = ("gsm8k", "alpaca_eval", "ifeval")


def real_prompts() -> list[tuple[str, str]]:
    """(source, text) for every distinct prompt in ../shared/data."""
    out: list[tuple[str, str]] = []
    for split in ("train", "test"):
        out += [("gsm8k", json.loads(line)["question"]) for line in (SHARED / "gsm8k" / f"{split}.jsonl").open()]
    first = sorted((SHARED / "alpaca_eval" / "teachers").glob("*.jsonl"))[0]
    out += [("alpaca_eval", json.loads(line)["instruction"]) for line in first.open()]
    out += [("ifeval", json.loads(line)["prompt"]) for line in (SHARED / "ifeval" / "input_data.jsonl").open()]
    return list({text: (src, text) for src, text in out}.values())


def answers() -> list[str]:
    """Real worked answers, as response text of realistic length."""
    return [json.loads(line)["answer"] for line in (SHARED / "gsm8k" / "train.jsonl").open()]


def make_pool(root: Path, n_prompts: int, n_teachers: int, probe: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    base = real_prompts()
    prompts = []
    for i in range(n_prompts):
        src, text = base[i % len(base)]
        variant = i // len(base)
        prompts.append((src, text if variant == 0 else f"{text}\n\n(Variant {variant}: answer in your own words.)"))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"instruction": t}) + "\n" for _, t in prompts))
    texts = answers()
    # Each teacher is best on one source (plus noise), so the router has something to learn.
    affinity = [[rng.uniform(0.2, 0.8) for _ in SOURCES] for _ in range(n_teachers)]
    teachers = []
    for t in range(n_teachers):
        name = f"teacher{t:02d}"
        with (root / f"{name}.jsonl").open("w") as fh:
            for i, (src, text) in enumerate(prompts):
                q = min(1.0, max(0.0, affinity[t][SOURCES.index(src)] + rng.gauss(0, 0.1)))
                row = {"instruction": text, "output": f"{name}: {texts[(i * 31 + t) % len(texts)]}", "quality": q,
                       "learnability": -0.3 - rng.random()}
                fh.write(json.dumps(row) + "\n")
        teachers.append({"name": name, "backend": "recorded", "model": str(root / f"{name}.jsonl")})
    cfg = {
        "run_dir": str(root / "run"),
        "prompts": {"path": str(root / "prompts.jsonl"), "field": "instruction"},
        "teachers": teachers,
        "student": {"model": "smollm2-135m-instruct"},  # never loaded: every learnability value is recorded
        "quality": {"kind": "field"},
        "reward": {"alpha": 0.5},
        "probe": {"size": probe, "seed": 0},
        "router": {"bt": {"epochs": 50}, "seed": 0},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def persyn(root: Path, *args: str, quiet: bool = True) -> tuple[float, float]:
    """Run the CLI in a subprocess: (wall seconds, the process's peak RSS in GB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if quiet:
        env["PERSYN_QUIET"] = "1"
    log = root / "persyn.log"
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "persyn.cli", *args], env=env, stdout=fh,
                                stderr=None if not quiet else subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"persyn {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 2**20


def size_mb(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.exists()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20000)
    ap.add_argument("--teachers", type=int, default=19)
    ap.add_argument("--probe", type=int, default=2500)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/persyn-scale"))
    ap.add_argument("--progress", action="store_true", help="show persyn's progress bars")
    ap.add_argument("--keep", action="store_true", help="keep the pool, the run and the recorded indexes")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a finished run kept by --keep: only the resume and status measurements")
    args = ap.parse_args()
    root = args.dir / f"{args.prompts}x{args.teachers}"
    config = root / "config.yaml"
    if args.reuse and (root / "run" / "summary.json").exists():
        resumes(root, config)
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    config = make_pool(root, args.prompts, args.teachers, args.probe)
    pool_mb = size_mb(*root.glob("teacher*.jsonl"))
    print(f"pool: {args.teachers} teachers x {args.prompts} prompts, probe {args.probe}: {pool_mb:.0f} MB of "
          f"responses, written in {time.perf_counter() - t0:.0f} s")

    wall, peak = persyn(root, "run", str(config), quiet=not args.progress)
    summary = json.loads((root / "run" / "summary.json").read_text())
    print(f"persyn run: {wall:.1f} s wall, peak RSS {peak:.2f} GB; "
          f"{summary['generations_total']} generations, {summary['dataset_rows']} dataset rows")
    print(f"{'stage':<14}{'seconds':>9}")
    for stage, seconds in summary["stage_seconds"].items():
        print(f"{stage:<14}{seconds:>9.1f}")
    run_dir = root / "run"
    stores = {
        "persyn.sqlite": size_mb(*run_dir.glob("persyn.sqlite*")),
        "embeddings.sqlite": size_mb(*run_dir.glob("embeddings.sqlite*")),
        "outputs (jsonl)": size_mb(*run_dir.glob("*.jsonl")),
        "recorded indexes": size_mb(*index_paths(config)),
    }
    for name, mb in stores.items():
        print(f"store {name:<20}{mb:>9.1f} MB")

    resumes(root, config)
    if not args.keep:
        for p in index_paths(config):
            p.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def resumes(root: Path, config: Path) -> None:
    t_resume, peak_resume = persyn(root, "run", str(config))
    resumed = json.loads((root / "run" / "summary.json").read_text())
    assert resumed["generations_this_invocation"] == 0, "the resume generated something"
    assert "to do: nothing" in (root / "persyn.log").read_text(), "the resume found work to do"
    t_status, peak_status = persyn(root, "status", str(config))
    print(f"no-op resume: {t_resume:.1f} s wall, peak RSS {peak_resume:.2f} GB (the finished run's stamp matched)")
    print(f"status: {t_status:.1f} s wall, peak RSS {peak_status:.2f} GB")
    # `persyn export` alone rewrites the outputs, so the next run cannot trust the stamp and walks every stage.
    persyn(root, "export", str(config))
    t_walk, peak_walk = persyn(root, "run", str(config))
    walked = json.loads((root / "run" / "summary.json").read_text())
    assert walked["generations_this_invocation"] == 0, "the resume generated something"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in walked["stage_seconds"].items())
    print(f"resume that walks every stage: {t_walk:.1f} s wall, peak RSS {peak_walk:.2f} GB ({stages})")


def index_paths(config: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT / "src"))
    from persyn.backends.recorded import RecordedBackend
    from persyn.config import load_config

    return [RecordedBackend(t).index_path() for t in load_config(config).teachers]


if __name__ == "__main__":
    main()

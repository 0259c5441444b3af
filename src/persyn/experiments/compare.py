"""`persyn compare`: one dataset per selection strategy over the same prompts, one student trained per strategy
and seed with identical settings, each evaluated on the same benchmarks; then a report.

Resumable at every level: generations and scores live in the store, train_student skips a finished output_dir
with the same config and dataset, a strategy whose training rows and recipe equal another's of the same seed (a
single teacher that is also strong's pick) reuses that student, and an evaluation is skipped when its result
exists for the same checkpoint and benchmark settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from persyn.config import RunConfig, strategy_base
from persyn.errors import ConfigError
from persyn.experiments.selection import select_and_build, strategy_dirname
from persyn.experiments.strategies import make_strategy
from persyn.files import sha256_file, write_atomic
from persyn.models import resolve
from persyn.pipeline import STAGES, run_stages
from persyn.run import opened_run
from persyn.stages.load import load_stage

log = logging.getLogger(__name__)


def compare_dir(cfg: RunConfig) -> Path:
    return cfg.path / "compare"


def select_all(cfg: RunConfig, strategies: list[str]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Build every strategy's dataset; returns per-strategy summaries and the known rewards of chosen responses."""
    routed = any(strategy_base(n) == "persyn" for n in strategies)
    run_stages(cfg, STAGES if routed else ("probe", "score"))
    with opened_run(cfg) as run:
        return select_and_build(run, load_stage(run), strategies, compare_dir(cfg))


def train_config(cfg: RunConfig, output_dir: Path, seed: int):
    from persyn.experiments.train import TrainConfig

    t = cfg.train
    model = t.model or (cfg.student.model if cfg.student else None)
    if model is None:
        raise ConfigError("compare needs a model to train: train.model or student.model", key="train.model")
    settings = t.model_dump(exclude={"model"})
    if settings["max_length"] is None and cfg.student is not None:
        settings["max_length"] = cfg.student.max_length  # exactly the tokens learnability scored
    elif settings["max_length"] is None:
        del settings["max_length"]  # TrainConfig's default
    if settings["chat_template"] is None and cfg.student is not None:
        settings["chat_template"] = cfg.student.chat_template or ("few-shot" if cfg.student.few_shot else None)
    return TrainConfig(model=model, output_dir=str(output_dir), seed=seed,
                       trust_remote_code=cfg.student.trust_remote_code if cfg.student else False, **settings)


def evaluate_cached(model_dir: Path, benchmarks: list[dict[str, Any]], eval_dir: Path,
                    identity: str, *, cached_only: bool = False) -> dict[str, Any] | None:
    """Each benchmark's metrics; one already evaluated for this checkpoint identity and settings is reused.
    cached_only: evaluate nothing, None unless every benchmark is cached."""
    from persyn.experiments.eval import evaluate

    eval_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for spec in benchmarks:
        label = spec.get("label") or spec["name"]
        fp = hashlib.sha256(json.dumps([identity, spec], sort_keys=True).encode()).hexdigest()
        done = eval_dir / f"{label}.done.json"
        if done.is_file():
            record = json.loads(done.read_text(encoding="utf-8"))
            if record.get("fingerprint") == fp:
                results[label] = record["result"]
                continue
        if cached_only:
            return None
        out = evaluate(str(model_dir), [{**spec, "label": label}], output_dir=eval_dir)
        results[label] = out["results"][label]
        write_atomic(done, json.dumps({"fingerprint": fp, "result": results[label]}, indent=2))
    return results


def train_and_eval(cfg: RunConfig, strategy: str, seed: int, *,
                   finished_only: bool = False) -> dict[str, Any] | None:
    """One student's run record. finished_only: train and evaluate nothing; None unless the student is already
    trained and evaluated."""
    from persyn.experiments.train import RESULT_FILE, finished_training, train_student

    base = compare_dir(cfg) / strategy_dirname(strategy)
    model_dir = base / f"seed{seed}" / "model"
    tcfg = train_config(cfg, model_dir, seed)
    dataset = base / "dataset.jsonl"
    if cfg.compare.train_rows is not None:
        dataset = training_subset(dataset, cfg.compare.train_rows, seed, base / f"seed{seed}" / "train.jsonl")
    fingerprint, twin = tcfg.fingerprint(), None
    finished = finished_training(model_dir, fingerprint, sha256_file(dataset)) is not None
    if not finished:
        twin = trained_twin(cfg, strategy, seed, dataset, fingerprint)
    if twin is not None:  # the same rows with the same recipe: the same student, not paid for twice
        log.info("%s seed %d trains on exactly the rows of %s: reusing that student", strategy, seed,
                 twin.parents[1].name)
        model_dir = twin
        _copy_missing(twin.parent / "eval", base / f"seed{seed}" / "eval")
    elif finished_only and not finished:
        return None
    else:
        train_student(tcfg, dataset)
    record = json.loads((model_dir / RESULT_FILE).read_text(encoding="utf-8"))
    identity = f"{record['config_hash']}:{record['dataset_sha256']}"
    benchmarks = [b.model_dump(exclude_none=True) for b in cfg.eval.benchmarks]
    evals = evaluate_cached(model_dir, benchmarks, base / f"seed{seed}" / "eval", identity, cached_only=finished_only)
    if evals is None:
        return None
    run = {"seed": seed, "steps": record["steps"], "train_loss": record["train_loss"],
           "train_seconds": 0.0 if twin is not None else round(record["seconds"], 1), "eval": evals}
    return run | ({"same_student_as": twin.parents[1].name} if twin is not None else {})


def training_content(dataset: Path) -> str:
    """sha256 of what SFT reads from a dataset: each row's messages, in order (not its teacher or source)."""
    digest = hashlib.sha256()
    for line in dataset.read_text(encoding="utf-8").splitlines():
        digest.update(json.dumps(json.loads(line)["messages"], sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def trained_twin(cfg: RunConfig, strategy: str, seed: int, dataset: Path, fingerprint: str) -> Path | None:
    """Another strategy's finished student of this seed, trained with this recipe on exactly these messages (a
    single teacher that is also `strong`'s pick, say), or None."""
    from persyn.experiments.train import RESULT_FILE, finished_training

    content = None
    for result in sorted(compare_dir(cfg).glob(f"*/seed{seed}/model/{RESULT_FILE}")):
        if result.parents[2].name == strategy_dirname(strategy):
            continue
        trained_on = Path(json.loads(result.read_text(encoding="utf-8")).get("dataset", ""))
        if not trained_on.is_file() or finished_training(result.parent, fingerprint,
                                                         sha256_file(trained_on)) is None:
            continue
        content = content or training_content(dataset)
        if training_content(trained_on) == content:
            return result.parent
    return None


def _copy_missing(src: Path, dst: Path) -> None:
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and not (dst / path.name).exists():
            shutil.copy2(path, dst / path.name)


def training_subset(dataset: Path, n: int, seed: int, out: Path) -> Path:
    """The first n rows of `dataset` in an order set by the seed and each row's prompt id alone, so every strategy
    of a seed trains on the same prompts (a filtered dataset: on its first n of that order), drawn independently
    of the probe."""
    lines = dataset.read_text(encoding="utf-8").splitlines()
    # Salted: the probe is drawn by a hash of (seed, id) too, and an unsalted order would pick the probe's prompts.
    rank = [hashlib.sha256(f"train_rows:{seed}:{json.loads(line)['id']}".encode()).hexdigest() for line in lines]
    kept = [line for _, line in sorted(zip(rank, lines, strict=True))[:n]]
    if out.is_file() and out.read_text(encoding="utf-8").splitlines() == kept:
        return out  # unchanged: keep its mtime
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "".join(line + "\n" for line in kept))
    return out


def run_compare(cfg: RunConfig, *, strategies: list[str] | None = None, train: bool | None = None,
                base_eval: bool = True, finished_only: bool = False) -> dict[str, Any]:
    """Select, train and evaluate each strategy; writes compare/results.json and compare/report.md.
    finished_only: report the students already trained and evaluated, train and evaluate nobody (a table while a
    long compare is still running); results["unfinished"] lists the rest as STRATEGY/seedN."""
    names = strategies or cfg.compare.strategies
    for n in names:
        make_strategy(n)
    out = compare_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    summaries, dist = select_all(cfg, names)
    results: dict[str, Any] = {"teachers": [t.name for t in cfg.teachers], "alpha": cfg.reward.alpha,
                               "prompts": next(iter(summaries.values()))["rows"] if summaries else 0,
                               "train": cfg.train.model_dump(), "benchmarks": [], "strategies": {},
                               "rewards": dist, "base": None}
    results["benchmarks"] = [b.label or b.name for b in cfg.eval.benchmarks]
    do_train = cfg.compare.train if train is None else train
    if do_train and cfg.student is not None and cfg.train.max_length not in (None, cfg.student.max_length):
        log.warning("train.max_length %d is not student.max_length %d: learnability scored other tokens than "
                    "training sees", cfg.train.max_length, cfg.student.max_length)
    seeds_for = cfg.compare.seeds_for
    for name in names:
        results["strategies"][name] = {**summaries[name], "runs": []}
    _write(out / "results.json", results)
    # The base student first: every later student is read against it.
    if do_train and base_eval and cfg.eval.benchmarks:
        tcfg = train_config(cfg, out / "base", 0)
        benchmarks = [b.model_dump(exclude_none=True) for b in cfg.eval.benchmarks]
        evals = evaluate_cached(Path(resolve(tcfg.model)), benchmarks, out / "base" / "eval", f"base:{tcfg.model}",
                                cached_only=finished_only)
        results["base"] = {"model": tcfg.model, "eval": evals} if evals is not None else None
        _write(out / "results.json", results)
    # Seed-major, so an interrupted run has every strategy's first seed before any second one.
    for i, seed in enumerate(cfg.compare.seeds if do_train else []):
        for name in names:
            if i > 0 and seeds_for is not None and name not in seeds_for:
                continue
            run = train_and_eval(cfg, name, seed, finished_only=finished_only)
            if run is None:
                results.setdefault("unfinished", []).append(f"{name}/seed{seed}")
                continue
            results["strategies"][name]["runs"].append(run)
            if not finished_only:
                _finish(cfg, results, out)  # a table after every student: a long run stopped midway has one
    _finish(cfg, results, out)
    return results


def _finish(cfg: RunConfig, results: dict[str, Any], out: Path) -> None:
    from persyn.experiments.compare_report import write_report

    results["statistics"] = compare_statistics(cfg, results)
    _write(out / "results.json", results)
    write_report(results, out)


def compare_statistics(cfg: RunConfig, results: dict[str, Any]) -> dict[str, Any]:
    """persyn.experiments.significance over every benchmark with per-item records: each strategy's interval and
    the paired differences against strong and the best single teacher."""
    from persyn.experiments.significance import benchmark_statistics

    out = compare_dir(cfg)
    stats = {}
    for spec in cfg.eval.benchmarks:
        label = spec.label or spec.name
        files = {name: {run["seed"]: out / strategy_dirname(name) / f"seed{run['seed']}" / "eval"
                        / f"{label}.records.jsonl" for run in entry["runs"]}
                 for name, entry in results["strategies"].items()}
        if results.get("base"):
            files["base"] = {0: out / "base" / "eval" / f"{label}.records.jsonl"}
        if (computed := benchmark_statistics(files, spec.name, seed=cfg.compare.seed,
                                                  pairs=cfg.compare.pairs)) is not None:
            stats[label] = computed
    return stats


def _write(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")

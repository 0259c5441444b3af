"""`evaluate`: run benchmark specs `{"name": ..., **arguments}` by name, each checked against what its benchmark
declares it takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persyn.errors import ConfigError
from persyn.experiments.eval import gsm8k, gym, harness, ifeval
from persyn.experiments.eval.common import Benchmark

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (gsm8k.BENCHMARK, gym.BENCHMARK, ifeval.BENCHMARK,
                                                         harness.BENCHMARK)}
RESERVED = ("model_spec", "output_path")  # given by evaluate itself, never by a spec


def check_spec(benchmark: Benchmark, args: dict[str, Any], where: str) -> None:
    for key in args:
        if key in RESERVED or not benchmark.accepts(key):
            raise ConfigError("unknown key", key=f"{where}.{key}")
    for key in benchmark.required:
        if key not in args:
            raise ConfigError("missing key", key=f"{where}.{key}")


def evaluate(model_spec: str, benchmarks: list[dict[str, Any]], *,
             output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run each benchmark `{"name": ..., **arguments}` (an optional "label" names its result)."""
    results: dict[str, Any] = {}
    for i, spec in enumerate(benchmarks):
        where = f"eval.benchmarks[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError("each benchmark needs a name", key=where)
        args = dict(spec)
        name, label = args.pop("name"), args.pop("label", None)
        benchmark = BENCHMARKS.get(name)
        if benchmark is None:
            raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})", key=f"{where}.name")
        check_spec(benchmark, args, where)
        label = label or (name if name not in results else f"{name}_{i}")
        if output_dir is not None:
            args["output_path"] = Path(output_dir) / f"{label}.json"
        result = benchmark.run(model_spec, **args)
        results[label] = {k: v for k, v in result.items() if k != "records"}
    summary = {"model": model_spec, "results": results}
    if output_dir is not None:
        (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary

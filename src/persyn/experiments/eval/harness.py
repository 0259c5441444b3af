"""lm-evaluation-harness tasks (`pip install 'persyn[lmeval]'`) on a local checkpoint, with persyn.models' device
and dtype."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persyn.errors import ConfigError, PersynError
from persyn.experiments.eval.common import Benchmark, write_outputs
from persyn.models import dtype_name, resolve, resolve_device


def eval_lm_eval(model_spec: str, tasks: list[str], *, num_fewshot: int | None = None, limit: int | None = None,
                 batch_size: int | str = 8, trust_remote_code: bool = False,
                 include_path: str | list[str] | None = None, output_path: str | Path | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """Tasks of lm-evaluation-harness (`pip install 'persyn[lmeval]'`) on a local HF checkpoint. `include_path`:
    folders (or one folder) of extra task YAMLs, e.g. tasks over local JSONL files that run offline."""
    try:
        import lm_eval
    except ImportError:
        raise PersynError("lm-evaluation-harness is not installed: pip install 'persyn[lmeval]' "
                          "(or pip install lm-eval)") from None
    model_dir = resolve(model_spec, trust_remote_code=trust_remote_code)
    device = resolve_device()
    model_args = f"pretrained={model_dir},dtype={dtype_name('auto', device)},trust_remote_code={trust_remote_code}"
    if include_path:
        from lm_eval.tasks import TaskManager

        paths = [include_path] if isinstance(include_path, str) else list(include_path)
        for p in paths:
            if not Path(p).exists():
                raise ConfigError(f"lm-eval include path not found: {p}", key="include_path")
        meta = {"pretrained": str(model_dir)}
        manager = TaskManager(include_path=paths, include_defaults=False, metadata=meta)
        if not set(tasks) <= set(manager.all_tasks):  # built-in tasks too: index lm-eval's own (~10 s)
            manager = TaskManager(include_path=paths, metadata=meta)
        kwargs["task_manager"] = manager
    out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), num_fewshot=num_fewshot,
                                  limit=limit, batch_size=batch_size, device=device, **kwargs)
    results = json.loads(json.dumps(out.get("results", {}), default=str))
    return write_outputs({"benchmark": "lm_eval", "model": model_spec, "tasks": list(tasks),
                          "results": results}, output_path)


BENCHMARK = Benchmark("lm_eval", eval_lm_eval, required=("tasks",),
                      optional=("num_fewshot", "limit", "batch_size", "trust_remote_code", "include_path"),
                      passes_others_on=True)

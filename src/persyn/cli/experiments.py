"""Commands that test the paper's claims: router-eval, train, eval and compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from persyn.cli.app import ConfigArg, app, console, load_run_config
from persyn.errors import ConfigError


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)


@app.command("router-eval")
def router_eval_cmd(
    config: ConfigArg,
    backbone: Annotated[list[str] | None, typer.Option(
        help="Router backbone (repeatable; 'student' = the student LM). Default: compare.router_eval.backbones.")
    ] = None,
    probe_size: Annotated[list[int] | None, typer.Option(help="Probe size to train on (repeatable).")] = None,
    held_out: Annotated[int | None, typer.Option(help="Held-out prompts, every teacher generated on each.")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON output (default run_dir/router_eval.json).")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        help="Router kind on the cost-reward frontier (repeatable). Default: compare.router_eval.kinds.")] = None,
    strategy: Annotated[list[str] | None, typer.Option(
        help="Probe strategy on the frontier (repeatable). Default: compare.router_eval.probe_strategies.")] = None,
) -> None:
    """Router Hit@1/3 and reward against oracle, best single teacher and random on held-out prompts, and the
    cost-reward frontier over generation budgets (router_eval.json, frontier.json and a PNG)."""
    from persyn.errors import ConfigError
    from persyn.experiments.router_eval import router_eval
    from persyn.router import router_kinds

    cfg = load_run_config(config)
    for k in kind or []:
        if k not in router_kinds():
            raise ConfigError(f"unknown router kind {k!r}; known: {', '.join(router_kinds())}", key="--kind")
    for st in strategy or []:
        if st not in ("random", "diverse", "adaptive"):
            raise ConfigError(f"unknown probe strategy {st!r}; known: random, diverse, adaptive", key="--strategy")
    result = router_eval(cfg, backbones=backbone, probe_sizes=probe_size, held_out=held_out, out_path=out,
                         kinds=kind, strategies=strategy)
    table = Table(title=f"router on {result['held_out']} held-out prompts (alpha {result['alpha']})")
    cols = {"backbone": "backbone", "probe_size": "probe", "hit1": "Hit@1", "hit3": "Hit@3", "router": "router",
            "oracle": "oracle", "best_single": "best single", "random": "random", "gap_captured": "gap captured",
            "best_single_teacher": "best teacher"}
    for c, title in cols.items():
        table.add_column(title, justify="left" if c in ("backbone", "best_single_teacher") else "right")
    for row in result["results"]:
        table.add_row(*[_fmt(row.get(c)) for c in cols])
    console.print(table)
    f = result["frontier"]
    table = Table(title=f"cost-reward frontier: probe {f['probe_size']}, {f['held_out']} held-out prompts, "
                        f"{f['rows'][0]['seeds']} probe seed(s); mean (std) over seeds")
    for title in ("method", "gens/prompt", "reward", "gap captured", "min gap", "best of cands", "Hit@1", "Hit@3"):
        table.add_column(title, justify="left" if title == "method" else "right")
    for r in sorted(f["rows"], key=lambda r: (r["method"], r["budget"])):
        table.add_row(r["method"], f"{r['generations_per_prompt']:.2f}",
                      f"{r['mean_reward']:.4f} ({r['mean_reward_std']:.4f})",
                      f"{r['gap_captured']:+.3f} ({r['gap_captured_std']:.3f})", f"{r['gap_captured_min']:+.3f}",
                      _fmt(r.get("candidates_best")), _fmt(r["hit1"]), _fmt(r["hit3"]))
    console.print(table)
    console.print(f"generations: {result['generations_this_invocation']} new, {result['generations_needed']} needed; "
                  f"written to {out or cfg.path / 'router_eval.json'}")


@app.command("train")
def train_cmd(
    dataset: Annotated[Path, typer.Argument(help="Exported dataset (JSONL with `messages`).")],
    model: Annotated[str, typer.Option(help="Student: registry name, HF id or local dir.")],
    output_dir: Annotated[Path, typer.Option(help="Where the checkpoint goes.")],
    epochs: Annotated[float | None, typer.Option(help="Training epochs (default 1).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate (default 5e-5).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per device step (default 4).")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps (default 1).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Prompt + response tokens (default 256).")] = None,
    seed: int = 0,
    lora: Annotated[bool, typer.Option(help="LoRA through PEFT (merged into the saved checkpoint).")] = False,
    chat_template: Annotated[str | None, typer.Option(help="Jinja override, or 'few-shot' for base models.")] = None,
) -> None:
    """Fine-tune a student with TRL SFT (loss on the response tokens only); a finished run is not redone. Options
    left out take persyn.experiments.train.TrainConfig's defaults."""
    from pydantic import ValidationError

    from persyn.experiments.train import TrainConfig, train_student

    given = {"epochs": epochs, "max_steps": max_steps, "learning_rate": learning_rate, "batch_size": batch_size,
             "grad_accum": grad_accum, "max_length": max_length, "chat_template": chat_template}
    try:
        cfg = TrainConfig(model=model, output_dir=str(output_dir), seed=seed, lora=lora,
                          **{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(err["msg"], key=".".join(map(str, err["loc"]))) from None
    result = train_student(cfg, dataset)
    console.print(f"trained {result.steps} steps, loss {result.train_loss:.4f}, {result.seconds:.0f} s: "
                  f"{result.output_dir}")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Checkpoint dir, registry name or HF id.")],
    output_dir: Annotated[Path, typer.Option(help="Where the JSON results go.")],
    config: Annotated[Path | None, typer.Option(help="Take the benchmarks from this run config's `eval`.")] = None,
    gsm8k: Annotated[Path | None, typer.Option(help="GSM8K test JSONL (question, answer).")] = None,
    shots: Annotated[int, typer.Option(help="GSM8K few-shot examples (0 or 5 usual).")] = 0,
    ifeval: Annotated[str | None, typer.Option(help="IFEval prompts JSONL, or hf:google/IFEval.")] = None,
    gym: Annotated[str | None, typer.Option(help="reasoning-gym items: gym:TASK[+TASK...]:SIZE[:SEED].")] = None,
    gym_template: Annotated[str | None, typer.Option(help="--gym: wrap each question ('{prompt}' replaced).")] = None,
    exclude_prompts: Annotated[Path | None, typer.Option(
        help="--gym: leave out items whose question is a prompt of this training set (prompts file or "
             "dataset.jsonl).")] = None,
    lm_eval: Annotated[list[str] | None, typer.Option(help="lm-evaluation-harness task (repeatable).")] = None,
    lm_eval_include: Annotated[list[Path] | None, typer.Option(
        help="Folder of extra lm-eval task YAMLs (repeatable), e.g. docs/lm_eval_tasks for offline tasks.")] = None,
    n: Annotated[int | None, typer.Option(help="First n items of each benchmark (a fixed subset).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generation budget per answer.")] = None,
) -> None:
    """Evaluate a model on GSM8K, reasoning-gym items, IFEval and/or lm-evaluation-harness tasks; results are
    JSON, per-item records JSONL."""
    from persyn.experiments.eval import evaluate

    specs: list[dict] = []
    if config is not None:
        specs += [b.model_dump(exclude_none=True) for b in load_run_config(config).eval.benchmarks]
    extra = {k: v for k, v in (("n", n), ("max_new_tokens", max_new_tokens)) if v is not None}
    if gsm8k is not None:
        specs.append({"name": "gsm8k", "test_path": str(gsm8k), "shots": shots, **extra})
    if ifeval is not None:
        specs.append({"name": "ifeval", "prompts_path": ifeval, **extra})
    if gym is not None:
        specs.append({"name": "gym", "items": gym, **extra,
                      **({"template": gym_template} if gym_template is not None else {}),
                      **({"exclude_prompts_path": str(exclude_prompts)} if exclude_prompts else {})})
    if lm_eval:
        specs.append({"name": "lm_eval", "tasks": list(lm_eval), **({"limit": n} if n else {}),
                      **({"gen_kwargs": {"max_gen_toks": max_new_tokens}} if max_new_tokens else {}),
                      **({"include_path": [str(p) for p in lm_eval_include]} if lm_eval_include else {})})
    if not specs:
        raise ConfigError("name a benchmark: --gsm8k, --gym, --ifeval, --lm-eval or --config", key="eval")
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = evaluate(model, specs, output_dir=output_dir)
    console.print_json(json.dumps(summary))


@app.command("compare")
def compare_cmd(
    config: ConfigArg,
    strategy: Annotated[list[str] | None,
                        typer.Option(help="Strategy (repeatable); default compare.strategies.")] = None,
    no_train: Annotated[bool, typer.Option(help="Build the datasets only.")] = False,
    finished_only: Annotated[bool, typer.Option(help=(
        "Report the students already trained and evaluated; train and evaluate nobody (a table while a long "
        "compare runs)."))] = False,
) -> None:
    """Build each strategy's dataset, train and evaluate one student per strategy and seed, write report.md."""
    from persyn.experiments.compare import compare_dir, run_compare

    cfg = load_run_config(config)
    results = run_compare(cfg, strategies=strategy, train=False if no_train else None, finished_only=finished_only)
    table = Table(title="strategies")
    for c in ("strategy", "rows", "generations", "tokens", "runs"):
        table.add_column(c, justify="left" if c == "strategy" else "right")
    for name, e in results["strategies"].items():
        table.add_row(name, str(e["rows"]), str(e["generations_needed"]), str(e["tokens"]), str(len(e["runs"])))
    console.print(table)
    for label, st in (results.get("statistics") or {}).items():
        console.print(statistics_table(label, st))
    if results.get("unfinished"):
        console.print(f"not trained and evaluated yet ({len(results['unfinished'])}): "
                      f"{', '.join(results['unfinished'])}")
    console.print(f"report: {compare_dir(cfg) / 'report.md'}")


def statistics_table(label: str, st: dict) -> Table:
    """Accuracy and 95% CI per strategy, and the paired differences against each reference (* = resolved)."""
    refs = st["references"]
    table = Table(title=f"{label}: accuracy over {st['items']} items and the seeds, 95% CIs (two-level bootstrap); "
                        "differences paired, * where the CI excludes 0")
    for c in ("strategy", "seeds", "accuracy", "95% CI", *[f"vs {k} ({v})" for k, v in refs.items()]):
        table.add_column(c, justify="left" if c == "strategy" else "right")
    diffs = {(d["strategy"], d["against"]): d for d in st["differences"]}
    for name, e in st["strategies"].items():
        cells = []
        for k in refs:
            d = diffs.get((name, k))
            cells.append("-" if d is None else f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                         f"{'*' if d['resolved'] else ''} (mde {d['mde']:.3f})")
        table.add_row(name, str(e["seeds"]), f"{e['mean']:.3f}", f"[{e['lo']:.3f}, {e['hi']:.3f}]", *cells)
    return table

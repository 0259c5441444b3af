"""Compare's selection step, around the pure strategies: gather what they read (generating and scoring every
teacher's response on every prompt first when one needs them all), let each pick its teachers, generate every
chosen response the store lacks in one pass, and write one dataset per strategy with its cost."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from persyn.config import VERIFIED_SUFFIX, TeacherConfig, strategy_base
from persyn.experiments.strategies import Selection, SelectionInputs, Strategy, make_strategy, selected_rewards
from persyn.files import write_jsonl
from persyn.outputs.export import dataset_row
from persyn.prompts import Prompt
from persyn.run import Run, probe_rewards, rewards_for
from persyn.stages.generate import generate_pairs
from persyn.stages.score import score_prompts
from persyn.store import Meta

Pair = tuple[Prompt, TeacherConfig]


def strategy_dirname(name: str) -> str:
    """A strategy's folder under compare/: its name, with what a path should not hold (`teacher:a/b`) as `_`."""
    return re.sub(r"[^\w.+-]", "_", name)


def prepare_inputs(run: Run, prompts: list[Prompt], strategies: list[Strategy]) -> SelectionInputs:
    """Everything these strategies read. Their settings are checked before anything is generated."""
    inputs = SelectionInputs.from_config(run.cfg, len(prompts))
    for strategy in strategies:
        strategy.check(inputs)
    everything = None
    if any(s.needs_all_responses for s in strategies):
        generate_pairs(run, [(p, t) for p in prompts for t in run.cfg.teachers], "all responses")
        score_prompts(run, prompts, "all responses")
        everything = rewards_for(run, prompts)
    routing = run.store.routing()
    return replace(inputs, probe=probe_rewards(run), everything=everything,
                   routes=[routing[p.id].teacher if p.id in routing else None for p in prompts],
                   asked=[routing[p.id].candidates if p.id in routing else [] for p in prompts],
                   router_report=run.store.get_meta(Meta.ROUTER_REPORT))


def chosen_pairs(run: Run, prompts: list[Prompt], selection: Selection) -> list[Pair]:
    teachers = {t.name: t for t in run.cfg.teachers}
    return [(p, teachers[n]) for p, n in zip(prompts, selection.teachers, strict=True) if n is not None]


def needed_keys(run: Run, prompts: list[Prompt], selection: Selection, strategy: Strategy,
                inputs: SelectionInputs) -> set[str]:
    """The generations a strategy needs on its own: its dataset, plus what it read to choose."""
    gen_key = run.keys.generation
    keys = {gen_key(t, p) for p, t in chosen_pairs(run, prompts, selection)}
    if strategy.reads_probe(inputs):
        probe_ids = run.store.probe_ids()
        keys |= {gen_key(t, p) for p in prompts if p.id in probe_ids for t in run.cfg.teachers}
    if strategy.needs_all_responses:
        keys |= {gen_key(t, p) for p in prompts for t in run.cfg.teachers}
    if strategy.reads_routes and inputs.asked is not None:  # a budget > 1 or a cascade asked more than it kept
        teachers = {t.name: t for t in run.cfg.teachers}
        keys |= {gen_key(teachers[n], p) for p, asked in zip(prompts, inputs.asked, strict=True) for n in asked}
    return keys


def selection_cost(run: Run, keys: set[str]) -> dict[str, Any]:
    """Generations (and their tokens and cost) among these keys, counted from the store."""
    gens = [g for g in run.store.generations(keys).values() if g.error is None]
    teachers = {t.name: t for t in run.cfg.teachers}
    cost = sum(g.cost or (teachers[g.teacher].cost(g.prompt_tokens, g.completion_tokens) if g.teacher in teachers
                          else 0.0) for g in gens)
    return {"generations": len(gens), "generations_needed": len(keys),
            "tokens": sum(g.completion_tokens for g in gens), "cost": round(cost, 6)}


def write_dataset(run: Run, prompts: list[Prompt], selection: Selection, out_dir: Path,
                  drop: frozenset[str] = frozenset()) -> tuple[list[dict[str, Any]], list[str]]:
    """out_dir/dataset.jsonl from the stored chosen responses, without the prompts in `drop`; (its rows, ids of
    the prompts left out for want of a response)."""
    pairs = chosen_pairs(run, prompts, selection)
    gens = run.store.generations(run.keys.generation(t, p) for p, t in pairs)
    probe_ids = run.store.probe_ids()
    rows, missing = [], [p.id for p, n in zip(prompts, selection.teachers, strict=True) if n is None]
    persyn = strategy_base(selection.strategy) == "persyn"
    for p, t in pairs:
        g = gens.get(run.keys.generation(t, p))
        if g is None or g.error is not None:
            missing.append(p.id)
            continue
        if p.id in drop:
            continue
        source = ("probe" if p.id in probe_ids else "routed") if persyn else selection.strategy
        rows.append(dataset_row(p, g.text, t.name, source))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "dataset.jsonl", rows)
    return rows, missing


def build_datasets(run: Run, prompts: list[Prompt], inputs: SelectionInputs, selections: dict[str, Selection],
                   out_root: Path) -> dict[str, dict[str, Any]]:
    """Generate every chosen response the store lacks (all strategies in one pass), then write each strategy's
    out_root/<name>/dataset.jsonl and selection.json; returns the summaries."""
    generate_pairs(run, [pair for s in selections.values() for pair in chosen_pairs(run, prompts, s)], "datasets")
    summaries = {}
    for name, selection in selections.items():
        strategy = make_strategy(name)
        out_dir = out_root / strategy_dirname(name)
        drop = below_min_quality(run, prompts, selection) if name.endswith(VERIFIED_SUFFIX) else frozenset()
        rows, missing = write_dataset(run, prompts, selection, out_dir, drop)
        counts = Counter(r["teacher"] for r in rows)
        summary = {
            "strategy": name, "rows": len(rows), "missing": missing,
            **({"dropped_below_min_quality": len(drop)} if name.endswith(VERIFIED_SUFFIX) else {}),
            "teacher_counts": {n: counts.get(n, 0) for n in run.teacher_names()},
            "needs_all_responses": strategy.needs_all_responses,
            **selection_cost(run, needed_keys(run, prompts, selection, strategy, inputs)),
            "info": selection.info,
        }
        (out_dir / "selection.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        summaries[name] = summary
    return summaries


def below_min_quality(run: Run, prompts: list[Prompt], selection: Selection) -> frozenset[str]:
    """Ids of the prompts whose chosen response's quality is below export.min_quality, or unknown (unverified);
    the chosen responses are scored first where the store lacks their quality."""
    pairs = chosen_pairs(run, prompts, selection)
    score_prompts(run, [p for p, _ in pairs], "verify", kinds=("quality",))
    keys = {p.id: run.keys.generation(t, p) for p, t in pairs}
    done = run.store.done_keys(keys.values())  # a failed generation is missing, not dropped
    quality = run.store.scores("quality", run.keys.quality_scorer, done)
    threshold = run.cfg.export.min_quality
    assert threshold is not None  # VerifiedStrategy.check

    def verified(k: str) -> bool:
        q = quality.get(k)
        return q is not None and q >= threshold

    return frozenset(pid for pid, k in keys.items() if k in done and not verified(k))


def select_and_build(run: Run, prompts: list[Prompt], names: list[str],
                     out_root: Path) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Every strategy's dataset; returns per-strategy summaries (with `generated_now`: the generations this call
    made for it, each counted for the first strategy in `names` that needs it) and the known rewards of the
    chosen responses."""
    strategies = [make_strategy(n) for n in names]
    every_key = {run.keys.generation(t, p) for p in prompts for t in run.cfg.teachers}
    stored_before = run.store.done_keys(every_key)
    inputs = prepare_inputs(run, prompts, strategies)
    selections = {s.name: s.select(inputs) for s in strategies}
    summaries = build_datasets(run, prompts, inputs, selections, out_root)
    made_now = run.store.done_keys(every_key) - stored_before
    counted: set[str] = set()
    for s in strategies:
        mine = (needed_keys(run, prompts, selections[s.name], s, inputs) & made_now) - counted
        summaries[s.name]["generated_now"] = len(mine)
        counted |= mine
    rewards = rewards_for(run, prompts).reward  # only what is scored; nothing is generated here
    dist = {n: selected_rewards(s, run.teacher_names(), rewards).tolist() for n, s in selections.items()}
    return summaries, dist

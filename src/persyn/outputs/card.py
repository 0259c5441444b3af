"""The dataset card: README.md in the hub's format (YAML front matter, then Markdown), made from the run's records.

Every number comes from summary.json as export wrote it, so the card and the summary cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from persyn import __version__
from persyn.config import RunConfig
from persyn.errors import PersynError


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def read_summary(cfg: RunConfig) -> dict[str, Any]:
    path = cfg.path / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersynError(f"{path}: no summary yet; run `persyn run` with this config first") from None
    except json.JSONDecodeError as exc:
        raise PersynError(f"{path}:{exc.lineno}: malformed JSON") from None


def hub_license(cfg: RunConfig) -> str:
    """The front matter's licence: the teachers' one shared licence, "unknown" when none is given, else "other"."""
    given = {t.license for t in cfg.teachers}
    if given == {None}:
        return "unknown"
    return given.pop().lower() if len(given) == 1 else "other"


def router_facts(cfg: RunConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Router kind, backbone and held-out metrics; `gain` is its mean reward over the best single teacher's."""
    r = summary.get("router") or {}
    facts = {"kind": cfg.router.kind, "backbone": cfg.router.backbone, **r}
    if isinstance(r.get("val_mean_reward"), float) and isinstance(r.get("val_best_single_mean_reward"), float):
        facts["gain_over_best_single"] = r["val_mean_reward"] - r["val_best_single_mean_reward"]
    return facts


def _n(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def quality_section(summary: dict[str, Any]) -> list[str]:
    """The quality of the rows (before the filter) and what verified filtering dropped, from summary.json."""
    q, f = summary.get("quality") or {}, summary.get("filter")
    lines = []
    for src in ("probe", "routed", "dataset"):
        st = q.get(src)
        if not st or not st["rows"]:
            continue
        what = {"probe": "probe rows (before any filter)", "routed": "routed rows (before any filter)",
                "dataset": "rows in this dataset"}[src]
        if not st["scored"]:
            lines.append(f"- {what}: {st['rows']}, quality not scored")
            continue
        correct = f", {st['correct_share']:.2%} verified correct" if st.get("correct_share") is not None else ""
        lines.append(f"- {what}: {st['rows']}, mean quality {st['mean']:.4f} over {st['scored']} scored{correct}")
    if f:
        lines.append(f"- verified filtering (export.min_quality = {f['min_quality']:g}): dropped {f['dropped']} of "
                     f"{f['rows_before']} rows, {f['dropped_unknown_quality']} of them with unknown quality")
    return ["## Quality", "", f"Quality kind `{q.get('kind')}`.", "", *lines, ""] if lines else []


def card_text(cfg: RunConfig, summary: dict[str, Any], *, fmt: str, data_files: list[str],
              sources: Counter | None = None) -> str:
    from huggingface_hub import DatasetCardData

    rows = summary["dataset_rows"]
    size = next(s for n, s in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                               (float("inf"), "n>1M")) if rows < n)
    data = DatasetCardData(
        license=hub_license(cfg), task_categories=["text-generation"], size_categories=[size],
        tags=["synthetic", "distillation", "persyn"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
        persyn={"version": __version__, "config_hash": config_hash(cfg), "format": fmt, "rows": rows,
                "prompts": summary["prompts"], "probe_size": summary["probe_size"],
                "generations_total": summary["generations_total"],
                "generate_then_select_generations": summary["generate_then_select_generations"],
                "teacher_counts": summary["teacher_counts"], "teacher_shares": summary["teacher_shares"],
                **({"min_quality": f["min_quality"], "dropped_by_min_quality": f["dropped"]}
                   if (f := summary.get("filter")) else {})},
    )
    p, g, rf = cfg.prompts, cfg.generation, router_facts(cfg, summary)
    sources = sources or Counter()
    lines = [f"# {cfg.path.name}: a PerSyn dataset", "",
             f"{rows} prompt-response pairs for one student, written by {summary['teachers']} teachers. "
             "[PerSyn](https://arxiv.org/abs/2510.10925) had every teacher answer a probe set, scored each "
             "response for quality and for learnability by the student, trained a router on the probe, and had "
             "only the routed teacher answer every other prompt.", "",
             "## Prompts", "",
             f"- {summary['prompts']} prompts from `{p.path}` (field `{p.field}`"
             + (f", first {p.limit} after a shuffle with seed {p.seed}" if p.limit else "") + ")",
             f"- source of the rows: {sources.get('probe', 0)} probe (best-scored teacher's response), "
             f"{sources.get('routed', 0)} routed (the router's teacher)",
             f"- rows missing (failed or not yet generated): {len(summary.get('dataset_missing', []))}", "",
             *quality_section(summary),
             "## Teachers", "",
             "| teacher | model | share | rows | generations | completion tokens | cost | licence |",
             "|---|---|---|---|---|---|---|---|"]
    for t in cfg.teachers:
        info = summary["per_teacher"].get(t.name, {})
        lines.append(f"| {t.name} | `{t.model or t.backend}` | {summary['teacher_shares'].get(t.name, 0):.2%} | "
                     f"{summary['teacher_counts'].get(t.name, 0)} | {info.get('generations', 0)} | "
                     f"{info.get('completion_tokens', 0)} | {info.get('cost', 0)} | {t.license or 'unknown'} |")
    lines += ["", f"Generations: {summary['generations_total']} in total, against "
              f"{summary['generate_then_select_generations']} for Generate-then-Select (every teacher on every "
              f"prompt); saving {summary['generation_saving']:.2%}. Completion tokens: {summary['tokens_generated']}.",
              "", "## Student", "",
              f"- `{cfg.student.model}`" if cfg.student else "- none: alpha = 0 routes on quality alone", "",
              "## Reward", "",
              f"- alpha = {summary['alpha']} (weight of learnability; 1 - alpha on quality)",
              f"- normalisation: {cfg.reward.normalization}",
              f"- quality: {cfg.quality.kind}" + (f" (`{cfg.quality.model}`)" if cfg.quality.model else ""), "",
              "## Probe", "",
              f"- size: {summary['probe_size']} prompts, every teacher generated on each",
              f"- strategy: {cfg.probe.strategy} (seed {cfg.probe.seed})", "",
              "## Router", "",
              f"- kind: {rf['kind']}, backbone: `{rf['backbone']}`"]
    if summary.get("router"):
        lines += [f"- held-out probe: {_n(rf.get('n_val'))} prompts (trained on {_n(rf.get('n_train'))})",
                  f"- Hit@1 {_n(rf.get('val_hit1'))}, Hit@3 {_n(rf.get('val_hit3'))}",
                  f"- mean reward {_n(rf.get('val_mean_reward'))}; best single teacher "
                  f"{rf.get('best_single_teacher')} {_n(rf.get('val_best_single_mean_reward'))}; "
                  f"gain {_n(rf.get('gain_over_best_single'))}; oracle {_n(rf.get('val_oracle_mean_reward'))}; "
                  f"random {_n(rf.get('val_random_mean_reward'))}",
                  "- fell back to the best single teacher: " + ("yes" if rf.get("fallback_to_bias") else "no")]
    budget = g.budget
    lines += ["", "## Generation", "",
              f"- max_new_tokens {g.max_new_tokens}, temperature {g.temperature}, top_p {g.top_p}, seed {g.seed}"
              + (f", budget {budget}" if budget is not None else ""),
              "- per-teacher overrides: " + (", ".join(
                  f"{t.name}: " + ", ".join(f"{k} {v}" for k, v in ov.items())
                  for t in cfg.teachers if (ov := {k: getattr(t, k) for k in ("max_new_tokens", "temperature",
                                                                               "top_p") if getattr(t, k) is not None}))
                  or "none"), "",
              "## Licence", "",
              "Each row carries its `teacher`; the terms of that teacher's outputs apply to it.", ""]
    lines += [f"- {t.name}: {t.license or 'unknown'}" for t in cfg.teachers]
    lines += ["", "## Columns", "",
              f"Format `{fmt}`. Besides the training columns every row has `id`, `teacher`, `source` (probe or "
              "routed), `quality` and `learnability` (raw scores; null where the row was not scored).", "",
              "```python", "from datasets import load_dataset", "",
              'ds = load_dataset("path/to/this/folder", split="train")  # or the hub repo it was pushed to', "```",
              "",
              "## Provenance", "",
              f"- persyn {__version__}, config hash `{config_hash(cfg)}`"]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def write_card(cfg: RunConfig, path: Path, *, fmt: str, data_files: list[str]) -> Path:
    summary = read_summary(cfg)
    sources: Counter = Counter()
    dataset = cfg.path / "dataset.jsonl"
    if dataset.is_file():
        with dataset.open(encoding="utf-8") as fh:
            sources.update(json.loads(line).get("source") for line in fh if line.strip())
    path.write_text(card_text(cfg, summary, fmt=fmt, data_files=data_files, sources=sources), encoding="utf-8")
    return path

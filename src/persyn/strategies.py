"""Data-selection strategies: which teacher answers each prompt. PerSyn's router and the paper's baselines.

Every strategy picks one teacher per prompt over the same prompts, so every dataset has the same size. A strategy
declares what it reads: `uses_probe` (every teacher on the probe prompts) and `needs_all_responses` (every
teacher on every prompt, which Generate-then-Select costs); its cost is counted from exactly those generations.
"""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from persyn.config import CompareConfig
from persyn.errors import ConfigError, PersynError
from persyn.pipeline import generate_pairs, score_prompts
from persyn.prompts import Prompt
from persyn.run import RewardMatrices, Run, probe_rewards, rewards_for


@dataclass
class SelectionContext:
    """What strategies read: the run, its prompts, the probe's scores, and (on demand) every response's scores."""

    run: Run
    prompts: list[Prompt]
    options: CompareConfig
    _probe: RewardMatrices | None = field(default=None, repr=False)
    _full: RewardMatrices | None = field(default=None, repr=False)

    @property
    def teacher_names(self) -> list[str]:
        return self.run.teacher_names()

    def probe(self) -> RewardMatrices:
        """Every teacher's scores on the probe prompts."""
        if self._probe is None:
            self._probe = probe_rewards(self.run)
        return self._probe

    def full(self) -> RewardMatrices:
        """Every teacher's scores on every prompt: generates and scores what is missing."""
        if self._full is None:
            teachers = self.run.cfg.teachers
            generate_pairs(self.run, [(p, t) for p in self.prompts for t in teachers], "all responses")
            score_prompts(self.run, self.prompts, "all responses")
            self._full = rewards_for(self.run, self.prompts)
        return self._full

    def strength(self, names: list[str] | None = None) -> dict[str, float]:
        """Mean raw quality of each teacher on the probe (mean combined reward when quality is not scored)."""
        probe = self.probe()
        values = probe.quality if np.isfinite(probe.quality).any() else probe.reward
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(values, axis=0)
        out = {n: float(m) if np.isfinite(m) else float("-inf") for n, m in zip(self.teacher_names, means, strict=True)}
        return {n: v for n, v in out.items() if names is None or n in names}

    def teacher(self, name: str, key: str) -> str:
        if name not in self.teacher_names:
            raise ConfigError(f"no teacher named {name!r} (teachers: {', '.join(self.teacher_names)})", key=key)
        return name


@dataclass
class Selection:
    strategy: str
    teachers: list[str | None]  # per prompt, aligned with the context's prompts; None: no usable response
    info: dict[str, Any] = field(default_factory=dict)


class Strategy:
    name: ClassVar[str]
    uses_probe: ClassVar[bool] = True
    needs_all_responses: ClassVar[bool] = False

    def select(self, ctx: SelectionContext) -> Selection:
        raise NotImplementedError

    def reads_probe(self, ctx: SelectionContext) -> bool:
        return self.uses_probe


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def make_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})", key="compare.strategies")
    return STRATEGIES[name]()


def _argmax(row: np.ndarray) -> int | None:
    return None if not np.isfinite(row).any() else int(np.nanargmax(row))


def _best(strength: dict[str, float]) -> str:
    return max(strength, key=lambda n: (strength[n], -list(strength).index(n)))


@register_strategy
class PerSynStrategy(Strategy):
    """The router's choice (probe prompts keep their best probe response), as `persyn run` routed them."""

    name = "persyn"

    def select(self, ctx: SelectionContext) -> Selection:
        routing = ctx.run.store.routing()
        missing = [p.id for p in ctx.prompts if p.id not in routing]
        if missing:
            raise PersynError(f"{len(missing)} prompts are not routed yet: run `persyn run` on this config first")
        return Selection(self.name, [routing[p.id].teacher for p in ctx.prompts],
                         {"router": ctx.run.store.get_meta("router_report")})


@register_strategy
class OracleStrategy(Strategy):
    """Per-prompt argmax of the combined reward over every teacher's response (Generate-then-Select)."""

    name = "oracle"
    uses_probe = False
    needs_all_responses = True

    def select(self, ctx: SelectionContext) -> Selection:
        names = ctx.teacher_names
        picks = [_argmax(row) for row in ctx.full().reward]
        return Selection(self.name, [None if i is None else names[i] for i in picks])


@register_strategy
class StrongStrategy(Strategy):
    """One teacher for every prompt: the highest mean probe quality, or compare.strong_teacher."""

    name = "strong"

    def reads_probe(self, ctx: SelectionContext) -> bool:
        return ctx.options.strong_teacher is None

    def select(self, ctx: SelectionContext) -> Selection:
        name = strong_teacher(ctx)
        return Selection(self.name, [name] * len(ctx.prompts), {"teacher": name})


def strong_teacher(ctx: SelectionContext) -> str:
    if ctx.options.strong_teacher is not None:
        return ctx.teacher(ctx.options.strong_teacher, "compare.strong_teacher")
    return _best(ctx.strength())


@register_strategy
class FamilyStrongStrategy(Strategy):
    """The strongest teacher (mean probe quality) of the student's own family (student.family)."""

    name = "family-strong"

    def family_members(self, ctx: SelectionContext) -> list[str]:
        cfg = ctx.run.cfg
        family = cfg.student.family if cfg.student is not None else None
        if family is None:
            raise ConfigError("family-strong needs the student's family", key="student.family")
        members = [t.name for t in cfg.teachers if t.family == family]
        if not members:
            raise ConfigError(f"no teacher has family {family!r}", key="student.family")
        return members

    def reads_probe(self, ctx: SelectionContext) -> bool:
        return len(self.family_members(ctx)) > 1

    def select(self, ctx: SelectionContext) -> Selection:
        members = self.family_members(ctx)
        name = members[0] if len(members) == 1 else _best(ctx.strength(members))
        return Selection(self.name, [name] * len(ctx.prompts), {"teacher": name, "family": members})


@register_strategy
class MixStrategy(Strategy):
    """Strong and weak teacher drawn per prompt (seeded), strong with probability mix_strong_share (1:4)."""

    name = "mix"

    def reads_probe(self, ctx: SelectionContext) -> bool:
        return ctx.options.strong_teacher is None or ctx.options.weak_teacher is None

    def select(self, ctx: SelectionContext) -> Selection:
        opts = ctx.options
        strong = strong_teacher(ctx)
        if opts.weak_teacher is not None:
            weak = ctx.teacher(opts.weak_teacher, "compare.weak_teacher")
        else:
            strength = {n: v for n, v in ctx.strength().items() if n != strong}
            weak = min(strength, key=lambda n: (strength[n], list(strength).index(n)))
        if weak == strong:
            raise ConfigError("the weak teacher is the strong one", key="compare.weak_teacher")
        rng = random.Random(f"mix:{opts.seed}")
        picks = [strong if rng.random() < opts.mix_strong_share else weak for _ in ctx.prompts]
        return Selection(self.name, picks, {"strong": strong, "weak": weak, "strong_share": opts.mix_strong_share})


@register_strategy
class CARStrategy(Strategy):
    """One teacher for all: argmax of mean quality / (1 + beta * mean student loss) over every prompt (CAR)."""

    name = "car"
    uses_probe = False
    needs_all_responses = True

    def select(self, ctx: SelectionContext) -> Selection:
        alpha = ctx.run.cfg.reward.alpha
        if not 0 < alpha < 1:
            raise ConfigError("car needs both quality and the student's learnability: 0 < reward.alpha < 1",
                              key="reward.alpha")
        full = ctx.full()
        values = car_values(full.quality, full.learnability, ctx.options.car_beta)
        names = ctx.teacher_names
        name = names[_argmax(values)] if np.isfinite(values).any() else None
        car = {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, values, strict=True)}
        return Selection(self.name, [name] * len(ctx.prompts), {"teacher": name, "beta": ctx.options.car_beta,
                                                                "car": car})


def car_values(quality: np.ndarray, learnability: np.ndarray, beta: float) -> np.ndarray:
    """[T] CAR per teacher: mean quality / (1 + beta * mean loss), loss = -learnability (mean token NLL)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(quality, 0) / (1 + beta * np.nanmean(-learnability, 0))


@register_strategy
class RandomStrategy(Strategy):
    """A teacher drawn uniformly per prompt (seeded)."""

    name = "random"
    uses_probe = False

    def select(self, ctx: SelectionContext) -> Selection:
        rng = random.Random(f"random:{ctx.options.seed}")
        return Selection(self.name, [rng.choice(ctx.teacher_names) for _ in ctx.prompts])


# Datasets and costs -----------------------------------------------------------------------------------------

def build_dataset(ctx: SelectionContext, selection: Selection, out_dir: Path) -> dict[str, Any]:
    """Generate the chosen responses the store lacks, write out_dir/dataset.jsonl, return counts and costs."""
    run, cfg = ctx.run, ctx.run.cfg
    teachers = {t.name: t for t in cfg.teachers}
    chosen = [(p, teachers[n]) for p, n in zip(ctx.prompts, selection.teachers, strict=True) if n is not None]
    generate_pairs(run, chosen, selection.strategy)
    gens = run.store.generations(run.keys.generation(t, p) for p, t in chosen)
    probe_ids = run.store.probe_ids()
    rows, missing = [], [p.id for p, n in zip(ctx.prompts, selection.teachers, strict=True) if n is None]
    for p, t in chosen:
        g = gens.get(run.keys.generation(t, p))
        if g is None or g.error is not None:
            missing.append(p.id)
            continue
        source = ("probe" if p.id in probe_ids else "routed") if selection.strategy == "persyn" else selection.strategy
        rows.append({"id": p.id, "messages": [{"role": "user", "content": p.text},
                                              {"role": "assistant", "content": g.text}],
                     "teacher": t.name, "source": source})
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "dataset.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out_dir / "dataset.jsonl")
    strategy = make_strategy(selection.strategy)
    counts = Counter(r["teacher"] for r in rows)
    summary = {
        "strategy": selection.strategy, "rows": len(rows), "missing": missing,
        "teacher_counts": {n: counts.get(n, 0) for n in teachers},
        "needs_all_responses": strategy.needs_all_responses,
        **selection_cost(ctx, selection, uses_probe=strategy.reads_probe(ctx),
                         needs_all=strategy.needs_all_responses),
        "info": selection.info,
    }
    (out_dir / "selection.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


def selection_cost(ctx: SelectionContext, selection: Selection, *, uses_probe: bool,
                   needs_all: bool) -> dict[str, Any]:
    """Generations (and their tokens and cost) the strategy needs on its own, counted from the store."""
    cfg = ctx.run.cfg
    teachers = {t.name: t for t in cfg.teachers}
    gen_key = ctx.run.keys.generation
    keys = {gen_key(teachers[n], p) for p, n in zip(ctx.prompts, selection.teachers, strict=True) if n}
    if uses_probe:
        probe_ids = ctx.run.store.probe_ids()
        keys |= {gen_key(t, p) for p in ctx.prompts if p.id in probe_ids for t in cfg.teachers}
    if needs_all:
        keys |= {gen_key(t, p) for p in ctx.prompts for t in cfg.teachers}
    gens = [g for g in ctx.run.store.generations(keys).values() if g.error is None]
    price = {n: t.cost_per_1k_tokens for n, t in teachers.items()}
    cost = sum(g.cost or (g.prompt_tokens + g.completion_tokens) / 1000 * price.get(g.teacher, 0.0) for g in gens)
    return {"generations": len(gens), "generations_needed": len(keys),
            "tokens": sum(g.completion_tokens for g in gens), "cost": round(cost, 6)}


def selected_rewards(selection: Selection, names: list[str], rewards: np.ndarray) -> np.ndarray:
    """Combined reward of each chosen response where it is known (probe prompts, or all after oracle/car).

    A prompt counts only when at least two teachers' responses have a reward: a lone empty response gets a
    reward of 0 without any comparison, which says nothing."""
    index = {n: j for j, n in enumerate(names)}
    compared = np.isfinite(rewards).sum(1) >= 2
    values = [rewards[i, index[n]] for i, n in enumerate(selection.teachers) if n is not None and compared[i]]
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


"""Data-selection strategies: which teacher answers each prompt. PerSyn's router and the paper's baselines.

Every strategy is a pure function of `SelectionInputs` (teacher names, the config's choices and the reward matrices
that persyn.experiments.selection gathers before any strategy runs; the rules themselves are in
persyn.experiments.selection_rules) and picks one teacher per prompt, so every dataset has the same size. A strategy
declares what it reads: `reads_probe` (every teacher on the probe prompts) and `needs_all_responses` (every teacher
on every prompt, which Generate-then-Select costs); compare generates exactly those up front and counts a
strategy's cost from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from persyn.config import (
    ORACLE_AT,
    TEACHER_STRATEGY,
    VERIFIED_SUFFIX,
    CompareConfig,
    RewardConfig,
    RunConfig,
    oracle_alpha,
)
from persyn.errors import ConfigError, PersynError
from persyn.experiments.selection_rules import (
    argmax_or_none,
    car_values,
    mix_choice,
    oracle_choice,
    random_choice,
    strongest,
    teacher_strength,
    weakest,
)

if TYPE_CHECKING:
    from persyn.run import RewardMatrices


@dataclass(frozen=True)
class SelectionInputs:
    """What the strategies read. The config's part is there from the start (`from_config`, enough for `check`);
    compare fills in the matrices and routes the chosen strategies need."""

    teachers: list[str]
    families: dict[str, str | None]
    student_family: str | None
    reward: RewardConfig
    options: CompareConfig
    n_prompts: int
    min_quality: float | None = None  # export.min_quality, for the `+verified` strategies
    probe: RewardMatrices | None = None  # every teacher on the probe prompts
    everything: RewardMatrices | None = None  # every teacher on every prompt (Generate-then-Select)
    routes: list[str | None] | None = None  # the router's teacher per prompt as `persyn run` stored it; None: unrouted
    asked: list[list[str]] | None = None  # every teacher that run asked per routed prompt (budget > 1, cascade)
    router_report: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, n_prompts: int) -> SelectionInputs:
        return cls(teachers=[t.name for t in cfg.teachers], families={t.name: t.family for t in cfg.teachers},
                   student_family=cfg.student.family if cfg.student is not None else None,
                   reward=cfg.reward, options=cfg.compare, n_prompts=n_prompts,
                   min_quality=cfg.export.min_quality)

    def teacher(self, name: str, key: str) -> str:
        if name not in self.teachers:
            raise ConfigError(f"no teacher named {name!r} (teachers: {', '.join(self.teachers)})", key=key)
        return name

    def probe_matrices(self) -> RewardMatrices:
        if self.probe is None:
            raise PersynError("the probe's reward matrices were not gathered "
                              "(persyn.experiments.selection.prepare_inputs)")
        return self.probe

    def all_matrices(self) -> RewardMatrices:
        if self.everything is None:
            raise PersynError("every teacher's response on every prompt was not gathered "
                              "(persyn.experiments.selection.prepare_inputs does it for strategies that need it)")
        return self.everything


@dataclass
class Selection:
    strategy: str
    teachers: list[str | None]  # per prompt, aligned with the inputs' prompts; None: no usable response
    info: dict[str, Any] = field(default_factory=dict)


# Strategies: each names its rule, checks its settings and says what it reads ----------------------------------

class Strategy:
    name: ClassVar[str]
    needs_all_responses: ClassVar[bool] = False
    reads_routes: ClassVar[bool] = False  # its dataset is `persyn run`'s routing, paid for with every teacher asked

    def check(self, inputs: SelectionInputs) -> None:
        """Raise ConfigError for settings that cannot work; called before anything is generated."""

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return True

    def select(self, inputs: SelectionInputs) -> Selection:
        raise NotImplementedError


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def make_strategy(name: str) -> Strategy:
    if name.endswith(VERIFIED_SUFFIX):
        return VerifiedStrategy(make_strategy(name.removesuffix(VERIFIED_SUFFIX)))
    if name.startswith(TEACHER_STRATEGY):
        return SingleTeacherStrategy(name.removeprefix(TEACHER_STRATEGY))
    if name.startswith(ORACLE_AT):
        try:
            return OracleAtStrategy(oracle_alpha(name), name)
        except ValueError:
            raise ConfigError(f"{name!r}: expected oracle@ALPHA with ALPHA in [0, 1]",
                              key="compare.strategies") from None
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)}, teacher:NAME, oracle@ALPHA; "
                          f"each may end in {VERIFIED_SUFFIX})", key="compare.strategies")
    return STRATEGIES[name]()


@register_strategy
class PerSynStrategy(Strategy):
    """The router's choice (probe prompts keep their best probe response), as `persyn run` routed them."""

    name = "persyn"
    reads_routes = True

    def select(self, inputs: SelectionInputs) -> Selection:
        routes = inputs.routes if inputs.routes is not None else [None] * inputs.n_prompts
        missing = sum(r is None for r in routes)
        if missing:
            raise PersynError(f"{missing} prompts are not routed yet: run `persyn run` on this config first")
        return Selection(self.name, list(routes), {"router": inputs.router_report})


@register_strategy
class OracleStrategy(Strategy):
    """Per-prompt argmax of the combined reward over every teacher's response (Generate-then-Select)."""

    name = "oracle"
    needs_all_responses = True

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return False

    def select(self, inputs: SelectionInputs) -> Selection:
        seed = inputs.options.seed
        return Selection(self.name, oracle_choice(inputs.all_matrices().reward, inputs.teachers, seed),
                         {"alpha": inputs.reward.alpha, "ties": f"drawn uniformly (compare.seed {seed})"})


class OracleAtStrategy(Strategy):
    """`oracle@ALPHA`: the oracle by Eq. 2 at this alpha instead of reward.alpha, from the same stored scores, so
    one compare holds Generate-then-Select at several alphas on the same responses. Exact ties are drawn as for
    `oracle`; at alpha 0 with a 0/1 quality that is the rule among the correct answers."""

    needs_all_responses = True

    def __init__(self, alpha: float, name: str | None = None) -> None:
        self.alpha = alpha
        self.needs = RewardConfig(alpha=alpha)  # what Eq. 2 at this alpha reads
        self.name = name or f"{ORACLE_AT}{alpha:g}"  # type: ignore[misc] - per instance, as the config spells it

    def check(self, inputs: SelectionInputs) -> None:
        if self.needs.needs_quality and not inputs.reward.needs_quality:
            raise ConfigError(f"{self.name} needs quality, which reward.alpha = 1 never computes", key="reward.alpha")
        if self.needs.needs_learnability and not inputs.reward.needs_learnability:
            raise ConfigError(f"{self.name} needs the student's learnability, which reward.alpha = 0 never "
                              "computes", key="reward.alpha")

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return False

    def select(self, inputs: SelectionInputs) -> Selection:
        self.check(inputs)
        seed = inputs.options.seed
        reward = inputs.all_matrices().reward_at(self.alpha, inputs.reward.normalization)
        return Selection(self.name, oracle_choice(reward, inputs.teachers, seed),
                         {"alpha": self.alpha, "ties": f"drawn uniformly (compare.seed {seed})"})


class SingleTeacherStrategy(Strategy):
    """`teacher:NAME`: that one teacher answers every prompt (the pool's single-teacher baselines)."""

    def __init__(self, teacher: str) -> None:
        self.teacher_name = teacher
        self.name = TEACHER_STRATEGY + teacher  # type: ignore[misc] - per instance, not per class

    def check(self, inputs: SelectionInputs) -> None:
        inputs.teacher(self.teacher_name, "compare.strategies")

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return False

    def select(self, inputs: SelectionInputs) -> Selection:
        self.check(inputs)
        return Selection(self.name, [self.teacher_name] * inputs.n_prompts, {"teacher": self.teacher_name})


class VerifiedStrategy(Strategy):
    """`NAME+verified`: strategy NAME's choice, then only the rows whose quality reaches export.min_quality
    (rejection sampling; persyn.experiments.selection scores the chosen responses and drops the others)."""

    def __init__(self, base: Strategy) -> None:
        self.base = base
        self.name = base.name + VERIFIED_SUFFIX  # type: ignore[misc]
        self.needs_all_responses = base.needs_all_responses  # type: ignore[misc]
        self.reads_routes = base.reads_routes  # type: ignore[misc]

    def check(self, inputs: SelectionInputs) -> None:
        if inputs.min_quality is None:
            raise ConfigError(f"{self.name!r} drops rows below export.min_quality: set it (e.g. 1)",
                              key="export.min_quality")
        if not inputs.reward.needs_quality:
            raise ConfigError("verified rows need quality, but reward.alpha = 1 never computes it",
                              key="reward.alpha")
        self.base.check(inputs)

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return self.base.reads_probe(inputs)

    def select(self, inputs: SelectionInputs) -> Selection:
        chosen = self.base.select(inputs)
        return Selection(self.name, chosen.teachers, {**chosen.info, "min_quality": inputs.min_quality})


def strong_teacher(inputs: SelectionInputs) -> str:
    """compare.strong_teacher, or the highest mean probe quality."""
    if inputs.options.strong_teacher is not None:
        return inputs.teacher(inputs.options.strong_teacher, "compare.strong_teacher")
    return strongest(teacher_strength(inputs.probe_matrices(), inputs.teachers))


@register_strategy
class StrongStrategy(Strategy):
    """One teacher for every prompt: the highest mean probe quality, or compare.strong_teacher."""

    name = "strong"

    def check(self, inputs: SelectionInputs) -> None:
        if inputs.options.strong_teacher is not None:
            inputs.teacher(inputs.options.strong_teacher, "compare.strong_teacher")

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return inputs.options.strong_teacher is None

    def select(self, inputs: SelectionInputs) -> Selection:
        name = strong_teacher(inputs)
        return Selection(self.name, [name] * inputs.n_prompts, {"teacher": name})


@register_strategy
class FamilyStrongStrategy(Strategy):
    """The strongest teacher (mean probe quality) of the student's own family (student.family)."""

    name = "family-strong"

    def family_members(self, inputs: SelectionInputs) -> list[str]:
        family = inputs.student_family
        if family is None:
            raise ConfigError("family-strong needs the student's family", key="student.family")
        members = [n for n in inputs.teachers if inputs.families[n] == family]
        if not members:
            raise ConfigError(f"no teacher has family {family!r}", key="student.family")
        return members

    def check(self, inputs: SelectionInputs) -> None:
        self.family_members(inputs)

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return len(self.family_members(inputs)) > 1

    def select(self, inputs: SelectionInputs) -> Selection:
        members = self.family_members(inputs)
        if len(members) == 1:
            name = members[0]
        else:
            strength = teacher_strength(inputs.probe_matrices(), inputs.teachers)
            name = strongest({n: v for n, v in strength.items() if n in members})
        return Selection(self.name, [name] * inputs.n_prompts, {"teacher": name, "family": members})


@register_strategy
class MixStrategy(Strategy):
    """Strong and weak teacher drawn per prompt (seeded), strong with probability mix_strong_share (1:4)."""

    name = "mix"

    def check(self, inputs: SelectionInputs) -> None:
        opts = inputs.options
        if opts.strong_teacher is not None:
            inputs.teacher(opts.strong_teacher, "compare.strong_teacher")
        if opts.weak_teacher is not None:
            inputs.teacher(opts.weak_teacher, "compare.weak_teacher")
            if opts.weak_teacher == opts.strong_teacher:
                raise ConfigError("the weak teacher is the strong one", key="compare.weak_teacher")

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return inputs.options.strong_teacher is None or inputs.options.weak_teacher is None

    def select(self, inputs: SelectionInputs) -> Selection:
        opts = inputs.options
        strong = strong_teacher(inputs)
        if opts.weak_teacher is not None:
            weak = inputs.teacher(opts.weak_teacher, "compare.weak_teacher")
        else:
            strength = teacher_strength(inputs.probe_matrices(), inputs.teachers)
            weak = weakest({n: v for n, v in strength.items() if n != strong})
        if weak == strong:
            raise ConfigError("the weak teacher is the strong one", key="compare.weak_teacher")
        picks = mix_choice(strong, weak, inputs.n_prompts, opts.mix_strong_share, opts.seed)
        return Selection(self.name, picks, {"strong": strong, "weak": weak, "strong_share": opts.mix_strong_share})


@register_strategy
class CARStrategy(Strategy):
    """One teacher for all: argmax of mean quality / (1 + beta * mean student loss) over every prompt (CAR)."""

    name = "car"
    needs_all_responses = True

    def check(self, inputs: SelectionInputs) -> None:
        if not (inputs.reward.needs_quality and inputs.reward.needs_learnability):
            raise ConfigError("car needs both quality and the student's learnability: 0 < reward.alpha < 1",
                              key="reward.alpha")

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return False

    def select(self, inputs: SelectionInputs) -> Selection:
        self.check(inputs)
        everything = inputs.all_matrices()
        beta = inputs.options.car_beta
        values = car_values(everything.quality, everything.learnability, beta)
        best = argmax_or_none(values)
        name = None if best is None else inputs.teachers[best]
        car = {n: (float(v) if np.isfinite(v) else None) for n, v in zip(inputs.teachers, values, strict=True)}
        return Selection(self.name, [name] * inputs.n_prompts, {"teacher": name, "beta": beta, "car": car})


@register_strategy
class RandomStrategy(Strategy):
    """A teacher drawn uniformly per prompt (seeded)."""

    name = "random"

    def reads_probe(self, inputs: SelectionInputs) -> bool:
        return False

    def select(self, inputs: SelectionInputs) -> Selection:
        return Selection(self.name, random_choice(inputs.teachers, inputs.n_prompts, inputs.options.seed))


def selected_rewards(selection: Selection, names: list[str], rewards: np.ndarray) -> np.ndarray:
    """Combined reward of each chosen response where it is known (probe prompts, or all after oracle/car).

    A prompt counts only when at least two teachers' responses have a reward: a lone empty response gets a
    reward of 0 without any comparison, which says nothing."""
    index = {n: j for j, n in enumerate(names)}
    compared = np.isfinite(rewards).sum(1) >= 2
    values = [rewards[i, index[n]] for i, n in enumerate(selection.teachers) if n is not None and compared[i]]
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]

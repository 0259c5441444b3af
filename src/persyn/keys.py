"""One identity for everything the store keeps. Every key names all that shapes the output it keys:

- a generation: the prompt's text, the teacher backend's own `fingerprint()` (a recorded file's digest; a
  server's base_url, model and extra body; local weights' identity and the chat template's content) and the
  generation parameters;
- a quality score: the generation key, and the scorer's kind, model weights and max_length (or field);
- a learnability score: the generation key, and the student's weights, template, few_shot and max_length;
- the probe: prompt ids ranked by a hash of (seed, id), so appending prompts does not redraw it;
- a routing row: the router's fingerprint and the prompt's text.

Weights are identified through persyn.models.model_identity, whose file digests are cached on disk by
(path, size, mtime, inode, ctime): a run does not re-read unchanged weights. Display names, secrets, batch
sizes and dtypes are left out, so changing them redoes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

from persyn.backends.base import GenParams, generation_key, make_backend
from persyn.config import RunConfig, TeacherConfig
from persyn.prompts import Prompt
from persyn.store import Meta


def digest(obj: Any, n: int = 16) -> str:
    """A short sha256 of a JSON-able value (sorted keys): the one way persyn fingerprints a structure."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:n]


def weights_identity(spec: str) -> str:
    """What identifies the weights behind a model spec (cheap: file digests are cached on disk)."""
    from persyn.models import model_identity

    return model_identity(spec)


def teacher_params(cfg: RunConfig, t: TeacherConfig) -> GenParams:
    """The sampling parameters of a teacher: its overrides over the run's generation defaults."""
    g = cfg.generation
    return GenParams(
        max_new_tokens=t.max_new_tokens or g.max_new_tokens,
        temperature=g.temperature if t.temperature is None else t.temperature,
        top_p=t.top_p or g.top_p,
        seed=g.seed,
    )


def teacher_fingerprint(t: TeacherConfig) -> str:
    """The teacher backend's own fingerprint; builds the backend, which loads no model and needs no API key."""
    return make_backend(t, identity_only=True).fingerprint()


class Keys:
    """The keys of one run's config. Teacher fingerprints and scorer ids are computed once per instance (one
    per invocation), so a file edited between invocations is seen by the next one."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self._teachers: dict[str, str] = {}

    def params(self, t: TeacherConfig) -> GenParams:
        return teacher_params(self.cfg, t)

    def teacher(self, t: TeacherConfig) -> str:
        if t.name not in self._teachers:
            self._teachers[t.name] = teacher_fingerprint(t)
        return self._teachers[t.name]

    def generation(self, t: TeacherConfig, prompt: Prompt) -> str:
        return generation_key(prompt.text, self.teacher(t), self.params(t))

    @cached_property
    def quality_scorer(self) -> str:
        q = self.cfg.quality
        parts: dict[str, Any] = {"kind": q.kind}
        if q.kind == "reward_model":
            parts |= {"model": weights_identity(q.model) if q.model else None, "max_length": q.max_length}
        elif q.kind == "field":
            parts["field"] = q.field
        return json.dumps(parts, sort_keys=True)

    @cached_property
    def learnability_scorer(self) -> str:
        s = self.cfg.student
        if s is None:
            raise ValueError("learnability needs a student")
        parts = {"model": weights_identity(s.model), "chat_template": s.chat_template, "few_shot": s.few_shot,
                 "max_length": s.max_length}
        if s.server_url:
            parts["server_url"] = s.server_url
        if s.server_url and s.server_model:  # a server may serve adapters of the same base under other names
            parts["server_model"] = s.server_model
        return json.dumps(parts, sort_keys=True)

    def router(self, probe: Sequence[Prompt], rewards_bytes: bytes) -> str:
        """The trained router's identity: the probe prompts (ids and texts), their rewards and the router settings,
        including the backbone's weights."""
        r = self.cfg.router
        backbone = self.cfg.student.model if r.backbone == "student" and self.cfg.student else r.backbone
        return hashlib.sha256(
            rewards_bytes + r.model_dump_json().encode() + weights_identity(backbone).encode()
            + json.dumps([[p.id, p.text] for p in probe] + [[t.name] for t in self.cfg.teachers]).encode()
        ).hexdigest()[:16]

    @staticmethod
    def route(router_fp: str | None, prompt: Prompt) -> str:
        """A routing row's identity: the router that scored it and the prompt text it scored."""
        return f"{router_fp}:{digest(prompt.text, 12)}"

    def snapshot(self) -> dict[str, Any]:
        """What the stored outputs of this config depend on, for `describe_changes` on the next run."""
        cfg = self.cfg
        snap: dict[str, Any] = {"teachers": {t.name: {"fingerprint": self.teacher(t),
                                                      "params": self.params(t).as_dict()}
                                             for t in cfg.teachers}}
        if cfg.reward.needs_quality:
            snap["quality"] = self.quality_scorer
        if cfg.reward.needs_learnability and cfg.student is not None:
            snap["student"] = self.learnability_scorer
        snap["reward"] = cfg.reward.model_dump(mode="json")
        snap["router"] = cfg.router.model_dump(mode="json")
        return snap


# Probe ------------------------------------------------------------------------------------------------------

def probe_rank(prompt_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()


def draw_probe(ids: Iterable[str], size: int, seed: int, keep: Iterable[str] = ()) -> list[str]:
    """`size` prompt ids, ranked by a hash of (seed, id): each id's rank depends on nothing else, so appending
    prompts never reorders the others. Ids in `keep` (the last run's probe, when it was drawn with this seed)
    that are still present come first, so appended prompts leave the probe as it was and a larger size only adds
    to it. Returns the ids in draw order."""
    ids = list(dict.fromkeys(ids))
    present = set(ids)
    kept = sorted((i for i in set(keep) if i in present), key=lambda i: probe_rank(i, seed))
    rest = sorted((i for i in ids if i not in set(kept)), key=lambda i: probe_rank(i, seed))
    return (kept + rest)[:size]


def current_probe(store: Any, cfg: RunConfig, ids: list[str]) -> list[str]:
    """This config's probe over these prompt ids (a Store gives the last run's probe, kept when drawn with the
    same seed)."""
    same_seed = store.get_meta(Meta.PROBE_SEED, cfg.probe.seed) == cfg.probe.seed
    keep = store.probe_ids() if same_seed else ()
    return draw_probe(ids, min(cfg.probe.resolve(len(ids)), len(ids)), cfg.probe.seed, keep=keep)


# What changed -----------------------------------------------------------------------------------------------

_WORDS = {"model": "weights", "digest": "recorded file", "file": "recorded file", "body": "extra.body",
          "base_url": "base_url", "chat_template": "chat template", "few_shot": "few_shot",
          "max_length": "max_length", "kind": "kind", "field": "field", "server_url": "server_url",
          "backend": "backend", "fields": "field names"}


def _fields(old: str, new: str) -> list[str]:
    """Human names of the fields that differ between two fingerprints (JSON objects, or opaque strings)."""
    try:
        a, b = json.loads(old), json.loads(new)
    except ValueError:
        return ["identity"]
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return ["identity"]
    words = {**_WORDS, "model": "model"} if b.get("backend") == "openai" else _WORDS  # a served name, not weights
    names = [words.get(k, k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return list(dict.fromkeys(names)) or ["identity"]


def describe_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between the snapshot of the last run and this one, one phrase per input."""
    if not old:
        return []
    out: list[str] = []
    old_t, new_t = old.get("teachers", {}), new.get("teachers", {})
    for name, now in new_t.items():
        was = old_t.get(name)
        if was is None:
            out.append(f"teacher {name} added")
            continue
        what = _fields(was["fingerprint"], now["fingerprint"]) if was["fingerprint"] != now["fingerprint"] else []
        if was["params"] != now["params"]:
            what.append("generation parameters")
        if what:
            out.append(f"teacher {name} ({', '.join(what)})")
    out += [f"teacher {name} removed" for name in old_t if name not in new_t]
    for part, label in (("student", "student"), ("quality", "quality scorer")):
        if part in new and part in old and old[part] != new[part]:
            out.append(f"{label} ({', '.join(_fields(old[part], new[part]))})")
    for part in ("reward", "router"):  # settings: name the keys that differ
        was, now = old.get(part) or {}, new.get(part) or {}
        if diff := [k for k in now if k in was and was[k] != now[k]]:
            out.append(f"{part} ({', '.join(diff)})")
    return out


def describe_prompt_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Prompt changes between two {id: text} maps: texts edited under the same id, prompts added or removed."""
    out = []
    if edited := sum(1 for i, text in new.items() if i in old and old[i] != text):
        out.append(f"text of {edited} prompt{'s' * (edited != 1)}")
    if added := sum(1 for i in new if i not in old):
        out.append(f"{added} prompt{'s' * (added != 1)} added")
    if removed := sum(1 for i in old if i not in new):
        out.append(f"{removed} prompt{'s' * (removed != 1)} removed")
    return out

"""Prompt readers: .jsonl/.json/.csv/.parquet files or `hf:NAME[:SPLIT]`, with ids, dedup and located errors."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persyn.config import PromptsConfig
from persyn.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    reference: str | None = None


def prompt_id(text: str) -> str:
    return "p" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _first_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    for lineno, _, row in jsonl_rows_at(path):
        yield lineno, row


def jsonl_rows_at(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(line number, byte offset of the line, parsed row) for each non-blank line of a JSONL file."""
    with path.open("rb") as fh:
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            at, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"not UTF-8 (byte {exc.start})", file=str(path), line=lineno) from None
            if not line.strip():
                continue
            try:
                yield lineno, at, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", file=str(path),
                                 line=lineno) from None
            except (ValueError, RecursionError) as exc:  # an integer too long to convert, nesting too deep
                raise InputError(f"malformed JSON: {_first_line(exc)}", file=str(path), line=lineno) from None


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 (byte {exc.start})", file=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} (column {exc.colno})", file=str(path),
                         line=exc.lineno) from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"malformed JSON: {_first_line(exc)}", file=str(path)) from None
    if isinstance(data, dict):  # {"data": [...]} and similar single-key wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError("expected a list of objects (or an object holding one list)", file=str(path))
        data = lists[0]
    if not isinstance(data, list):
        raise InputError("expected a list of objects", file=str(path))
    # JSON arrays have no line numbers worth giving; report the item's index as its "line" (1-based).
    yield from enumerate(data, start=1)


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 (byte {exc.start})", file=str(path)) from None
    except csv.Error as exc:
        raise InputError(f"malformed CSV: {exc}", file=str(path)) from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"unreadable parquet: {exc}", file=str(path)) from None
    yield from enumerate(table.to_pylist(), start=1)


def _hf_rows(spec: str) -> Iterator[tuple[int, Any]]:
    import datasets

    name, _, split = spec.removeprefix("hf:").partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise InputError(f"cannot load dataset: {exc}".splitlines()[0], file=spec) from None
    yield from enumerate(ds, start=1)


_GYM_TASK = re.compile(r"^([a-z0-9_]+)(?:\((.*)\))?$")


def _gym_value(text: str) -> Any:
    """A task setting's value: int, float, true/false, or the text itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _gym_task(text: str, spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME` or `NAME(key=value,...)`: a task and the settings of its reasoning-gym config."""
    m = _GYM_TASK.match(text.strip())
    if m is None:
        raise InputError(f"bad task {text!r}: expected NAME or NAME(key=value,...)", file=spec)
    settings: dict[str, Any] = {}
    for pair in filter(None, (m.group(2) or "").split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"bad task setting {pair!r} in {text!r}: expected key=value", file=spec)
        settings[key.strip()] = _gym_value(value)
    return m.group(1), settings


def _gym_rows(spec: str) -> Iterator[tuple[int, Any]]:
    """`gym:TASK[+TASK...]:SIZE[:SEED]`: problems made offline by reasoning-gym, rows {prompt, answer, task, entry}.

    A TASK is `NAME` or `NAME(key=value,...)` with settings of the task's config (e.g. `chain_sum(max_terms=3)`).
    `entry` is the item as JSON (task, answer, metadata): the reference that quality kind `gym` checks with the
    task's own verifier."""
    parts = spec.removeprefix("gym:").rsplit(":", 2)
    if len(parts) == 3 and not parts[2].strip().lstrip("-").isdigit():
        parts = [f"{parts[0]}:{parts[1]}", parts[2]]
    try:
        names, size = parts[0].split("+"), int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise InputError("expected gym:NAME[+NAME...]:SIZE[:SEED]", file=spec) from None
    tasks = [_gym_task(n, spec) for n in names]
    try:
        import reasoning_gym
    except ImportError:
        raise InputError("gym: prompts need the reasoning-gym package (pip install 'persyn[demo]')",
                         file=spec) from None
    per_task = [size // len(tasks) + (i < size % len(tasks)) for i in range(len(tasks))]
    line = 0
    for i, ((name, settings), n) in enumerate(zip(tasks, per_task, strict=True)):
        try:
            dataset = reasoning_gym.create_dataset(name, size=n, seed=seed + i, **settings)
        except Exception as exc:
            raise InputError(f"reasoning-gym task {name!r}: {exc}", file=spec) from None
        for item in dataset:
            line += 1
            entry = json.dumps({"task": name, "answer": item["answer"], "metadata": item.get("metadata", {})},
                               sort_keys=True, default=str)
            yield line, {"prompt": item["question"], "answer": str(item["answer"]), "task": name, "entry": entry}


READERS = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}


def read_rows(source: str) -> Iterator[tuple[int, Any]]:
    if source.startswith("hf:"):
        return _hf_rows(source)
    if source.startswith("gym:"):
        return _gym_rows(source)
    path = Path(source)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"unsupported prompt file type {path.suffix!r} (use {', '.join(READERS)} or hf:NAME)",
                         file=source)
    if not path.is_file():
        raise InputError("file not found", file=source)
    return reader(path)


def _text(value: Any, *, source: str, line: int, field: str, required: bool) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        if required:
            raise InputError("missing field", file=source, line=line, field=field)
        return None
    if isinstance(value, (dict, list)):
        raise InputError("expected text, got a JSON " + type(value).__name__, file=source, line=line, field=field)
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON "\ud800": a lone surrogate, which no UTF-8 file can hold
        raise InputError(f"invalid Unicode (lone surrogate at character {exc.start})", file=source, line=line,
                         field=field) from None
    return text


def load_prompts(cfg: PromptsConfig, *, require_reference: bool = False) -> list[Prompt]:
    """Read, validate, dedupe and (with `limit`) subsample the prompt set, in a deterministic order."""
    prompts: list[Prompt] = []
    seen_text: dict[str, int] = {}
    seen_id: dict[str, int] = {}
    duplicates = 0
    for line, row in read_rows(cfg.path):
        if not isinstance(row, dict):
            raise InputError("expected an object", file=cfg.path, line=line)
        if cfg.field not in row:
            raise InputError("missing prompt field", file=cfg.path, line=line, field=cfg.field)
        text = _text(row[cfg.field], source=cfg.path, line=line, field=cfg.field, required=True)
        assert text is not None
        if not text.strip():
            raise InputError("empty prompt", file=cfg.path, line=line, field=cfg.field)
        if cfg.template is not None:
            text = cfg.template.replace("{prompt}", text)
        reference = None
        if cfg.reference_field:
            reference = _text(row.get(cfg.reference_field), source=cfg.path, line=line,
                              field=cfg.reference_field, required=require_reference)
            if require_reference and not (reference or "").strip():
                raise InputError("missing reference answer", file=cfg.path, line=line, field=cfg.reference_field)
        if text in seen_text:
            duplicates += 1
            continue
        seen_text[text] = line
        if cfg.id_field:
            pid = _text(row.get(cfg.id_field), source=cfg.path, line=line, field=cfg.id_field, required=True)
            assert pid is not None
            if pid in seen_id:
                raise InputError(f"duplicate id {pid!r} (first on line {seen_id[pid]})", file=cfg.path,
                                 line=line, field=cfg.id_field)
        else:
            pid = prompt_id(text)
        seen_id[pid] = line
        prompts.append(Prompt(pid, text, reference))
    if duplicates:
        log.warning("%s: removed %d duplicate prompt(s)", cfg.path, duplicates)
    if require_reference and not cfg.reference_field:
        raise InputError("this quality kind (math_answer, gym) needs prompts.reference_field", file=cfg.path)
    if not prompts:
        raise InputError("no prompts", file=cfg.path)
    if cfg.limit is not None and cfg.limit < len(prompts):
        rng = random.Random(cfg.seed)
        keep = sorted(rng.sample(range(len(prompts)), cfg.limit))
        prompts = [prompts[i] for i in keep]
    return prompts

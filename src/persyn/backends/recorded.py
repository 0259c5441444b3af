"""Responses already on disk (JSONL or parquet of prompt -> response), e.g. AlpacaEval model outputs.

Rows may carry per-response `quality` and `learnability` fields, which then replace computed scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from persyn.backends.base import GenRequest, GenResult, register_backend
from persyn.errors import ConfigError, InputError
from persyn.prompts import read_rows


def _number(value: Any, *, file: str, line: int, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"expected a number, got {value!r}", file=file, line=line, field=field)
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError("expected a finite number", file=file, line=line, field=field)
    return value


class RecordedBackend:
    def __init__(self, teacher: Any, **_: Any) -> None:
        if not teacher.model:
            raise ConfigError("recorded backend needs `model`: the responses file",
                              key=f"teachers.{teacher.name}.model")
        self.name = teacher.name
        self.path = Path(teacher.model)
        if not self.path.is_file():
            raise ConfigError(f"responses file not found: {self.path}", key=f"teachers.{teacher.name}.model")
        self.teacher = teacher
        self._rows: dict[str, tuple[str, float | None, float | None]] | None = None
        self._digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def fingerprint(self) -> str:
        t = self.teacher
        return json.dumps({"backend": "recorded", "file": self.path.name, "digest": self._digest,
                           "fields": [t.prompt_field, t.response_field, t.quality_field, t.learnability_field]},
                          sort_keys=True)

    def _load(self) -> dict[str, tuple[str, float | None, float | None]]:
        if self._rows is None:
            t, src, rows = self.teacher, str(self.path), {}
            for line, row in read_rows(src):
                if not isinstance(row, dict):
                    raise InputError("expected an object", file=src, line=line)
                for f in (t.prompt_field, t.response_field):
                    if f not in row:
                        raise InputError("missing field", file=src, line=line, field=f)
                text = row[t.response_field]
                if text is not None and not isinstance(text, str):
                    raise InputError("expected text", file=src, line=line, field=t.response_field)
                q = _number(row.get(t.quality_field), file=src, line=line, field=t.quality_field or "") \
                    if t.quality_field else None
                lrn = _number(row.get(t.learnability_field), file=src, line=line, field=t.learnability_field or "") \
                    if t.learnability_field else None
                rows.setdefault(str(row[t.prompt_field]), (text or "", q, lrn))
            self._rows = rows
        return self._rows

    def generate(self, requests: list[GenRequest]) -> Iterator[GenResult]:
        rows = self._load()
        for req in requests:
            hit = rows.get(req.prompt)
            if hit is None:
                yield GenResult(req.key, None, error=f"no recorded response in {self.path.name}")
                continue
            text, quality, learnability = hit
            yield GenResult(req.key, text, completion_tokens=len(text.split()), quality=quality,
                            learnability=learnability, extra={"approx_tokens": True})

    def close(self) -> None:
        self._rows = None


register_backend("recorded")(RecordedBackend)

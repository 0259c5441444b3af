"""Responses already on disk (JSONL or parquet of prompt -> response), e.g. AlpacaEval model outputs.

Rows may carry per-response `quality` and `learnability` fields, which then replace computed scores.

Memory stays bounded by what is used: the file is read once, validated row by row, and indexed into a SQLite file
cached by the file's sha256 (and the field names) under `persyn.models.cache_root()/recorded`. A JSONL row is
indexed by its byte offset and read back only when a request needs it; other formats keep the row's values in the
index. A later run over the same file reuses the index without reading the file again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from persyn.backends.base import GenRequest, GenResult, batched, register_backend
from persyn.errors import ConfigError, InputError
from persyn.files import atomic_path
from persyn.models.cache import sha256_memo
from persyn.prompts import jsonl_rows_at, read_rows

_INDEX_VERSION = 1
_INSERT_BATCH = 2000


def _number(value: Any, *, file: str, line: int, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"expected a number, got {value!r}", file=file, line=line, field=field)
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError("expected a finite number", file=file, line=line, field=field)
    return value


def _prompt_key(prompt: str) -> bytes:
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()[:16]


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
        # Remembered by (path, size, mtime, inode, ctime), across processes: an unchanged file is not read again,
        # and an edited one always changes its ctime.
        self._sha = sha256_memo(self.path)
        self._digest = self._sha[:16]
        self._db: sqlite3.Connection | None = None
        self._fh: Any = None

    def fingerprint(self) -> str:
        t = self.teacher
        return json.dumps({"backend": "recorded", "file": self.path.name, "digest": self._digest,
                           "fields": [t.prompt_field, t.response_field, t.quality_field, t.learnability_field]},
                          sort_keys=True)

    @property
    def jsonl(self) -> bool:
        return self.path.suffix.lower() == ".jsonl"

    def index_path(self) -> Path:
        from persyn.models import cache_root

        t = self.teacher
        fields = json.dumps([_INDEX_VERSION, t.prompt_field, t.response_field, t.quality_field,
                             t.learnability_field])
        tag = hashlib.sha256(fields.encode()).hexdigest()[:12]
        return cache_root() / "recorded" / f"{self._sha[:32]}-{tag}.sqlite"

    def _rows(self) -> Iterator[tuple[int, int | None, Any]]:
        if self.jsonl:
            yield from jsonl_rows_at(self.path)
        else:
            for line, row in read_rows(str(self.path)):
                yield line, None, row

    def _build_index(self, target: Path) -> None:
        """Validate every row and write the index to a temporary file, renamed into place when complete."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.unlink(missing_ok=True)
            self._write_index(tmp)

    def _write_index(self, tmp: Path) -> None:
        t, src = self.teacher, str(self.path)
        db = sqlite3.connect(tmp)
        try:
            db.execute("CREATE TABLE rows (key BLOB PRIMARY KEY, line INTEGER NOT NULL, offset INTEGER, "
                       "text TEXT, quality REAL, learnability REAL) WITHOUT ROWID")
            batch: list[tuple] = []
            for line, offset, row in self._rows():
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
                batch.append((_prompt_key(str(row[t.prompt_field])), line, offset,
                              None if offset is not None else (text or ""), q, lrn))
                if len(batch) >= _INSERT_BATCH:
                    db.executemany("INSERT OR IGNORE INTO rows VALUES (?,?,?,?,?,?)", batch)  # first row wins
                    batch = []
            db.executemany("INSERT OR IGNORE INTO rows VALUES (?,?,?,?,?,?)", batch)
            db.commit()
        finally:
            db.close()

    def _index(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.index_path()
            if not path.is_file():
                self._build_index(path)
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        return self._db

    def _lookup(self, prompts: list[str]) -> dict[bytes, tuple[str, float | None, float | None]]:
        db = self._index()
        keys = list({_prompt_key(p) for p in prompts})
        found: list[tuple] = []
        for chunk in batched(keys, 900):
            marks = ",".join("?" * len(chunk))
            found.extend(db.execute(f"SELECT key, line, offset, text, quality, learnability FROM rows "
                                    f"WHERE key IN ({marks})", chunk))
        out: dict[bytes, tuple[str, float | None, float | None]] = {}
        if self.jsonl and found:
            if self._fh is None:
                self._fh = self.path.open("rb")
            for key, _, offset, _, q, lrn in sorted(found, key=lambda r: r[2]):  # one forward pass over the file
                self._fh.seek(offset)
                row = json.loads(self._fh.readline())
                if not isinstance(row, dict) or _prompt_key(str(row.get(self.teacher.prompt_field))) != key:
                    raise InputError("the file changed while persyn was reading it; run again", file=str(self.path))
                out[key] = (row[self.teacher.response_field] or "", q, lrn)
        else:
            out = {key: (text, q, lrn) for key, _, _, text, q, lrn in found}
        return out

    def generate(self, requests: list[GenRequest]) -> Iterator[GenResult]:
        for chunk in batched(requests, 512):
            rows = self._lookup([r.prompt for r in chunk])
            for req in chunk:
                hit = rows.get(_prompt_key(req.prompt))
                if hit is None:
                    yield GenResult(req.key, None, error=f"no recorded response in {self.path.name}")
                    continue
                text, quality, learnability = hit
                yield GenResult(req.key, text, completion_tokens=len(text.split()), quality=quality,
                                learnability=learnability, extra={"approx_tokens": True})

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


register_backend("recorded")(RecordedBackend)

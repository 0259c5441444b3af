"""The run's one SQLite store. Every generation and score is committed as it is made.

Generations are keyed by a content hash of (prompt, teacher fingerprint, generation parameters), scores by
(generation key, kind, scorer fingerprint): a change of teacher or parameters misses the old keys and regenerates
only what it affects, and a change of student misses only the learnability scores.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from persyn.backends.base import GenResult
from persyn.errors import PersynError
from persyn.prompts import Prompt

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
  id TEXT PRIMARY KEY, idx INTEGER NOT NULL, text TEXT NOT NULL, reference TEXT, active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS probe (prompt_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS generations (
  key TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, teacher TEXT NOT NULL, fingerprint TEXT NOT NULL,
  params TEXT NOT NULL, text TEXT, error TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
  seconds REAL, cost REAL, pre_quality REAL, pre_learnability REAL, created REAL NOT NULL, invocation TEXT
);
CREATE INDEX IF NOT EXISTS generations_prompt ON generations (prompt_id, teacher);
CREATE TABLE IF NOT EXISTS scores (
  gen_key TEXT NOT NULL, kind TEXT NOT NULL, scorer TEXT NOT NULL, value REAL, truncated INTEGER DEFAULT 0,
  created REAL NOT NULL, PRIMARY KEY (gen_key, kind, scorer)
);
CREATE TABLE IF NOT EXISTS routing (
  prompt_id TEXT PRIMARY KEY, teacher TEXT NOT NULL, scores TEXT NOT NULL, probe INTEGER NOT NULL,
  router TEXT NOT NULL, candidates TEXT
);
"""


class Meta:
    """The keys of the store's meta table, one place for their names and meaning."""

    VERSION = "version"  # moves on any write of stored data (persyn.stamp)
    PROBE_SEED = "probe_seed"  # the seed the stored probe was drawn with
    ADAPTIVE_PROBE_SIZE = "adaptive_probe_size"  # the size adaptive growth reached
    PROBE_ROUNDS = "probe_rounds"  # adaptive growth: [{"size", "cv_gain"}] per round
    ROUTER_FP = "router_fp"  # the saved router's identity (persyn.keys.Keys.router)
    ROUTER_REPORT = "router_report"  # its RouterReport, as summary.json shows it
    ROUTE_PLAN = "route_plan"  # the budget and accept_quality the routing was made for
    IDENTITY = "identity"  # the last run's inputs, for the "what changed" line
    STAGE_SECONDS = "stage_seconds"  # each stage's latest wall time
    RUN_STAMP = "run_stamp"  # the finished run's stamp
    STUDENT_SERVER_CHECKED = "student_server_checked"  # the learnability key whose server passed the check


# Meta keys that record how a run went rather than what it made: writing them does not move the store's version.
BOOKKEEPING_META = frozenset({Meta.VERSION, Meta.STAGE_SECONDS, Meta.IDENTITY, Meta.RUN_STAMP,
                              Meta.STUDENT_SERVER_CHECKED})


@dataclass(frozen=True)
class Generation:
    key: str
    prompt_id: str
    teacher: str
    text: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cost: float
    pre_quality: float | None
    pre_learnability: float | None


class Route(NamedTuple):
    """Where a prompt's dataset row comes from: the kept teacher and every teacher that generated for it."""

    teacher: str
    scores: dict[str, float]
    probe: bool
    router: str
    candidates: list[str]


class RunLock:
    """An exclusive flock on run_dir/.lock. The kernel drops it when the holder dies, so it is never stale."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PersynError(f"{self.path.parent}: another persyn run (pid {holder}) is using this run_dir; "
                              "wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Autocommit: each statement is its own transaction, so a killed run loses at most the row in flight.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(routing)")}
        if "candidates" not in columns:  # a store made before generation budgets
            self.db.execute("ALTER TABLE routing ADD COLUMN candidates TEXT")
        self._counted = False  # whether this connection's writes are already counted in `version`

    @classmethod
    def open(cls, run_dir: str | Path) -> Store:
        """The run_dir's store; `with Store.open(run_dir) as store:` closes it on the way out."""
        return cls(Path(run_dir) / "persyn.sqlite")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # version: a counter that moves whenever the stored data may have changed, so a stamp taken at one version
    # (persyn.stamp) tells whether anything was written since, by this process or any other.
    def version(self) -> int:
        return int(self.get_meta(Meta.VERSION, 0))

    def _changed(self) -> None:
        if not self._counted:  # once per connection until the next stamp: not a write per generation
            self.db.execute("INSERT INTO meta VALUES ('version', '1') "
                            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
            self._counted = True

    def count_next_write(self) -> None:
        """After a stamp: the next write moves the version again."""
        self._counted = False

    # meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        if key not in BOOKKEEPING_META:
            self._changed()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # prompts
    def set_prompts(self, prompts: list[Prompt]) -> None:
        self._changed()
        with self.transaction():
            self.db.execute("UPDATE prompts SET active=0")
            self.db.executemany(
                "INSERT INTO prompts (id, idx, text, reference, active) VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT(id) DO UPDATE SET idx=excluded.idx, text=excluded.text, "
                "reference=excluded.reference, active=1",
                [(p.id, i, p.text, p.reference) for i, p in enumerate(prompts)],
            )

    def prompts(self) -> list[Prompt]:
        rows = self.db.execute("SELECT id, text, reference FROM prompts WHERE active=1 ORDER BY idx")
        return [Prompt(*r) for r in rows]

    # probe
    def set_probe(self, ids: Iterable[str]) -> None:
        self._changed()
        with self.transaction():
            self.db.execute("DELETE FROM probe")
            self.db.executemany("INSERT INTO probe VALUES (?)", [(i,) for i in ids])

    def probe_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT prompt_id FROM probe")}

    # generations
    def done_keys(self, keys: Iterable[str]) -> set[str]:
        """Keys that hold a successful generation (failed ones are retried)."""
        keys = list(keys)
        found: set[str] = set()
        for i in range(0, len(keys), 900):
            chunk = keys[i : i + 900]
            q = f"SELECT key FROM generations WHERE error IS NULL AND key IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self.db.execute(q, chunk))
        return found

    def add_generation(self, result: GenResult, *, prompt_id: str, teacher: str, fingerprint: str,
                       params: dict[str, Any], invocation: str) -> None:
        self._changed()
        self.db.execute(
            "INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (result.key, prompt_id, teacher, fingerprint, json.dumps(params, sort_keys=True), result.text,
             result.error, result.prompt_tokens, result.completion_tokens, result.seconds, result.cost,
             result.quality, result.learnability, time.time(), invocation),
        )

    def generations(self, keys: Iterable[str]) -> dict[str, Generation]:
        keys = list(keys)
        out: dict[str, Generation] = {}
        cols = ("key, prompt_id, teacher, text, error, prompt_tokens, completion_tokens, seconds, cost, "
                "pre_quality, pre_learnability")
        for i in range(0, len(keys), 900):
            chunk = keys[i : i + 900]
            q = f"SELECT {cols} FROM generations WHERE key IN ({','.join('?' * len(chunk))})"
            for row in self.db.execute(q, chunk):
                out[row[0]] = Generation(*row)
        return out

    def generation_totals(self, fingerprint: str, params: dict[str, Any]) -> tuple[int, int, int, float]:
        """(generations, completion tokens, prompt tokens, cost) of one teacher's successful generations on the
        active prompts: the rows whose keys that teacher and these parameters would make, found without hashing
        every prompt (a prompt's id is a hash of its text)."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(g.completion_tokens), 0), COALESCE(SUM(g.prompt_tokens), 0), "
            "COALESCE(SUM(g.cost), 0) FROM generations g JOIN prompts p ON p.id = g.prompt_id AND p.active = 1 "
            "WHERE g.error IS NULL AND g.fingerprint = ? AND g.params = ?",
            (fingerprint, json.dumps(params, sort_keys=True))).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), float(row[3])

    def failed(self) -> list[tuple[str, str, str]]:
        return list(self.db.execute("SELECT prompt_id, teacher, error FROM generations WHERE error IS NOT NULL"))

    # scores
    def scores(self, kind: str, scorer: str, keys: Iterable[str]) -> dict[str, float | None]:
        keys = list(keys)
        out: dict[str, float | None] = {}
        for i in range(0, len(keys), 900):
            chunk = keys[i : i + 900]
            q = (f"SELECT gen_key, value FROM scores WHERE kind=? AND scorer=? AND gen_key IN "
                 f"({','.join('?' * len(chunk))})")
            out.update(dict(self.db.execute(q, [kind, scorer, *chunk]).fetchall()))
        return out

    def add_scores(self, kind: str, scorer: str, values: dict[str, float | None],
                   truncated: Iterable[str] = (), truncated_count: int = 0) -> None:
        """Store scores; `truncated_count` (responses cut to fit, when the scorer cannot say which) is added to
        the scorer's running total in the same transaction, so a killed run neither loses nor repeats it."""
        trunc = set(truncated)
        now = time.time()
        self._changed()
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?)",
                [(k, kind, scorer, v, int(k in trunc), now) for k, v in values.items()],
            )
            if truncated_count:
                key = f"truncated:{kind}:{scorer}"
                self.set_meta(key, self.get_meta(key, 0) + truncated_count)

    def truncated_total(self, kind: str, scorer: str) -> int:
        return self.get_meta(f"truncated:{kind}:{scorer}", 0)

    def set_routing(self, rows: list[tuple[str, Route]]) -> None:
        self._changed()
        with self.transaction():
            self.db.execute("DELETE FROM routing")
            self.db.executemany("INSERT INTO routing VALUES (?,?,?,?,?,?)",
                                [(pid, r.teacher, json.dumps(r.scores), int(r.probe), r.router,
                                  json.dumps(r.candidates)) for pid, r in rows])

    def update_routes(self, rows: dict[str, tuple[str, list[str]]]) -> None:
        """Set (kept teacher, candidates) of routed prompts, in one transaction."""
        self._changed()
        with self.transaction():
            self.db.executemany("UPDATE routing SET teacher=?, candidates=? WHERE prompt_id=?",
                                [(t, json.dumps(c), pid) for pid, (t, c) in rows.items()])

    def routing(self) -> dict[str, Route]:
        rows = self.db.execute("SELECT prompt_id, teacher, scores, probe, router, candidates FROM routing")
        return {r[0]: Route(r[1], json.loads(r[2]), bool(r[3]), r[4], json.loads(r[5]) if r[5] else [r[1]])
                for r in rows}

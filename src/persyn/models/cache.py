"""The on-disk model cache: its root, file digests (remembered across processes), locks and atomic publishing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from persyn.files import sha256_file


def cache_root() -> Path:
    return Path(os.environ.get("PERSYN_CACHE") or Path.home() / ".cache" / "persyn").expanduser()


_HASH_MEMO: dict[tuple[str, int, int, int, int], str] = {}
_SMALL_FILE = 1 << 20  # hashed on every call; larger files (weights) go through the on-disk digest cache


def sha256_memo(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime, inode, ctime): in this process and, for files over
    1 MiB, across processes in CACHE/digests.sqlite, so a run does not re-read gigabytes of unchanged weights.
    Weights rewritten in place change the ctime (which no tool can set back), so they are hashed again."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = sha256_file(path) if st.st_size <= _SMALL_FILE else _cached_digest(path, key)
    return _HASH_MEMO[key]


def _cached_digest(path: Path, key: tuple[str, int, int, int, int]) -> str:
    import sqlite3

    stat_key = json.dumps(key[1:])
    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(cache_root() / "digests.sqlite", timeout=30, isolation_level=None)
    except (OSError, sqlite3.Error):  # a read-only cache: hash without remembering
        return sha256_file(path)
    try:
        with contextlib.suppress(sqlite3.Error):
            db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stat TEXT NOT NULL, "
                       "sha256 TEXT NOT NULL)")
            row = db.execute("SELECT stat, sha256 FROM digests WHERE path=?", (key[0],)).fetchone()
            if row and row[0] == stat_key:
                return row[1]
        digest = sha256_file(path)
        with contextlib.suppress(sqlite3.Error):  # not remembered: hashed again next time, never wrong
            db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (key[0], stat_key, digest))
        return digest
    finally:
        db.close()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (two runs fetching the same model wait for each other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tmp_sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def remove_stale_tmp(target: Path) -> None:
    """Leftovers of a killed run (its pid is gone) are removed; a live run's are left alone."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def publish_dir(tmp: Path, target: Path) -> None:
    """Atomic: the target directory appears complete or not at all."""
    try:
        os.replace(tmp, target)
    except OSError:  # another process published it first
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def say(progress: bool, message: str) -> None:
    if progress:
        print(f"[persyn.models] {message}", file=sys.stderr, flush=True)

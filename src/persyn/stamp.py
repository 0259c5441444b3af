"""A finished run's stamp: what its outputs were made from. A full rerun whose inputs, store and outputs all match
the stamp has nothing to do, and says so without walking every stage over every prompt.

The stamp holds digests of the resolved config, of the identity snapshot (persyn.keys: teacher fingerprints,
scorers, student, router), of the loaded prompts, persyn's version, the store's version (moved by every write
to the store, from any process: persyn.store) and the size and mtime of every output file. It is written only
after a full run that leaves nothing pending, so a failed generation or score is always retried.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persyn.keys import digest
from persyn.store import Meta

if TYPE_CHECKING:
    from persyn.prompts import Prompt
    from persyn.run import Run

OUTPUTS = ("dataset.jsonl", "routing.jsonl", "scores.jsonl", "summary.json", "config.resolved.yaml",
           "router/router.json")


def _prompts_digest(prompts: list[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.id, p.text, p.reference], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def outputs_state(run_dir: Path) -> dict[str, list[int] | None]:
    """Size and mtime of each output file (None: missing), so an edited or deleted output is seen."""
    out: dict[str, list[int] | None] = {}
    for name in OUTPUTS:
        path = run_dir / name
        st = path.stat() if path.exists() else None
        out[name] = None if st is None else [st.st_size, st.st_mtime_ns]
    return out


def _cheap_parts(run: Run) -> dict[str, Any]:
    from persyn import __version__

    return {
        "persyn": __version__,
        "config": digest(run.cfg.model_dump(mode="json"), 64),
        "store": run.store.version(),
        "outputs": outputs_state(run.run_dir),
    }


def current_stamp(run: Run, prompts: list[Prompt]) -> dict[str, Any]:
    return {**_cheap_parts(run), "identity": digest(run.keys.snapshot(), 64), "prompts": _prompts_digest(prompts)}


def up_to_date_prompts(run: Run, read: Callable[[], list[Prompt]]) -> tuple[list[Prompt] | None, bool]:
    """(prompts, whether the run matches its stamp). The parts that need neither the prompts nor the teachers'
    fingerprints are compared first; when they differ, nothing is read (None) and the run takes the stages, with
    preflight, as usual. When they match, the config is the one that passed preflight in the stamped run."""
    stamp = run.store.get_meta(Meta.RUN_STAMP)
    cheap = _cheap_parts(run)
    if stamp is None or any(stamp.get(k) != v for k, v in cheap.items()):
        return None, False
    prompts = read()
    return prompts, stamp == {**cheap, "identity": digest(run.keys.snapshot(), 64), "prompts": _prompts_digest(prompts)}


def write_stamp(run: Run, prompts: list[Prompt]) -> None:
    run.store.set_meta(Meta.RUN_STAMP, current_stamp(run, prompts))
    run.store.count_next_write()

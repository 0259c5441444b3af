"""`persyn export --format`: the run's dataset.jsonl in the layouts trainers read, with a dataset card beside it.

Every format keeps each row's `id`, `teacher`, `source` (probe/routed), `quality` and `learnability` (raw scores,
null where the row was not scored) as extra columns, which TRL, LLaMA-Factory and Axolotl ignore.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from persyn.config import RunConfig
from persyn.errors import PersynError
from persyn.files import atomic_path, write_jsonl
from persyn.prompts import jsonl_rows_at

FORMATS = ("messages", "prompt-completion", "sharegpt", "alpaca", "hf")
META = ("id", "teacher", "source", "quality", "learnability")
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
SHARD_BYTES = 500 << 20  # parquet shard size the hub's viewer handles well
ARROW_DIR = "arrow"  # hf format: the save_to_disk folder inside the export


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise PersynError(f"--format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt


def require_run(cfg: RunConfig) -> None:
    """An export needs a run: its store must exist (the export stage would otherwise start an empty one)."""
    if not (cfg.path / "persyn.sqlite").is_file():
        raise PersynError(f"{cfg.run_dir}: nothing to export yet; run `persyn run` with this config first")


def run_rows(cfg: RunConfig) -> list[dict[str, Any]]:
    """The run's exported rows (dataset.jsonl); an error when no run has routed and generated anything yet."""
    require_run(cfg)
    path = cfg.path / "dataset.jsonl"
    if not path.is_file():
        raise PersynError(f"{cfg.run_dir}: nothing to export yet; run `persyn run` with this config first")
    rows = [row for _, _, row in jsonl_rows_at(path)]
    if not rows:
        raise PersynError(f"{path}: the run has no dataset rows yet; run `persyn run` with this config first")
    return rows


def convert(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """One dataset.jsonl row in `fmt`; the metadata columns come last."""
    messages = row["messages"]
    meta = {k: row.get(k) for k in META}
    if fmt in ("messages", "hf"):
        return {"messages": messages, **meta}
    if fmt == "prompt-completion":  # TRL's conversational prompt-completion: loss on the completion only
        return {"prompt": messages[:-1], "completion": messages[-1:], **meta}
    if fmt == "sharegpt":  # LLaMA-Factory's and Axolotl's ShareGPT layout
        return {"conversations": [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in messages],
                **meta}
    if fmt == "alpaca":
        system = [m["content"] for m in messages if m["role"] == "system"]
        return {"instruction": messages[-2]["content"], "input": "", "output": messages[-1]["content"],
                **({"system": system[0]} if system else {}), **meta}
    raise AssertionError(fmt)


def data_files(fmt: str, n_shards: int = 1) -> list[str]:
    """The data files of an export folder, relative to it (the card's `configs` points at them)."""
    if fmt == "hf":
        return [f"data/train-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    return ["train.jsonl"]


def write_export(cfg: RunConfig, fmt: str, out: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Write the run's dataset as `fmt` under `out` (default run_dir/export/FMT) with its README.md card."""
    from persyn.outputs.card import write_card

    check_format(fmt)
    rows = [convert(r, fmt) for r in run_rows(cfg)]
    out = out or cfg.path / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        files = _write_hf(rows, out)
    else:
        write_jsonl(out / "train.jsonl", rows)
        files = data_files(fmt)
    write_card(cfg, out / "README.md", fmt=fmt, data_files=files)
    return out, rows


def _write_hf(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """Parquet shards under out/data (the hub's layout: load_dataset(out) reads them through the card) and a
    save_to_disk copy in out/arrow (load_from_disk; a folder holding one cannot also be read by load_dataset)."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # per-shard bars for a few MB are noise on the console
    try:
        ds = datasets.Dataset.from_list(rows)
        ds.save_to_disk(str(out / ARROW_DIR))
        n = max(1, math.ceil(ds.data.nbytes / SHARD_BYTES))
        files = data_files("hf", n)
        (out / "data").mkdir(exist_ok=True)
        for old in (out / "data").glob("*.parquet"):
            if old.relative_to(out).as_posix() not in files:
                old.unlink()  # shards of an earlier, larger export
        for i, name in enumerate(files):
            with atomic_path(out / name) as tmp:
                ds.shard(n, i, contiguous=True).to_parquet(str(tmp))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return files


def check_hub(repo: str) -> None:
    """Before any work: offline (HF_HUB_OFFLINE) there is no hub to push to."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise PersynError(f"--push-to-hub {repo}: the hub cannot be reached offline (HF_HUB_OFFLINE is set); "
                          "unset it, or export without --push-to-hub and upload the folder later")


def push_to_hub(rows: list[dict[str, Any]], card: Path, repo: str, *, private: bool = False) -> str:
    """Upload the rows with `datasets`' own push_to_hub, then the card; offline or unreachable: one-line error."""
    check_hub(repo)
    import datasets
    from huggingface_hub import DatasetCard, constants

    try:
        datasets.Dataset.from_list(rows).push_to_hub(repo, private=private)
        DatasetCard.load(card).push_to_hub(repo, repo_type="dataset")
    except Exception as exc:  # network, auth and hub errors: the export on disk stays
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PersynError(f"--push-to-hub {repo}: {type(exc).__name__}: {first}; the export is in "
                          f"{card.parent}") from None
    return f"{constants.ENDPOINT}/datasets/{repo}"

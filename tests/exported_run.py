"""A finished recorded-teacher run made through the real CLI, shared by the export and report tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from persyn.cli import main

LICENSES = {"alpha": "Apache-2.0", "gamma": "CC-BY-4.0"}  # beta gives none: "unknown"


def make_run(root: Path, n: int = 30, probe: int = 15) -> tuple[Path, dict]:
    """Three recorded teachers over `n` prompts (no model generates), run end to end by `persyn run`."""
    from test_pipeline import recorded_config, recorded_pool

    recorded_pool(root, n=n)
    cfg = recorded_config(root, probe={"size": probe, "seed": 0}, router={"bt": {"epochs": 30}, "seed": 0})
    for t in cfg["teachers"]:
        if t["name"] in LICENSES:
            t["license"] = LICENSES[t["name"]]
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["run", str(path)])
    return path, cfg


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

"""The scored 8-teacher AlpacaEval pool of docs/routing.md, as recorded teachers that carry their scores.

`alpaca_pool_scores.jsonl` (committed) holds, for each of the 805 x 8 responses in ../shared/data/alpaca_eval,
the GPT-4-Turbo judge's quality and SmolLM2-135M-Instruct's learnability (Eq. 1; first 128 prompt+response tokens,
bfloat16), made once by `persyn probe` + `persyn score` on docs/routing/alpaca_pool.yaml (about 2 CPU-hours here).
This script joins them back onto the responses, one recorded-teacher file per model under runs/alpaca_scored/, so
`persyn router-eval docs/routing/alpaca_frontier.yaml` reads the learnability instead of paying for it again:

    python docs/routing/make_pool.py [SCORES OUT]   # from the repository root, ../shared beside it
    python docs/routing/make_pool.py --dump     # rewrite alpaca_pool_scores.jsonl from runs/alpaca_pool's store
    python docs/routing/make_pool.py --dump STORE SCORES   # another store's scores to another file
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data" / "alpaca_eval" / "teachers"
SCORES = HERE / "alpaca_pool_scores.jsonl"
OUT = Path("runs/alpaca_scored/teachers")


def dump(store: Path = Path("runs/alpaca_pool/persyn.sqlite"), scores: Path = SCORES) -> None:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT g.teacher, g.prompt_id, p.text, "
        "(SELECT value FROM scores s WHERE s.gen_key = g.key AND s.kind = 'quality'), "
        "(SELECT value FROM scores s WHERE s.gen_key = g.key AND s.kind = 'learnability') "
        "FROM generations g JOIN prompts p ON p.id = g.prompt_id ORDER BY p.idx, g.teacher")
    with scores.open("w", encoding="utf-8") as fh:
        for teacher, pid, text, quality, learn in rows:
            fh.write(json.dumps({"teacher": teacher, "prompt_id": pid, "instruction": text, "quality": quality,
                                 "learnability": learn}, ensure_ascii=False) + "\n")


def build(scores_path: Path = SCORES, out: Path = OUT) -> None:
    scores: dict[tuple[str, str], dict] = {}
    for line in scores_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        scores[(row["teacher"], row["instruction"])] = row
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(SHARED.glob("*.jsonl")):
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            s = scores[(path.stem, row["instruction"])]
            rows.append({**row, "learnability": s["learnability"]})
        (out / path.name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(list(out.glob('*.jsonl')))} teachers with learnability")


if __name__ == "__main__":
    if "--dump" in sys.argv:  # --dump [STORE SCORES]: another store (e.g. learnability at 512 tokens) to another file
        args = sys.argv[sys.argv.index("--dump") + 1:]
        dump(*(Path(a) for a in args[:2]))
    else:  # [SCORES OUT]: another scores file to another folder
        build(*(Path(a) for a in sys.argv[1:3]))

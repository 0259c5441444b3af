"""Tables of the evidence experiment (docs/results.md), read from the runs' stores and results files.

    python docs/evidence/tables.py pilot [RUN_DIR]   # teacher x task accuracy of the pilot (docs/evidence/pilot.yaml)
    python docs/evidence/tables.py dump RUN_DIR OUT  # a scored pool as recorded teachers (one JSONL per teacher)
    python docs/evidence/tables.py scores POOL OUT   # that pool as one scores file for docs/routing/candidate_rule.py
    python docs/evidence/tables.py students COMPARE_DIR OUT  # every tested student's per-item verdicts, the report
    python docs/evidence/tables.py students COMPARE_DIR OUT SUFFIX  # another config's students, as NAME-SUFFIX
    python docs/evidence/tables.py tasks OUT         # accuracy per task and answer format, from those verdicts
    python docs/evidence/tables.py stats OUT         # the statistics and report again from those verdicts: OUT/all/
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path


def _rows(run_dir: Path):
    db = sqlite3.connect(f"file:{run_dir / 'persyn.sqlite'}?mode=ro", uri=True)
    return db.execute(
        "SELECT g.teacher, g.prompt_id, p.text, p.reference, g.text, g.completion_tokens, "
        "(SELECT value FROM scores s WHERE s.gen_key = g.key AND s.kind = 'quality'), "
        "(SELECT value FROM scores s WHERE s.gen_key = g.key AND s.kind = 'learnability') "
        "FROM generations g JOIN prompts p ON p.id = g.prompt_id WHERE g.error IS NULL ORDER BY p.idx, g.teacher"
    ).fetchall()


def pilot(run_dir: Path = Path("runs/evidence/pilot")) -> dict:
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    tokens: dict[str, list[int]] = defaultdict(list)
    learn: dict[str, list[float]] = defaultdict(list)
    per_prompt: dict[str, dict[str, float]] = defaultdict(dict)
    task_of: dict[str, str] = {}
    for teacher, pid, _, ref, _, ntok, quality, lrn in _rows(run_dir):
        if quality is None:
            continue
        if lrn is not None:
            learn[teacher].append(lrn)
        task = json.loads(ref)["task"]
        task_of[pid] = task
        acc[task][teacher].append(quality)
        tokens[teacher].append(ntok or 0)
        per_prompt[pid][teacher] = quality
    teachers = sorted({t for by in acc.values() for t in by})
    print("| task | " + " | ".join(teachers) + " | any right | winner |")
    print("|---|" + "---|" * (len(teachers) + 2))
    table = {}
    for task in sorted(acc):
        means = {t: sum(acc[task][t]) / len(acc[task][t]) for t in teachers if acc[task][t]}
        pids = [p for p, tk in task_of.items() if tk == task]
        any_right = sum(max(per_prompt[p].values()) for p in pids) / len(pids)
        best = max(means.values())
        winners = [t for t, m in means.items() if m == best]
        table[task] = {"accuracy": means, "any_right": any_right, "n": len(pids)}
        cells = [f"**{means[t]:.2f}**" if t in winners else f"{means[t]:.2f}" for t in teachers]
        print(f"| {task} | " + " | ".join(cells) + f" | {any_right:.2f} | {', '.join(winners)} |")
    overall = {t: sum(sum(acc[k][t]) for k in acc) / sum(len(acc[k][t]) for k in acc) for t in teachers}
    print("| overall | " + " | ".join(f"{overall[t]:.2f}" for t in teachers) + " | | |")
    print("| mean completion tokens | " + " | ".join(f"{sum(tokens[t]) / len(tokens[t]):.0f}" for t in teachers)
          + " | | |")
    if learn:
        print("| mean learnability (nats/token) | " + " | ".join(
            f"{sum(learn[t]) / len(learn[t]):.2f}" if learn[t] else "-" for t in teachers) + " | | |")
    return table


def dump(run_dir: Path, out: Path) -> None:
    """One recorded-teacher file per teacher: instruction, output, quality, learnability, task, entry."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict]] = defaultdict(list)
    for teacher, pid, text, ref, response, ntok, quality, learn in _rows(run_dir):
        files[teacher].append({"id": pid, "instruction": text, "output": response, "quality": quality,
                               "learnability": learn, "completion_tokens": ntok, "entry": ref,
                               "task": json.loads(ref)["task"] if ref else None})
    for teacher, rows in files.items():
        (out / f"{teacher}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
        print(f"{out / teacher}.jsonl: {len(rows)} rows")


def scores(pool: Path, out: Path) -> None:
    """The recorded pool as one scores file (teacher, prompt_id, instruction, quality, learnability), the input of
    docs/routing/candidate_rule.py."""
    lines = []
    for path in sorted(pool.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            lines.append(json.dumps({"teacher": path.stem, "prompt_id": row["id"], "instruction": row["instruction"],
                                     "quality": row["quality"], "learnability": row["learnability"]},
                                    ensure_ascii=False) + "\n")
    out.write_text("".join(lines), encoding="utf-8")
    print(f"{out}: {len(lines)} responses")


def students(compare_dir: Path, out: Path, suffix: Path | None = None) -> None:
    """Each tested student's verdicts (id, task, extracted answer, correct) as records/STRATEGY_seedN.jsonl, with
    compare's results.json, report.md and plots: the student table can be checked without training anyone. With a
    suffix (another config's students, e.g. the cascade's persyn), STRATEGY-SUFFIX and no results or plots."""
    import shutil

    (out / "records").mkdir(parents=True, exist_ok=True)
    found = sorted(compare_dir.glob("*/seed*/eval/gym.records.jsonl")) + [compare_dir / "base/eval/gym.records.jsonl"]
    for path in found:
        if not path.is_file():
            continue
        name = path.parts[-4] if path.parts[-3].startswith("seed") else "base"
        seed = path.parts[-3] if name != "base" else "seed0"
        if suffix is not None:
            if name == "base":
                continue
            name = f"{name}-{suffix}"
        rows = rows_of(path)
        keep = [{**{k: r[k] for k in ("id", "task", "extracted", "correct")},
                 "answer_line": "Answer:" in (r.get("prediction") or "")} for r in rows]
        (out / "records" / f"{name}_{seed}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
        print(f"{name} {seed}: {sum(r['correct'] for r in keep)}/{len(keep)}")
    names_file = out / "records" / "names.json"  # folder -> strategy name (`oracle@0.0` lives in oracle_0.0/)
    names = json.loads(names_file.read_text(encoding="utf-8")) if names_file.is_file() else {}
    for selection in compare_dir.glob("*/selection.json"):
        folder = selection.parent.name + (f"-{suffix}" if suffix is not None else "")
        strategy = json.loads(selection.read_text(encoding="utf-8"))["strategy"]
        names[folder] = strategy + (f"-{suffix}" if suffix is not None else "")
    names_file.write_text(json.dumps(names, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for name in ("results.json", "report.md", "cost_vs_score.png", "teacher_shares.png") if suffix is None else ():
        if (compare_dir / name).is_file():
            shutil.copy(compare_dir / name, out / name)
    if suffix is not None:
        shutil.copy(compare_dir / "results.json", out / f"results-{suffix}.json")


def stats(out: Path) -> None:
    """benchmark_statistics over the committed verdicts (compare's bootstrap seed), the other configs' students
    (results-SUFFIX.json) merged in as STRATEGY-SUFFIX, written by compare's own report writer to OUT/all/."""
    from persyn.config import load_config
    from persyn.experiments.compare_report import write_report
    from persyn.experiments.significance import benchmark_statistics

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for extra in sorted(out.glob("results-*.json")):
        suffix = extra.stem.removeprefix("results-")
        other = json.loads(extra.read_text(encoding="utf-8"))
        for name, entry in other["strategies"].items():
            results["strategies"][f"{name}-{suffix}"] = entry
    pairs = load_config(Path(__file__).with_name("compare.yaml")).compare.pairs
    got = benchmark_statistics(verdict_files(out), "gym", pairs=pairs)
    results["statistics"] = {"gym": got}
    (out / "all").mkdir(exist_ok=True)
    write_report(results, out / "all")
    for name, est in got["strategies"].items():
        per_seed = " ".join(f"{x:.3f}" for x in est["seed_means"])
        print(f"{name:28s} seeds {len(est['seeds_list'])}  {est['mean']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}]  "
              f"per seed {per_seed}")
    for d in got["differences"]:
        print(f"{d['strategy']:28s} - {d['reference']:24s} {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] "
              f"mde {d['mde']:.3f}")


def tasks(out: Path) -> None:
    """Accuracy per task (mean over seeds) and the share of answers that end with the requested `Answer:` line,
    from the committed verdicts."""
    from persyn.experiments.eval.gym import per_task

    by = {name: [rows_of(path) for path in seeds.values()] for name, seeds in verdict_files(out).items()}
    order = list(dict.fromkeys(r["task"] for r in next(iter(by.values()))[0]))
    print("| strategy | seeds | " + " | ".join(order) + " | overall | writes the Answer: line | right with it | "
          "right without it |")
    print("|---|---:|" + "---:|" * (len(order) + 4))
    for name, seeds in by.items():
        by_task = [per_task(rs) for rs in seeds]
        cells = [sum(p[t]["accuracy"] for p in by_task) / len(seeds) for t in order]
        overall = sum(sum(r["correct"] for r in rs) / len(rs) for rs in seeds) / len(seeds)
        line = sum(sum(r["answer_line"] for r in rs) / len(rs) for rs in seeds) / len(seeds)
        cells_md = " | ".join(f"{c:.2f}" for c in cells)
        split = [_accuracy([r for rs in seeds for r in rs if r["answer_line"] == has]) for has in (True, False)]
        print(f"| {name} | {len(seeds)} | {cells_md} | {overall:.3f} | {line:.2f} | {split[0]} | {split[1]} |")


def verdict_files(out: Path) -> dict[str, dict[int, Path]]:
    """strategy -> seed -> its committed verdicts (records/FOLDER_seedN.jsonl; names.json maps folder to strategy)."""
    names = json.loads((out / "records" / "names.json").read_text(encoding="utf-8"))
    files: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted((out / "records").glob("*_seed*.jsonl")):
        folder, seed = path.stem.rsplit("_seed", 1)
        files[names.get(folder, folder)][int(seed)] = path
    return dict(files)


def _accuracy(rows: list[dict]) -> str:
    return f"{sum(r['correct'] for r in rows) / len(rows):.2f}" if rows else "-"


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


if __name__ == "__main__":
    cmd, args = sys.argv[1], [Path(a) for a in sys.argv[2:]]
    {"pilot": pilot, "dump": dump, "scores": scores, "students": students, "stats": stats,
     "tasks": tasks}[cmd](*args)

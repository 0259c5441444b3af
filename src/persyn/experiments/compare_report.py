"""compare/report.md: strategy x benchmark table with generation cost, and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# The headline metric of each benchmark (others stay in results.json).
PRIMARY = {"gsm8k": "accuracy", "gym": "accuracy", "ifeval": "prompt_level_strict_acc"}
SECONDARY = {"ifeval": "inst_level_loose_acc"}


def metric_of(result: dict[str, Any], key: str) -> float | None:
    v = result.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def benchmark_metrics(results: dict[str, Any], label: str) -> list[str]:
    """Metric names shown for a benchmark label (its `benchmark` field decides, e.g. gsm8k)."""
    for entry in results["strategies"].values():
        for run in entry["runs"]:
            r = run["eval"].get(label)
            if r:
                kind = r.get("benchmark", label)
                return [m for m in (PRIMARY.get(kind), SECONDARY.get(kind)) if m] or \
                    [k for k, v in r.items() if isinstance(v, float)][:1]
    return []


def seed_values(entry: dict[str, Any], label: str, metric: str) -> list[float]:
    vals = [metric_of(run["eval"].get(label, {}), metric) for run in entry["runs"]]
    return [v for v in vals if v is not None]


def fmt(values: list[float]) -> str:
    if not values:
        return "pending"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def ci(lo: float, hi: float, signed: bool = False) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]" if signed else f"[{lo:.3f}, {hi:.3f}]"


def statistics_lines(stats: dict[str, Any]) -> list[str]:
    """Per benchmark: each strategy's accuracy with its 95% interval, and the paired differences, marked where
    the interval excludes 0 (resolved)."""
    if not stats:
        return []
    lines = ["## Statistics", "", next(iter(stats.values()))["method"], ""]
    for label, st in stats.items():
        lines += [f"### {label} ({st['items']} items)", "", "| strategy | seeds | accuracy | 95% CI | per seed |",
                  "|---|---|---|---|---|"]
        for name, e in st["strategies"].items():
            per_seed = ", ".join(f"{x:.3f}" for x in e.get("seed_means", [])) if e["seeds"] > 1 else ""
            lines.append(f"| {name} | {e['seeds']} | {e['mean']:.3f} | {ci(e['lo'], e['hi'])} | {per_seed} |")
        if st["differences"]:
            refs = ", ".join(f"{k}: {v}" for k, v in st["references"].items())
            lines += ["", f"Paired differences, strategy minus reference ({refs}). **resolved**: the interval "
                      "excludes 0. `mde`: the smallest difference this design resolves (80% power, alpha 0.05); "
                      "`size x`: how many times more items and seeds would resolve the observed difference.", "",
                      "| strategy | against | difference | 95% CI | resolved | mde | size x |",
                      "|---|---|---|---|---|---|---|"]
            for d in st["differences"]:
                size = "-" if d["resolved"] or d["size_factor"] is None else f"{d['size_factor']:.1f}"
                lines.append(f"| {d['strategy']} | {d['against']} ({d['reference']}) | {d['diff']:+.3f} | "
                             f"{ci(d['lo'], d['hi'], True)} | {'**resolved**' if d['resolved'] else 'no'} | "
                             f"{d['mde']:.3f} | {size} |")
        if st.get("skipped"):
            lines += ["", f"Left out (records of other items): {', '.join(st['skipped'])}."]
        lines.append("")
    return lines


def write_report(results: dict[str, Any], out: Path) -> Path:
    names = list(results["strategies"])
    labels = results["benchmarks"]
    columns = [(label, m) for label in labels for m in benchmark_metrics(results, label)]
    lines = ["# Strategy comparison", "",
             f"{results['prompts']} prompts per dataset, {len(results['teachers'])} teachers, "
             f"alpha = {results['alpha']}. Scores are mean ± sample standard deviation over training seeds.", ""]
    head = ["strategy", *[f"{label} {m}" for label, m in columns], "generations", "tokens", "all responses?",
            "rows"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        e = results["strategies"][name]
        cells = [name, *[fmt(seed_values(e, label, m)) for label, m in columns], str(e["generations_needed"]),
                 str(e["tokens"]), "yes" if e["needs_all_responses"] else "no", str(e["rows"])]
        lines.append("| " + " | ".join(cells) + " |")
    base = results.get("base")
    if base:
        cells = [f"base ({base['model']})",
                 *[fmt([v] if (v := metric_of(base["eval"].get(label, {}), m)) is not None else [])
                   for label, m in columns], "-", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "`generations`: teacher responses the strategy needs on its own (its dataset, plus every teacher "
              "on the probe when it reads the probe, plus every teacher on every prompt when it needs all "
              "responses); `tokens`: their completion tokens.", ""]
    if results.get("unfinished"):
        lines += [f"Not trained and evaluated yet ({len(results['unfinished'])}, left out of every table): "
                  f"{', '.join(results['unfinished'])}.", ""]
    lines += statistics_lines(results.get("statistics") or {})
    lines += ["## Teacher shares", "", "| strategy | " + " | ".join(results["teachers"]) + " |",
              "|" + "---|" * (len(results["teachers"]) + 1)]
    for name in names:
        counts = results["strategies"][name]["teacher_counts"]
        total = max(1, sum(counts.values()))
        lines.append(f"| {name} | " + " | ".join(f"{counts.get(t, 0) / total:.0%}" for t in results["teachers"])
                     + " |")
    lines += ["", "## Training runs", "", "| strategy | seed | steps | train loss | seconds |", "|---|---|---|---|---|"]
    for name in names:
        for run in results["strategies"][name]["runs"]:
            seconds = f"0 ({twin}'s student: the same rows)" if (twin := run.get("same_student_as")) \
                else run["train_seconds"]
            lines.append(f"| {name} | {run['seed']} | {run['steps']} | {run['train_loss']:.4f} | {seconds} |")
    lines += ["", "## Known rewards of the chosen responses", "",
              "Combined rewards exist only where every teacher was scored on a prompt (the probe, or every prompt "
              "once oracle or car ran). PerSyn keeps the best probe response on probe prompts, so on the probe "
              "its choice equals the oracle's.", "", "| strategy | prompts with a known reward | mean |",
              "|---|---|---|"]
    for name in names:
        r = results["rewards"].get(name, [])
        lines.append(f"| {name} | {len(r)} | {statistics.fmean(r):.3f} |" if r else f"| {name} | 0 | - |")
    plots = write_plots(results, out, columns[0] if columns else None)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_plots(results: dict[str, Any], out: Path, headline: tuple[str, str] | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, teachers = list(results["strategies"]), results["teachers"]
    paths = []

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    left = [0.0] * len(names)
    cmap = plt.get_cmap("tab10" if len(teachers) <= 10 else "tab20")
    for j, t in enumerate(teachers):
        shares = []
        for name in names:
            counts = results["strategies"][name]["teacher_counts"]
            shares.append(counts.get(t, 0) / max(1, sum(counts.values())))
        ax.barh(names, shares, left=left, label=t, color=cmap(j % cmap.N))
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlabel("share of the dataset")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    paths.append(_save(fig, out / "teacher_shares.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    data = [results["rewards"].get(n) or [float("nan")] for n in names]
    ax.boxplot(data, tick_labels=names, showmeans=True)
    ax.set_ylabel("combined reward of the chosen response")
    paths.append(_save(fig, out / "reward_distributions.png"))

    if headline is not None:
        label, metric = headline
        fig, ax = plt.subplots(figsize=(8, 5))
        per_prompt = max(1, results.get("prompts") or 1)
        estimates = ((results.get("statistics") or {}).get(label) or {}).get("strategies", {})
        points = []
        for name in names:
            e = results["strategies"][name]
            x = e["generations_needed"] / per_prompt
            if name in estimates:  # the 95% interval over items and seeds
                st = estimates[name]
                y, err = st["mean"], [[st["mean"] - st["lo"]], [st["hi"] - st["mean"]]]
            elif vals := seed_values(e, label, metric):
                y, err = statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
            else:
                continue
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3)
            points.append((name, x, y))
        dx = 0.02 * (ax.get_xlim()[1] - ax.get_xlim()[0])
        # the cheapest column's labels go on its left, clear of the next column's points
        first = min(x for _, x, _ in points) if len({x for _, x, _ in points}) > 1 else None
        left = []
        for name, x, y, label_y in spread_labels(points, ax.get_ylim()):
            on_left = x == first
            text = ax.annotate(name, (x, y), xytext=(x - dx if on_left else x + dx, label_y), fontsize=7,
                               va="center", ha="right" if on_left else "left",
                               arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5} if label_y != y else None)
            if on_left:
                left.append(text)
        if left:  # widen the axes to the left so those labels fit inside
            fig.canvas.draw()
            to_data = ax.transData.inverted()
            x0 = min(to_data.transform(t.get_window_extent())[0][0] for t in left)
            ax.set_xlim(left=x0 - dx)
        if "base" in estimates:
            ax.axhline(estimates["base"]["mean"], color="grey", linestyle=":", label="student before SFT")
            ax.legend(fontsize=7)
        ax.set_xlabel("teacher generations per prompt")
        ax.set_ylabel(f"{label} {metric}" + (" (95% CI)" if estimates else ""))
        paths.append(_save(fig, out / "cost_vs_score.png"))
    return paths


def spread_labels(points: list[tuple[str, float, float]], ylim: tuple[float, float],
                  gap: float = 0.045) -> list[tuple[str, float, float, float]]:
    """(name, x, y, label_y): the labels of points at the same x at least `gap` of the y range apart, each run of
    crowded labels centred on its points, so that strategies with close scores stay readable."""
    step = gap * (ylim[1] - ylim[0])
    out = []
    for x in dict.fromkeys(px for _, px, _ in points):
        column = sorted((p for p in points if p[1] == x), key=lambda p: p[2])
        out += [(*point, label_y) for point, label_y in zip(column, _label_heights([p[2] for p in column], step),
                                                            strict=True)]
    return out


def _label_heights(ys: list[float], step: float) -> list[float]:
    """Label heights for ascending ys: runs whose labels would overlap become blocks `step` apart, centred on
    their points; a block that grows is checked again against the one below."""
    blocks = [[i] for i in range(len(ys))]

    def bottom(b: list[int]) -> float:
        return statistics.fmean(ys[i] for i in b) - step * (len(b) - 1) / 2

    k = 0
    while k < len(blocks) - 1:
        if bottom(blocks[k]) + step * len(blocks[k]) > bottom(blocks[k + 1]):
            blocks[k:k + 2] = [blocks[k] + blocks[k + 1]]
            k = max(k - 1, 0)
        else:
            k += 1
    return [bottom(b) + step * j for b in blocks for j in range(len(b))]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path

"""Figures of a run's outputs that more than one writer draws (report.html, persyn router-eval)."""

from __future__ import annotations

from typing import Any


def plot_frontier(rows: list[dict[str, Any]], path: Any, title: str) -> None:
    """Mean reward against generations per routed prompt, one line per method (a file path or a binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    lines: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        lines.setdefault(r["method"], []).append(r)
    for method, pts in sorted(lines.items()):
        pts = sorted(pts, key=lambda r: r["generations_per_prompt"])
        x = [r["generations_per_prompt"] for r in pts]
        y = [r["mean_reward"] for r in pts]
        err = [r.get("mean_reward_std") or 0.0 for r in pts]  # spread over probe seeds, when there are several
        if len(pts) > 1:
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        else:
            ax.errorbar(x, y, yerr=err, marker="s", linestyle="none", capsize=3, label=method)
    ax.set_xlabel("generations per routed prompt")
    ax.set_ylabel("mean combined reward (held-out prompts)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)

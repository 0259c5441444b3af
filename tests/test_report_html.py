"""run_dir/report.html, opened in a real headless Chromium (Debian's `chromium`; .ci/run installs it): the rendered
DOM has every section and the right number of example rows, the teacher filter works, and a screenshot is saved
under the run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import pytest
from helpers import make_run, read_jsonl

from persyn.cli import main

ROWS_PER_TEACHER = 12  # below every teacher's count in this run, so the cap is exercised

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SECTIONS = ["summary", "shares", "distributions", "router", "examples"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless Chromium on PATH (apt-get install chromium; .ci/run installs it)")


def browse(url: str, *flags: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root; no network is needed (the page is self-contained).
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", *flags, url],
                          capture_output=True, text=True, timeout=120, check=True)


class Dom(HTMLParser):
    """The rendered DOM's section ids, the example table's rows (hidden or not) and element texts by id."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.rows: list[dict[str, str | None]] = []
        self.text: dict[str, str] = {}
        self.images: list[str] = []
        self._in_body = False
        self._table: str | None = None
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "tbody" and self._table == "examples-table":
            self._in_body = True
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._in_body:
            self.rows.append(a)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag not in VOID:
            self._open.append((tag, a.get("id")))
            if "id" in a:
                self.text.setdefault(a["id"], "")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.text[element_id] += data


def dom(url: str) -> Dom:
    parsed = Dom()
    parsed.feed(browse(url, "--dump-dom").stdout)
    return parsed


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    config, _ = make_run(root, n=60, probe=30)
    return config, root / "run"


def test_run_writes_a_self_contained_report(run):
    _, run_dir = run
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page fetches nothing"
    assert "<script src" not in html
    parsed = Dom()
    parsed.feed(html)
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)


@pytest.mark.slow
def test_report_renders_in_chromium(run):
    config, run_dir = run
    (run_dir / "report.html").unlink()
    main(["report", str(config), "--rows-per-teacher", str(ROWS_PER_TEACHER)])  # `persyn report` redraws it
    page = (run_dir / "report.html").as_uri()
    summary = json.loads((run_dir / "summary.json").read_text())
    counts = Counter(r["teacher"] for r in read_jsonl(run_dir / "dataset.jsonl"))
    shown = {t: min(n, ROWS_PER_TEACHER) for t, n in counts.items()}
    assert max(counts.values()) > ROWS_PER_TEACHER

    d = dom(page)
    assert d.sections == SECTIONS  # no frontier.json: no frontier section
    assert len(d.rows) == sum(shown.values()) and not any("hidden" in r for r in d.rows)
    assert Counter(r["data-teacher"] for r in d.rows) == shown
    assert d.text["shown-count"] == str(sum(shown.values()))
    assert d.text["dataset-rows"] == str(summary["dataset_rows"])

    for teacher, n in shown.items():  # the filter, set from the URL, hides every other teacher's rows
        d = dom(f"{page}#teacher={teacher}")
        visible = [r for r in d.rows if "hidden" not in r]
        assert len(visible) == n and {r["data-teacher"] for r in visible} == {teacher}
        assert d.text["shown-count"] == str(n)
    d = dom(f"{page}#source=probe")
    assert d.text["shown-count"] == str(sum(r.get("data-source") == "probe" for r in d.rows))

    shot = run_dir / "report.png"
    browse(page, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_frontier_section_appears_with_frontier_json(run):
    config, run_dir = run
    rows = [{"method": "persyn", "generations_per_prompt": 1.4, "mean_reward": 0.71},
            {"method": "generate-then-select", "generations_per_prompt": 3.0, "mean_reward": 0.74}]
    (run_dir / "frontier.json").write_text(json.dumps(rows))
    try:
        main(["report", str(config)])
        d = dom((run_dir / "report.html").as_uri())
        assert d.sections == SECTIONS[:4] + ["frontier", "examples"]
        assert "generate-then-select" in d.text["frontier"]
    finally:
        (run_dir / "frontier.json").unlink()
        main(["report", str(config)])


def test_report_before_any_run_is_one_line(tmp_path, capsys):
    import yaml
    from helpers import recorded_config, recorded_pool

    recorded_pool(tmp_path, n=6)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(recorded_config(tmp_path)))
    with pytest.raises(SystemExit) as info:
        main(["report", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no summary yet" in err[0]


def test_report_of_a_run_without_scores_or_router(run, tmp_path):
    """A run exported before its probe was scored (e.g. all probe generations failed) still gets a page."""
    from persyn.config import load_config
    from persyn.outputs.html_report import write_html_report

    config, run_dir = run
    cfg = load_config(config)
    bare = tmp_path / "bare"
    bare.mkdir()
    summary = json.loads((run_dir / "summary.json").read_text()) | {"router": None}
    (bare / "summary.json").write_text(json.dumps(summary))
    (bare / "dataset.jsonl").write_text((run_dir / "dataset.jsonl").read_text())
    cfg = cfg.model_copy(update={"run_dir": str(bare)})
    d = Dom()
    d.feed(write_html_report(cfg).read_text())
    assert d.sections == SECTIONS
    assert "No scores yet" in d.text["distributions"] and "not been trained" in d.text["router"]
    assert len(d.rows) == sum(min(n, 50) for n in summary["teacher_counts"].values())


def test_malformed_frontier_is_one_line(run, capsys):
    config, run_dir = run
    (run_dir / "frontier.json").write_text(json.dumps([{"method": "persyn", "generations_per_prompt": None,
                                                        "mean_reward": 0.5}]))
    try:
        with pytest.raises(SystemExit) as info:
            main(["report", str(config)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "frontier.json [[0].generations_per_prompt]" in err[0]
    finally:
        (run_dir / "frontier.json").unlink()

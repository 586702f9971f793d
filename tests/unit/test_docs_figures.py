"""The bench figures in docs/ are what ``python -m bench.report`` writes from the results
checked in under docs/bench/, and the prose quotes no measurement those results lack, so the
docs cannot drift from the measurements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.report import NOT_MEASURED, Results, load_all, problems, rewrite

DOCS = Path(__file__).resolve().parents[2] / "docs"


def results(figures: dict[str, dict[str, object]], **data: object) -> dict[str, Results]:
    return {"latest": Results("latest", {"figures": figures, **data})}


ROUTER_CPU = {"router_cpu_per_turn": {"label": "router CPU per turn", "unit": "ms",
                                      "median": 2.418682, "min": 1.96, "max": 3.15,
                                      "runs": [1.96, 2.418682, 3.15], "target": "<= 0.800",
                                      "met": False}}


def test_the_docs_are_what_their_checked_in_results_make() -> None:
    """Fails when a table or a figure in docs/ was edited by hand, when a results file
    changed without ``python -m bench.report``, or when prose quotes a number not in them."""
    found = load_all()
    assert "latest" in found and found["latest"].figures
    assert problems(found) == []
    assert "docs/bench/latest.json" in (DOCS / "benchmarks.md").read_text(encoding="utf-8")


def test_a_table_edited_by_hand_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    text = rewrite("<!-- bench:latest table pair -->\n<!-- /bench -->\n", results(ROUTER_CPU))
    assert "| router CPU per turn | 2.42 | 1.96 - 3.15 | ms | <= 0.800 | **not met** |" in text
    doc.write_text(text.replace("2.42", "0.70"))
    assert any("differ" in p for p in problems(results(ROUTER_CPU), [doc]))
    doc.write_text(text)
    assert problems(results(ROUTER_CPU), [doc]) == []


def test_prose_quoting_a_number_the_results_lack_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("The router costs <!-- bench:latest router_cpu_per_turn -->x<!-- /bench "
                   "-->.\n\nAt most 1.96 ms, at best 0.7 ms per turn.\n\n```\n9.99 ms in a "
                   "code block is not prose\n```\n")
    doc.write_text(rewrite(doc.read_text(), results(ROUTER_CPU)))
    assert "costs <!-- bench:latest router_cpu_per_turn -->2.42 ms<!-- /bench -->" in \
        doc.read_text()
    found = problems(results(ROUTER_CPU), [doc])
    assert len(found) == 1 and "0.7 is quoted" in found[0], found


def test_other_docs_are_checked_where_they_cite_the_bench(tmp_path: Path) -> None:
    doc = tmp_path / "operations.md"
    doc.write_text("Measured with `python -m bench --only pair`: 5.5 ms.\n\n"
                   "A timeout of 30 ms, not a measurement.\n\n"
                   "`python -m bench.web` writes no results file: 1.5 ms.\n")
    found = problems(results(ROUTER_CPU), [doc])
    assert len(found) == 1 and "5.5 is quoted" in found[0], found


def test_what_a_run_did_not_measure_says_so() -> None:
    text = ("<!-- bench:latest run -->\n<!-- /bench -->\n"
            "<!-- bench:latest table depth,pair -->\n<!-- /bench -->\n"
            "<!-- bench:latest targets -->\n<!-- /bench -->\n"
            "<!-- bench:latest profile -->\n<!-- /bench -->\n"
            "<!-- bench:latest ratio_depth --><!-- /bench -->, "
            "<!-- bench:latest memory_per_session.extra.memory_usage_keys_synthetic B -->"
            "<!-- /bench -->, <!-- bench:other router_cpu_per_turn --><!-- /bench -->\n")
    out = rewrite(text, results(ROUTER_CPU, sections=["pair"]))
    assert "*depth: not measured in this run (`python -m bench --only depth`).*" in out
    assert "Not measured in this run: depth, sessions, history, embedded." in out
    assert "| router CPU per turn <= 0.800 | 2.42 | 1.96 - 3.15 | **not met** |" in out
    assert out.count(NOT_MEASURED) == 5, out  # and "Not measured" in the run line
    empty = rewrite(text, results({}))  # a file with no figures at all: no crash
    assert "| figure |" not in empty and empty.count(NOT_MEASURED) == 6
    assert rewrite(text, {}).count(NOT_MEASURED) == 7  # no results file at all


def test_take_copies_the_last_run_and_rewrites_the_docs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    (docs / "bench").mkdir(parents=True)
    doc = docs / "benchmarks.md"
    doc.write_text("Router: <!-- bench:latest router_cpu_per_turn -->1 ms<!-- /bench -->.\n")
    monkeypatch.setattr(report, "REPO", tmp_path)
    monkeypatch.setattr(report, "DOCS", docs)
    monkeypatch.setattr(report, "RESULTS_DIR", docs / "bench")
    run = tmp_path / "latest.json"
    run.write_text(json.dumps({"figures": ROUTER_CPU}))
    assert report.main(["--check"]) == 1  # no results yet: the doc's figure is stale
    assert report.main(["--take", str(run)]) == 0
    assert doc.read_text() == ("Router: <!-- bench:latest router_cpu_per_turn -->2.42 ms"
                               "<!-- /bench -->.\n")
    assert json.loads((docs / "bench" / "latest.json").read_text())["figures"] == ROUTER_CPU
    assert report.main(["--check"]) == 0
    assert report.main(["--take", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("run python -m bench first"), err


def test_the_checked_in_results_are_whole_bench_results() -> None:
    for path in (DOCS / "bench").glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert {"figures", "machine", "plan"} <= set(data), path
    assert (DOCS / "bench" / "latest.json").exists()


def test_the_worker_is_not_described_as_it_was_before_uvloop() -> None:
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    text = text.split("## What limits each figure", 1)[1]
    assert "uses\n`asyncio.run`" not in text and "runtime uses `asyncio.run`" not in text


def test_a_marker_quoted_in_code_is_left_as_it_is() -> None:
    text = ("Write `<!-- bench:NAME WHAT -->` and then `<!-- /bench -->`, or:\n\n```\n"
            "<!-- bench:latest router_cpu_per_turn -->9 ms<!-- /bench -->\n```\n\n"
            "Here: <!-- bench:latest router_cpu_per_turn -->1 ms<!-- /bench -->.\n")
    assert rewrite(text, results(ROUTER_CPU)) == text.replace(">1 ms<", ">2.42 ms<")


def test_a_target_with_a_thousands_separator_is_read() -> None:
    results = report.Results("x", {"figures": {"memory_per_session": {
        "median": 800.0, "min": 800.0, "max": 800.0, "runs": [800.0], "unit": "B",
        "label": "Redis used_memory per idle session", "target": "<= 1,024", "met": True}}})
    figure = results.figure("memory_per_session")
    assert figure is not None and figure.target is not None
    assert figure.target.limit == 1024

"""docs/benchmarks.md: every figure its prose quotes "in the results table" is in that table,
so the explanations cannot drift from the measurements again."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def table_medians(text: str) -> set[str]:
    section = text.split("## Results", 1)[1].split("###", 1)[0]
    return {cells[2].strip() for line in section.splitlines()
            if line.startswith("|") and len(cells := line.split("|")) > 3}


def test_figures_quoted_from_the_results_table_are_in_it() -> None:
    text = DOC.read_text(encoding="utf-8")
    medians = table_medians(text)
    quoted = re.findall(r"\((\d[\d.,]*)(?: [A-Za-z]+)?(?:, range [^)]*?)?,? in the results "
                        r"table", text)
    assert len(quoted) >= 4, quoted  # the prose does quote the table
    assert [q for q in quoted if q not in medians] == [], medians


def test_the_worker_is_not_described_as_it_was_before_uvloop() -> None:
    text = DOC.read_text(encoding="utf-8").split("## What limits each figure", 1)[1]
    assert "uses\n`asyncio.run`" not in text and "runtime uses `asyncio.run`" not in text

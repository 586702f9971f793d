"""``python -m bench.report``: write the bench's figures into the docs, from checked-in results.

The results a doc quotes are checked in as ``docs/bench/NAME.json`` (a copy of what
``python -m bench`` wrote to ``bench/results/latest.json``: ``--take``). A doc asks for a
figure between two comments, and this command writes what is between them::

    <!-- bench:latest run -->...<!-- /bench -->             how and where the run was made
    <!-- bench:latest table pair -->...<!-- /bench -->      the figures of sections, as a table
    <!-- bench:latest targets -->...<!-- /bench -->         each target, its figure, met or not
    <!-- bench:latest profile -->...<!-- /bench -->         the py-spy parts (``--profile``)
    <!-- bench:latest scaling -->...<!-- /bench -->         capacity table (bench.scaling)
    <!-- bench:NAME compare -->...<!-- /bench -->          a python -m bench.compare table
    <!-- bench:latest router_cpu_per_turn -->...<!-- /bench -->        2.42 ms (the median)
    <!-- bench:latest router_cpu_per_turn.range -->...<!-- /bench -->  1.96 - 3.15 ms
    <!-- bench:latest router_cpu_per_turn.target -->...<!-- /bench --> <= 0.800 ms
    <!-- bench:latest message_bytes.dispatch B -->...<!-- /bench -->   239 B (any number)

A figure the results lack reads "not measured in this run". ``--check`` changes nothing and
exits 1 when a doc differs from what would be written, or when its prose quotes a measured
figure (a number with a unit such as ms, B or /s) that is in none of the results files.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import compare, scaling
from .stats import Figure, Summary, Target, _num, format_markdown

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS_DIR = DOCS / "bench"
LATEST_RUN = REPO / "bench" / "results" / "latest.json"
SECTIONS = ("pair", "depth", "sessions", "history", "embedded", "growth", "replicas")
DEFAULT_SECTIONS = SECTIONS[:-2]
"""What a plain ``python -m bench`` runs (growth and replicas only on request)."""
NOT_MEASURED = "not measured in this run"

MARKER = re.compile(r"<!-- bench:(?P<spec>[^>]*?) -->(?P<body>.*?)<!-- /bench -->", re.S)
# Code (a fenced block, an inline span) or a marker, whichever starts first: a marker quoted
# in code, as this docstring and docs/benchmarks.md show them, is text, not a marker.
CODE_OR_MARKER = re.compile(r"(?P<code>^```.*?^```|`[^`\n]*`)|" + MARKER.pattern, re.S | re.M)
# A measured figure in prose: a number and a unit of measurement right after it.
QUOTED = re.compile(r"(?<![\w.,])(\d[\d,]*(?:\.\d+)?) ?(ms|B|KB|MB|/s|turns/s|CPUs?|%|x)"
                    r"(?![\w/])")
UNITS = {"ms": " ms", "B": " B", "1/s": "/s", "ratio": "", "CPUs": " CPUs"}


def section_of(key: str) -> str:
    """The ``python -m bench --only`` section a figure belongs to ("run": the whole run)."""
    if key.startswith(("growth_", "stack_")):
        return "growth"
    if key.startswith(("replicas_", "ratio_replicas")):
        return "replicas"
    if key.startswith("depth") or key == "ratio_depth":
        return "depth"
    if key in ("memory_per_session", "many_sessions_throughput", "few_sessions_throughput",
               "ratio_many_sessions"):
        return "sessions"
    if key.startswith("session_bytes_"):
        return "history"
    if key.startswith("embedded_"):
        return "embedded"
    if key == "others_load":
        return "run"
    return "pair"


@dataclass(frozen=True, slots=True)
class Results:
    """One checked-in results file of ``python -m bench``."""

    name: str
    data: dict[str, Any]

    @property
    def figures(self) -> dict[str, dict[str, Any]]:
        figures: dict[str, dict[str, Any]] = self.data.get("figures") or {}
        return figures

    def sections(self) -> list[str]:
        """The sections this run measured (recorded by the bench, else seen in its figures)."""
        recorded = self.data.get("sections")
        if recorded:
            return [s for s in SECTIONS if s in recorded]
        seen = {section_of(k) for k in self.figures}
        return [s for s in SECTIONS if s in seen]

    def figure(self, key: str) -> Figure | None:
        raw = self.figures.get(key)
        if raw is None or raw.get("median") is None:
            return None
        target = None
        if raw.get("target"):
            op, limit = str(raw["target"]).split()
            target = Target(op, float(limit.replace(",", "")))  # "<= 1,024"
        runs = tuple(float(v) for v in raw.get("runs") or () if v is not None)
        summary = Summary(_float(raw["median"]), _float(raw.get("min")), _float(raw.get("max")),
                          runs)
        return Figure(key, raw.get("label", key), raw.get("unit", ""), summary, target,
                      raw.get("note", ""))


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def load_all(directory: Path | None = None) -> dict[str, Results]:
    """Every results file in ``directory`` (docs/bench), by name (``latest``: latest.json)."""
    out = {}
    for path in sorted((directory or RESULTS_DIR).glob("*.json")):
        out[path.stem] = Results(path.stem, json.loads(path.read_text(encoding="utf-8")))
    return out


# ---------------------------------------------------------------------- what a marker says


def results_sections(found: Results) -> list[str]:
    return list(DEFAULT_SECTIONS) + [s for s in found.sections() if s not in DEFAULT_SECTIONS]


def render(spec: str, results: dict[str, Results]) -> str:
    """The text for one marker (``NAME KIND ...`` or ``NAME PATH [UNIT]``)."""
    name, _, rest = spec.strip().partition(" ")
    words = rest.split()
    found = results.get(name)
    if found is None or not words:
        return f"*{NOT_MEASURED} (no docs/bench/{name}.json)*" if words[:1] in (
            ["run"], ["table"], ["targets"], ["profile"], ["scaling"], ["compare"]) \
            else NOT_MEASURED
    kind = words[0]
    if kind == "run":
        return describe_run(found)
    if kind == "table":
        return table(found, words[1].split(",") if len(words) > 1 else
                     results_sections(found))
    if kind == "targets":
        return targets(found)
    if kind == "profile":
        return profile(found)
    if kind == "compare":
        figures = [f for f in map(found.figure, found.figures) if f is not None]
        return "\n" + compare.format_comparison(figures, markdown=True) + "\n"
    if kind == "scaling":
        try:
            costs = scaling.Costs.of(found.data, f"docs/bench/{name}.json")
        except scaling.Missing:
            return f"*{NOT_MEASURED} (the pair section)*"
        return "\n" + scaling.render(costs, 0.7, 10_000_000) + "\n"
    return value(found, kind, words[1] if len(words) > 1 else None)


def value(results: Results, path: str, unit: str | None = None) -> str:
    """One number: a figure's ``median`` (default), ``min``, ``max`` or ``range``, or any
    number of the results file by its dotted path, followed by its unit."""
    key, _, stat = path.partition(".")
    if key in results.figures:
        fig = results.figure(key)
        if fig is None:
            return NOT_MEASURED
        suffix = UNITS.get(fig.unit, f" {fig.unit}") if unit is None else f" {unit}"
        s = fig.summary
        if stat == "range":
            return f"{_num(s.low)} - {_num(s.high)}{suffix}"
        if stat == "target":
            return NOT_MEASURED if fig.target is None else f"{fig.target}{suffix}"
        number = {"": s.median, "median": s.median, "min": s.low, "max": s.high}.get(stat)
        if number is None:
            number = _dig(results.figures[key], stat.split("."))
        return NOT_MEASURED if number is None else f"{_num(float(number))}{suffix}"
    number = _dig(results.data, path.split("."))
    if number is None:
        return NOT_MEASURED
    return f"{_num(float(number))}{'' if unit is None else ' ' + unit}"


def _dig(data: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data if isinstance(data, int | float) and not isinstance(data, bool) else None


def command_of(results: Results) -> str:
    """The ``python -m bench`` command line that made this run, as far as the file tells."""
    data, plan = results.data, results.data.get("plan") or {}
    words = ["python -m bench"]
    if data.get("quick"):
        words.append("--quick")
    elif plan.get("runs") not in (None, 3):
        words.append(f"--runs {plan['runs']}")
    sections = results.sections()
    if sections and sections != list(DEFAULT_SECTIONS):
        words.append("--only " + ",".join(sections))
    if data.get("queue_type") not in (None, "quorum"):
        words.append(f"--queue-type {data['queue_type']}")
    if data.get("metrics"):
        words.append("--metrics")
    if data.get("history") is not None:
        words.append(f"--history {data['history']}")
    if data.get("profile"):
        words.append("--profile")
    return " ".join(words)


def describe_run(results: Results) -> str:
    data = results.data
    m = data.get("machine") or {}
    redis = data.get("redis") or {}
    rabbit = data.get("rabbitmq") or {}
    plan = data.get("plan") or {}
    libs = ", ".join(f"{lib} {m[lib]}" for lib in ("aio-pika", "aiormq", "redis", "msgpack",
                                                    "uvloop", "msgspec") if lib in m)
    others = results.figure("others_load")
    load = ("" if others is None else
            f" Other processes used {_num(others.summary.median)} CPUs (median of the "
            f"windows; up to {_num(others.summary.high)}): a busy machine makes every "
            "figure noisier.")
    missing = [s for s in DEFAULT_SECTIONS if s not in results.sections()]
    skipped = "" if not missing else f" Not measured in this run: {', '.join(missing)}."
    return (f"`{command_of(results)}` (results `docs/bench/{results.name}.json`, commit "
            f"{m.get('commit', '?')}, {data.get('seconds', '?')} s) on {m.get('nproc', '?')} "
            f"vCPUs ({m.get('cpu', '?')}), {m.get('memory_gb', '?')} GB RAM, Linux "
            f"{m.get('kernel', '?')}, Python {m.get('python', '?')}, RabbitMQ "
            f"{rabbit.get('version', '?')}, Redis {redis.get('redis_version', '?')} "
            f"(appendonly {redis.get('appendonly', '?')}), {libs}; "
            f"{data.get('queue_type', 'quorum')} queues, persistent messages, publisher "
            f"confirms; router on {data.get('router_loop', '?')}, worker on "
            f"{data.get('worker_loop', '?')}. {plan.get('runs', '?')} run(s) per figure, "
            f"median and range.{load}{skipped}")


def table(results: Results, sections: Iterable[str]) -> str:
    """The figures of ``sections`` as the bench's Markdown table (``--markdown``)."""
    wanted = list(sections)
    measured = [*results.sections(), "run"]
    figures = [f for key in results.figures if section_of(key) in wanted
               and (f := results.figure(key)) is not None]
    missing = [s for s in wanted if s not in measured]
    lines = [format_markdown(figures)] if figures else []
    if missing:
        lines.append(f"*{', '.join(missing)}: {NOT_MEASURED} (`python -m bench --only "
                     f"{','.join(missing)}`).*")
    return "\n\n".join(lines)


def targets(results: Results) -> str:
    rows = ["| target | median | range | |", "|---|---:|---:|---|"]
    for key in results.figures:
        fig = results.figure(key)
        if fig is None or fig.target is None:
            continue
        met = fig.target.met(fig.summary.median)
        rows.append(f"| {fig.label.strip()} {fig.target} | {_num(fig.summary.median)} | "
                    f"{_num(fig.summary.low)} - {_num(fig.summary.high)} | "
                    f"{'met' if met else '**not met**'} |")
    return "\n".join(rows) if len(rows) > 2 else f"*{NOT_MEASURED}.*"


def profile(results: Results) -> str:
    """The py-spy parts of the router's and the worker's profiles (``--profile``)."""
    profiles = results.data.get("profile") or {}
    if not profiles:
        return f"*{NOT_MEASURED} (`python -m bench --profile` samples the router and the " \
               "worker with py-spy under the throughput load).*"
    lines = ["```"]
    for name, prof in profiles.items():
        lines.append(f"{name}, py-spy at {_num(prof.get('turns_per_s_while_sampled', 0))} "
                     f"turns/s, {prof.get('samples', 0)} samples      share of samples")
        lines.extend(f"  {label:<60} {pct:5.1f} %" for label, pct in prof.get("parts_pct", [])
                     if pct > 0)
    lines.append("```")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the docs


def rewrite(text: str, results: dict[str, Results]) -> str:
    """``text`` with every marker's content written anew."""
    def one(match: re.Match[str]) -> str:
        body = match["body"]
        content = render(match["spec"], results)
        if body.startswith("\n"):  # a block: the comments on lines of their own
            content = f"\n{content}\n"
        return f"<!-- bench:{match['spec']} -->{content}<!-- /bench -->"

    return CODE_OR_MARKER.sub(lambda m: m[0] if m["code"] is not None else one(m), text)


def quoted_figures(text: str) -> Iterator[tuple[str, str]]:
    """Numbers with a unit in ``text``'s prose: outside markers and code blocks; in docs
    other than docs/benchmarks.md, only in paragraphs that cite ``python -m bench``."""
    def blank(match: re.Match[str]) -> str:
        # Markers and code blocks go; an inline code span keeps its words (a paragraph
        # cites `python -m bench` in one) but not its numbers (`--runs 5` is no figure).
        code = match["code"]
        return "" if code is None or code.startswith("```") else re.sub(r"\d", "", code)

    text = CODE_OR_MARKER.sub(blank, text)
    for paragraph in re.split(r"\n\s*\n", text):
        for match in QUOTED.finditer(paragraph):
            yield match[1], paragraph


def known_numbers(results: dict[str, Results]) -> set[str]:
    """Every number of the results files, as the docs write it."""
    out: set[str] = set()

    def walk(data: Any) -> None:
        if isinstance(data, dict):
            for item in data.values():
                walk(item)
        elif isinstance(data, list):
            for item in data:
                walk(item)
        elif isinstance(data, int | float) and not isinstance(data, bool):
            out.add(_num(float(data)))
            out.add(f"{data:,}" if isinstance(data, int) else _num(float(data)))

    for found in results.values():
        for part in ("figures", "message_bytes", "profile"):  # measured, not the settings
            walk(found.data.get(part))
    return out


def docs_citing_bench() -> list[Path]:
    """docs/benchmarks.md, and every other doc (the README too) that asks for a figure."""
    docs = [*DOCS.glob("*.md"), REPO / "README.md"]
    return sorted(p for p in docs if p.exists() and (
        p.name == "benchmarks.md" or "<!-- bench:" in p.read_text(encoding="utf-8")))


def problems(results: dict[str, Results], paths: Iterable[Path] | None = None) -> list[str]:
    """What ``--check`` fails on, one line each."""
    known = known_numbers(results)
    out = []
    for path in docs_citing_bench() if paths is None else paths:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        if rewrite(text, results) != text:
            out.append(f"{where}: its bench figures differ from docs/bench/*.json: run "
                       "python -m bench.report")
        whole = path.name == "benchmarks.md"
        for number, paragraph in quoted_figures(text):
            if not whole and "python -m bench" not in paragraph:
                continue
            if "python -m bench." in paragraph:  # another command (bench.web): no results
                continue
            if number not in known:
                first = " ".join(paragraph.split())[:70]
                out.append(f"{where}: {number} is quoted but is in no docs/bench/*.json "
                           f"(\"{first}...\"): write it as <!-- bench:NAME FIGURE -->")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--take", nargs="?", const=str(LATEST_RUN), metavar="FILE",
                   help="first copy FILE (default bench/results/latest.json, the last "
                        "python -m bench) to docs/bench/NAME.json")
    p.add_argument("--as", dest="name", default="latest", metavar="NAME",
                   help="the name --take saves under [default latest]")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a doc is not what its results make")
    args = p.parse_args(argv)
    if args.take:
        source = Path(args.take)
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"python -m bench.report: cannot read results {source} "
                  f"({type(exc).__name__}): run python -m bench first", file=sys.stderr)
            return 2
        if not isinstance(data, dict) or "figures" not in data:
            print(f"python -m bench.report: {source} is not a python -m bench results file "
                  "(no figures)", file=sys.stderr)
            return 2
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        target = RESULTS_DIR / f"{args.name}.json"
        if not (target.exists() and target.samefile(source)):  # retaking a checked-in file
            shutil.copyfile(source, target)
        print(f"docs/bench/{args.name}.json <- {source}")
    results = load_all()
    if args.check:
        found = problems(results)
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    for path in docs_citing_bench():
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, results)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote the bench figures of {path.relative_to(REPO)}")
    for line in problems(results):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

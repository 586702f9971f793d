"""``python -m bench.compare BASE``: this checkout against another commit, side by side.

This virtual machine's speed drifts by a sixth or more from one hour to the next, so a CPU
figure measured today cannot be held against one measured last week: two versions are
compared by running them alternately, on the same machine, in the same hour. This command
does that:

1. it checks ``BASE`` (a commit, branch or tag; or the path of a checkout) out into a
   temporary git worktree;
2. it runs ``python -m bench --only pair --runs 1`` (or ``--only`` what you ask) ``--runs``
   times in each tree, alternating base and this checkout in the order A B B A A B ... so that
   a drift of the machine falls on both alike; each tree's bench imports its own ``router``,
   ``worker_sdk`` and ``bench`` (its directory comes first on ``PYTHONPATH``), with this
   interpreter and its installed dependencies;
3. it prints, for every figure both versions measured, the median of each and the median and
   range of the *paired* ratio (this / base, run by run), and writes it all to
   ``bench/results/compare-<time>.json`` (``python -m bench.report --take FILE --as NAME``
   puts it in the docs, like any results file).

``--expect FIGURE<=RATIO`` (or ``>=``) sets a target on a ratio, e.g. the issue's cut of the
router's CPU per turn, 1.9 ms -> 0.8 ms, is ``--expect router_cpu_per_turn<=0.42`` against
the commit it was measured on.

Run it on a quiet machine: anything else running lands in the figures of one side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stats import Figure, Summary, Target, _num, ratios

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path("bench") / "results" / "latest.json"
"""Where ``python -m bench`` leaves its results, relative to the tree it ran in."""
EXPECT = re.compile(r"^(?P<key>[a-z0-9_]+)\s*(?P<op><=|>=)\s*(?P<limit>[0-9.]+)$")


class CompareError(Exception):
    """Something the person running the comparison can fix; one line says what."""


# ------------------------------------------------------------------------------ pure parts


def order(runs: int) -> list[str]:
    """Which tree runs when: ``base``, ``head``, ``head``, ``base``, ``base``, ``head``...
    Each pair of runs (one of each) is back to back, and each side goes first as often."""
    out: list[str] = []
    for i in range(runs):
        out += ["base", "head"] if i % 2 == 0 else ["head", "base"]
    return out


def parse_expect(text: str) -> tuple[str, Target]:
    """``router_cpu_per_turn<=0.42`` -> (figure key, target on this / base)."""
    match = EXPECT.match(text.strip())
    if match is None:
        raise CompareError(f"--expect {text!r}: write FIGURE<=RATIO or FIGURE>=RATIO, e.g. "
                           "router_cpu_per_turn<=0.42")
    return match["key"], Target(match["op"], float(match["limit"]))


def _values(results: Sequence[dict[str, Any]], key: str) -> list[float]:
    """One value per run of ``key`` (NaN where that run lacks it)."""
    out = []
    for data in results:
        raw = (data.get("figures") or {}).get(key) or {}
        median = raw.get("median")
        out.append(math.nan if median is None else float(median))
    return out


def compare(base: Sequence[dict[str, Any]], head: Sequence[dict[str, Any]],
            expect: dict[str, Target] | None = None) -> list[Figure]:
    """Figures of a comparison from the results files of each side's runs (in run order,
    the i-th of each side paired): for each figure both measured, in the head's order,
    ``base_KEY`` (the base's runs), ``KEY`` (this checkout's) and ``vs_base_KEY`` (their
    paired ratios, with the target ``expect`` sets)."""
    if len(base) != len(head):
        raise ValueError(f"{len(base)} base runs against {len(head)} head runs")
    expect = expect or {}
    unknown = [k for k in expect if not any(k in (d.get("figures") or {}) for d in head)]
    if unknown:
        raise CompareError(f"--expect names {', '.join(unknown)}, which this checkout's bench "
                           "did not measure (see the keys in bench/results/latest.json)")
    keys: list[str] = []
    for data in head:
        keys += [k for k in data.get("figures") or {} if k not in keys]
    out = []
    for key in keys:
        b, h = _values(base, key), _values(head, key)
        if all(math.isnan(v) for v in b) or all(math.isnan(v) for v in h):
            continue  # one side does not measure it: nothing to compare
        raw = next(d["figures"][key] for d in head if key in (d.get("figures") or {}))
        label, unit = str(raw.get("label", key)), str(raw.get("unit", ""))
        out.append(Figure(f"base_{key}", f"{label} (base)", unit, _summary(b)))
        out.append(Figure(key, label, unit, _summary(h)))
        out.append(Figure(f"vs_base_{key}", f"{label}: this / base", "ratio",
                          _summary(ratios(h, b)), expect.get(key)))
    return out


def _summary(values: Sequence[float]) -> Summary:
    return Summary.of(v for v in values if not math.isnan(v))


def format_comparison(figures: Sequence[Figure], *, markdown: bool = False) -> str:
    """One row per figure: the base's median, this checkout's, and this / base (the median
    of the paired ratios, their range, and the target's verdict where one is set)."""
    by_key = {f.key: f for f in figures}
    head = ("figure", "base", "this", "this / base", "range", "target", "")
    rows = []
    for f in figures:
        if f.key.startswith(("base_", "vs_base_")):
            continue
        base, ratio = by_key[f"base_{f.key}"], by_key[f"vs_base_{f.key}"]
        verdict = ""
        if ratio.target is not None:
            verdict = {True: "met", False: "NOT MET", None: "-"}[
                ratio.target.met(ratio.summary.median)]
        rng = (f"{_num(ratio.summary.low)} - {_num(ratio.summary.high)}"
               if ratio.summary.runs else "-")
        unit = "" if f.unit == "ratio" else f" {f.unit}"
        rows.append((f.label, _num(base.summary.median) + unit, _num(f.summary.median) + unit,
                     _num(ratio.summary.median), rng,
                     "" if ratio.target is None else str(ratio.target), verdict))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---|---|"]
        verdicts = {"met": "met", "NOT MET": "**not met**", "-": "-", "": ""}
        lines += ["| " + " | ".join(r[:6]) + f" | {verdicts[r[6]]} |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for n, row in enumerate([head, *rows]):
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:5], widths[1:5],
                                                                        strict=True)),
                 row[5].ljust(widths[5]), row[6]]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the runs


@dataclass(frozen=True, slots=True)
class Tree:
    """A checkout to run the bench in, and what to call it."""

    name: str
    path: Path
    revision: str


def _git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CompareError(f"git {' '.join(args)} failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done.stdout.strip()


@contextlib.contextmanager
def base_tree(base: str) -> Iterator[Tree]:
    """The base to compare with: an existing checkout (a directory), or a commit checked
    out into a temporary worktree that is removed afterwards."""
    path = Path(base)
    if path.is_dir():
        if not (path / "bench" / "__main__.py").exists():
            raise CompareError(f"{base} has no bench/ (python -m bench): give a checkout of "
                               "this project, or a commit")
        yield Tree("base", path.resolve(), _describe(path))
        return
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    except CompareError:
        raise CompareError(f"no commit {base!r} in {REPO}: give a commit, a branch, a tag or "
                           "the path of a checkout") from None
    scratch = Path(tempfile.mkdtemp(prefix="cloudbunch-compare-"))
    where = scratch / commit[:12]
    _git("worktree", "add", "--detach", str(where), commit)
    try:
        if not (where / "bench" / "__main__.py").exists():
            raise CompareError(f"commit {base} has no bench/ (python -m bench) to run")
        yield Tree("base", where, _describe(where))
    finally:
        with contextlib.suppress(CompareError):
            _git("worktree", "remove", "--force", str(where))
        shutil.rmtree(scratch, ignore_errors=True)


def _describe(path: Path) -> str:
    """The commit a tree is at (its hash and subject), and whether it has changes."""
    try:
        described = _git("log", "-1", "--format=%h %s", cwd=path)[:60]
        if _git("status", "--porcelain", "--untracked-files=no", cwd=path):
            described += " + uncommitted changes"
    except CompareError:
        return str(path)
    return described


Runner = Callable[[Tree, list[str]], dict[str, Any]]


def tree_env(tree: Tree) -> dict[str, str]:
    """This process's environment with ``tree`` first on ``PYTHONPATH``: a Python process
    started with it imports that tree's ``router``, ``worker_sdk`` and ``bench``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tree.path), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_bench(tree: Tree, bench_args: list[str]) -> dict[str, Any]:
    """One ``python -m bench`` in ``tree`` (its own code first on the path); its results."""
    results = tree.path / RESULTS
    before = results.stat().st_mtime_ns if results.exists() else None
    command = [sys.executable, "-m", "bench", *bench_args]
    done = subprocess.run(command, cwd=tree.path, env=tree_env(tree), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 or not results.exists() or results.stat().st_mtime_ns == before:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise CompareError(f"python -m bench {' '.join(bench_args)} failed in the {tree.name} "
                           f"tree ({tree.path}, exit {done.returncode}):\n{tail}")
    data: dict[str, Any] = json.loads(results.read_text(encoding="utf-8"))
    return data


def run(trees: dict[str, Tree], runs: int, bench_args: list[str],
        say: Callable[[str], None], runner: Runner = run_bench) -> dict[str, list[dict[str, Any]]]:
    """Each tree's results, ``runs`` of each, in :func:`order`."""
    got: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    for n, side in enumerate(order(runs), start=1):
        started = time.monotonic()
        data = runner(trees[side], bench_args)
        got[side].append(data)
        cpu = ((data.get("figures") or {}).get("router_cpu_per_turn") or {}).get("median")
        say(f"run {n}/{2 * runs}: {side} ({trees[side].revision}) in "
            f"{time.monotonic() - started:.0f} s"
            + ("" if cpu is None else f", router CPU {cpu:.3f} ms/turn"))
    return got


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                usage="%(prog)s BASE [options] [-- more options of python -m "
                                      "bench, for both sides]",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE",
                   help="the commit, branch or tag to compare with (or a checkout's path)")
    p.add_argument("--runs", type=int, default=3, metavar="N",
                   help="bench runs of each side, alternated [default 3]")
    p.add_argument("--only", default="pair", metavar="LIST",
                   help="the bench sections to run (python -m bench --only) [default pair]")
    p.add_argument("--expect", action="append", default=[], metavar="FIGURE<=RATIO",
                   help="a target on this / base for a figure (repeatable), e.g. "
                        "router_cpu_per_turn<=0.42")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.compare BASE [options] [-- more options of python -m bench]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m bench.compare", *argv])
    extra: list[str] = []
    if "--" in argv:  # what follows goes to both sides' python -m bench
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    args = build_parser().parse_args(argv)
    try:
        if args.runs < 1:
            raise CompareError(f"--runs {args.runs}: at least one run of each side")
        expect = dict(parse_expect(e) for e in args.expect)
        bench_args = ["--only", args.only, "--runs", "1", *extra]
        head = Tree("head", REPO, _describe(REPO))
        with base_tree(args.base) as base:
            say(f"comparing {head.revision!r} (this checkout) with {base.revision!r}: "
                f"{args.runs} alternated run(s) of python -m bench {' '.join(bench_args)}")
            got = run({"base": base, "head": head}, args.runs, bench_args, say)
        figures = compare(got["base"], got["head"], expect)
    except CompareError as exc:
        print(f"python -m bench.compare: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(figures))
    if args.markdown:
        print()
        print(format_comparison(figures, markdown=True))
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "plan": {
        "command": command, "base": base.revision,
        "head": head.revision, "runs": args.runs, "bench_args": bench_args},
        "machine": got["head"][-1].get("machine"),
        "figures": {f.key: f.to_json() for f in figures}}
    write_results("compare", report)
    return 0


def write_results(kind: str, report: dict[str, Any]) -> Path:
    """Save ``report`` as ``bench/results/KIND-<time>.json`` and say where."""
    out = REPO / "bench" / "results" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"results: {out.relative_to(REPO)}")
    return out


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""python -m bench.compare: the alternation, the paired ratios, the table, the base tree."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import compare
from bench.compare import CompareError, Tree
from bench.stats import Target


def results(**figures: float | None) -> dict[str, Any]:
    """A results file of one run, as python -m bench writes it."""
    return {"figures": {k: {"label": k.replace("_", " "), "unit": "ms" if "cpu" in k else
                            "ratio", "median": v, "runs": [v]} for k, v in figures.items()}}


def test_each_side_goes_first_as_often_and_pairs_stay_back_to_back() -> None:
    assert compare.order(1) == ["base", "head"]
    assert compare.order(3) == ["base", "head", "head", "base", "base", "head"]
    sides = compare.order(4)
    assert sides.count("base") == sides.count("head") == 4
    assert all({sides[i], sides[i + 1]} == {"base", "head"} for i in range(0, 8, 2))


def test_expect_parses_a_bound_and_refuses_anything_else_in_one_line() -> None:
    assert compare.parse_expect("router_cpu_per_turn<=0.42") == (
        "router_cpu_per_turn", Target("<=", 0.42))
    assert compare.parse_expect(" ratio_throughput >= 1.5 ") == (
        "ratio_throughput", Target(">=", 1.5))
    with pytest.raises(CompareError, match="FIGURE<=RATIO"):
        compare.parse_expect("router_cpu_per_turn < 0.42")


def test_ratios_are_paired_run_by_run_not_taken_of_the_medians() -> None:
    # A machine that slows down: base 2, 3, 4; head 1, 1.5, 2 -> this / base is 0.5 each run.
    base = [results(router_cpu_per_turn=v) for v in (2.0, 3.0, 4.0)]
    head = [results(router_cpu_per_turn=v) for v in (1.0, 1.5, 2.0)]
    figures = {f.key: f for f in compare.compare(base, head,
                                                 {"router_cpu_per_turn": Target("<=", 0.42)})}
    ratio = figures["vs_base_router_cpu_per_turn"]
    assert (ratio.summary.median, ratio.summary.low, ratio.summary.high) == (0.5, 0.5, 0.5)
    assert ratio.target == Target("<=", 0.42) and ratio.to_json()["met"] is False
    assert figures["base_router_cpu_per_turn"].summary.median == 3.0
    assert figures["router_cpu_per_turn"].summary.median == 1.5
    assert figures["router_cpu_per_turn"].unit == "ms"


def test_figures_one_side_lacks_are_left_out_and_the_heads_order_is_kept() -> None:
    base = [results(b=1.0, a=2.0, old_only=3.0)]
    head = [results(a=1.0, new_only=5.0, b=4.0)]
    keys = [f.key for f in compare.compare(base, head)]
    assert keys == ["base_a", "a", "vs_base_a", "base_b", "b", "vs_base_b"]


def test_a_run_without_a_figure_does_not_pair_with_the_others() -> None:
    base = [results(x=2.0), results(x=None), results(x=4.0)]
    head = [results(x=1.0), results(x=9.0), results(x=1.0)]
    ratio = {f.key: f for f in compare.compare(base, head)}["vs_base_x"]
    assert ratio.summary.runs == (0.5, 0.25)
    assert math.isclose(ratio.summary.median, 0.375)


def test_expect_on_a_figure_the_bench_does_not_measure_says_so() -> None:
    with pytest.raises(CompareError, match="router_cpu_per_trun"):
        compare.compare([results(a=1.0)], [results(a=1.0)],
                        {"router_cpu_per_trun": Target("<=", 0.5)})


def test_the_table_shows_base_this_the_ratio_and_the_verdict() -> None:
    base = [results(router_cpu_per_turn=v, ratio_throughput=0.2) for v in (2.0, 2.4)]
    head = [results(router_cpu_per_turn=v, ratio_throughput=0.4) for v in (0.8, 1.2)]
    figures = compare.compare(base, head, {"router_cpu_per_turn": Target("<=", 0.42)})
    text = compare.format_comparison(figures)
    row = next(line for line in text.splitlines() if line.startswith("router cpu"))
    assert row.split() == ["router", "cpu", "per", "turn", "2.20", "ms", "1.00", "ms", "0.450",
                           "0.400", "-", "0.500", "<=", "0.420", "NOT", "MET"]
    md = compare.format_comparison(figures, markdown=True)
    assert "| router cpu per turn | 2.20 ms | 1.00 ms | 0.450 | 0.400 - 0.500 | <= 0.420 | " \
           "**not met** |" in md
    assert "| ratio throughput | 0.200 | 0.400 | 2.00 | 2.00 - 2.00 |  |  |" in md


def test_runs_alternate_and_are_told() -> None:
    calls: list[str] = []
    told: list[str] = []

    def runner(tree: Tree, args: list[str]) -> dict[str, Any]:
        calls.append(tree.name)
        assert args == ["--only", "pair"]
        return results(router_cpu_per_turn=1.0 if tree.name == "head" else 2.0)

    trees = {"base": Tree("base", Path("/b"), "abc base"), "head": Tree("head", Path("/h"),
                                                                      "def head")}
    got = compare.run(trees, 2, ["--only", "pair"], told.append, runner)
    assert calls == ["base", "head", "head", "base"]
    assert len(got["base"]) == len(got["head"]) == 2
    assert told[0].startswith("run 1/4: base (abc base)")
    assert "router CPU 1.000 ms/turn" in told[1]


def test_a_base_that_is_no_commit_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert compare.main(["no-such-revision-anywhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m bench.compare: no commit 'no-such-revision-anywhere'")
    assert "\n" not in err
    assert compare.main(["HEAD", "--runs", "0"]) == 2
    assert "--runs 0" in capsys.readouterr().err


def test_the_base_commit_is_checked_out_for_the_run_and_removed_after() -> None:
    with compare.base_tree("HEAD") as tree:
        assert (tree.path / "bench" / "__main__.py").exists()
        assert tree.path != compare.REPO
        listed = subprocess.run(["git", "worktree", "list"], cwd=compare.REPO,
                                capture_output=True, text=True, check=True).stdout
        assert str(tree.path) in listed
    assert not tree.path.exists()
    listed = subprocess.run(["git", "worktree", "list"], cwd=compare.REPO,
                            capture_output=True, text=True, check=True).stdout
    assert str(tree.path) not in listed


def test_a_directory_base_is_used_as_it_is(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match="no bench/"), compare.base_tree(str(tmp_path)):
        pass
    with compare.base_tree(str(compare.REPO)) as tree:
        assert tree.path == compare.REPO


def test_a_tree_with_changes_says_so(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("commit", "-qm", "the subject")
    assert compare._describe(tmp_path).endswith(" the subject")
    (tmp_path / "f").write_text("2")
    assert compare._describe(tmp_path).endswith(" the subject + uncommitted changes")

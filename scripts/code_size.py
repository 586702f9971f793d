"""Lines per module and the longest functions of the product (router/, worker_sdk/).

Run ``python scripts/code_size.py`` from the repository root; ``--top N`` sets how many
functions to list (10 by default).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGES = ("router", "worker_sdk")


def modules(root: Path) -> list[Path]:
    """Every Python file of the product, sorted by path."""
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))


def functions(path: Path, root: Path) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append(((child.end_lineno or child.lineno) - child.lineno + 1, name))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    module = ".".join(path.relative_to(root).with_suffix("").parts)
    visit(tree, module + ":")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=int, default=10, help="how many functions to list")
    args = parser.parse_args()
    root = Path.cwd()
    every: list[tuple[int, str]] = []
    total = 0
    print("lines  module")
    for path in modules(root):
        count = len(path.read_text(encoding="utf-8").splitlines())
        total += count
        print(f"{count:5d}  {path.relative_to(root)}")
        every.extend(functions(path, root))
    print(f"{total:5d}  total")
    print(f"\nlines  the {args.top} longest functions")
    for lines, name in sorted(every, reverse=True)[: args.top]:
        print(f"{lines:5d}  {name}")


if __name__ == "__main__":
    main()

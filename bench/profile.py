"""Sampling a process under load with py-spy, and summing its raw (collapsed) output."""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Proc

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass(slots=True)
class Profile:
    """Sample counts: by leaf function (self), by function on the stack (inclusive), by area."""

    samples: int = 0
    self_: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    areas: Counter[str] = field(default_factory=Counter)

    def top(self, counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / self.samples) for name, c in counter.most_common(n)]

    def to_json(self, n: int = 25) -> dict[str, object]:
        return {"samples": self.samples,
                "self_pct": [[k, round(v, 1)] for k, v in self.top(self.self_, n)],
                "inclusive_pct": [[k, round(v, 1)] for k, v in self.top(self.inclusive, n)],
                "area_self_pct": [[k, round(v, 1)] for k, v in self.top(self.areas, n)]}


def frame_name(frame: str) -> tuple[str, str]:
    """(``function (file)``, area) of one py-spy frame ``function (file:line)``."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "other"
    func, file = match["func"], match["file"]
    return f"{func} ({file})", area_of(file)


def area_of(file: str) -> str:
    """A coarse owner of a source file: our modules by module, libraries by package."""
    path = file.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "other"
    if parts[0] in ("router", "worker_sdk", "bench") and len(parts) > 1:
        return f"{parts[0]}.{parts[1].removesuffix('.py')}"
    if len(parts) >= 2 and parts[-2] == "asyncio":
        return "asyncio"
    if parts[0].startswith("python3") and len(parts) > 1:
        parts = parts[1:]
    head = parts[0].removesuffix(".py")
    return {"<frozen importlib._bootstrap>": "import"}.get(head, head)


def parse_raw(text: str) -> Profile:
    """Sum py-spy ``--format raw`` lines (``frame;frame;... COUNT``, root first)."""
    prof = Profile()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        names = [frame_name(f) for f in frames]
        prof.samples += count
        leaf, leaf_area = names[-1]
        prof.self_[leaf] += count
        prof.areas[leaf_area] += count
        for name in {n for n, _ in names}:
            prof.inclusive[name] += count
    return prof


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 100) -> Proc:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (raw format into ``out``)."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return await Proc.spawn("py-spy", [exe, "record", "-p", str(pid), "-d",
                                       str(max(1, round(seconds))), "-r", str(rate),
                                       "--format", "raw", "-o", str(out), "--nonblocking"])


def format_profile(title: str, prof: Profile, n: int = 15) -> str:
    """Top self and inclusive functions and areas, as text."""
    lines = [f"{title}: {prof.samples} samples (CPU-active stacks only)"]
    for heading, counter in (("self", prof.self_), ("inclusive", prof.inclusive),
                             ("self by area", prof.areas)):
        lines.append(f"  top {heading}:")
        lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in prof.top(counter, n))
    return "\n".join(lines)

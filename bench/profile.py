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
    stacks: list[tuple[frozenset[str], int]] = field(default_factory=list)

    def top(self, counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / self.samples) for name, c in counter.most_common(n)]

    def share(self, needles: tuple[str, ...]) -> float:
        """Percent of samples with a frame containing any of ``needles`` on the stack."""
        hits = sum(count for names, count in self.stacks
                   if any(needle in name for name in names for needle in needles))
        return 100.0 * hits / self.samples if self.samples else 0.0

    def parts(self) -> list[tuple[str, float]]:
        return [(label, self.share(needles)) for label, needles in PARTS]

    def to_json(self, n: int = 25) -> dict[str, object]:
        return {"samples": self.samples,
                "self_pct": [[k, round(v, 1)] for k, v in self.top(self.self_, n)],
                "inclusive_pct": [[k, round(v, 1)] for k, v in self.top(self.inclusive, n)],
                "area_self_pct": [[k, round(v, 1)] for k, v in self.top(self.areas, n)],
                "parts_pct": [[k, round(v, 1)] for k, v in self.parts()]}


PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("redis-py (every Redis round trip)", ("(redis/",)),
    ("  store.load", ("RedisStore.load ",)),
    ("  store.commit (+ hint ZADD)", ("RedisStore.commit ",)),
    ("  store.discard", ("RedisStore.discard ",)),
    ("  deadline scanner (claim, Tick step, settle)", ("Scanner.run ", "Scanner._fire ")),
    ("aio-pika / aiormq / pamqp (AMQP)", ("(aiormq/", "(aio_pika/", "(pamqp/")),
    ("  broker.publish", ("AmqpBroker.publish ",)),
    ("  delivery.ack", ("AmqpDelivery.ack ",)),
    ("socket writes (StreamWriter.write/writelines, transport.write)",
     ("StreamWriter.write", "Transport.write")),
    ("router core.step", ("step (router/core.py)",)),
    ("  copy.deepcopy of the record", ("deepcopy (copy.py)",)),
    ("Record/Effect encode+decode", ("Record.decode ", "Record.encode ", "Effect.decode ",
                                     "Effect.encode ")),
    ("tenacity (retry wrapper per delivery)", ("(tenacity/",)),
    ("logging", ("(logging/",)),
    ("Service.handle (the service's own code)", ("Service.handle ",)),
]
"""Labelled parts of a step, each matched by substrings of ``function (file)`` frames."""


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
    for i, part in enumerate(parts[:-1]):
        if part.startswith("python3"):  # a full standard library path
            parts = parts[i + 1:]
            break
    if parts[0] in ("router", "worker_sdk", "bench") and len(parts) > 1:
        return f"{parts[0]}.{parts[1].removesuffix('.py')}"
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
        unique = frozenset(n for n, _ in names)
        for name in unique:
            prof.inclusive[name] += count
        prof.stacks.append((unique, count))
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
    for heading, counter in (("self", prof.self_), ("self by area", prof.areas)):
        lines.append(f"  top {heading}:")
        lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in prof.top(counter, n))
    lines.append("  parts (share of samples with it on the stack; parts overlap):")
    lines.extend(f"    {pct:5.1f}%  {label}" for label, pct in prof.parts() if pct > 0)
    return "\n".join(lines)

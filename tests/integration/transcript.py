"""The reference pizza conversation (``pizza_transcript.txt``) the end-to-end suites replay:
``> message`` lines, each followed by the notices it must produce."""

from __future__ import annotations

from pathlib import Path

SCRIPT = Path(__file__).with_name("pizza_transcript.txt")


def rounds() -> list[tuple[str, list[str]]]:
    """Each message of the conversation with the notices it must produce."""
    out: list[tuple[str, list[str]]] = []
    for line in SCRIPT.read_text().splitlines():
        if line.startswith("> "):
            out.append((line[2:], []))
        elif line:
            out[-1][1].append(line)
    return out


def lines() -> list[str]:
    """The whole conversation, line by line, as a replay must print it."""
    return [line for line in SCRIPT.read_text().splitlines() if line]

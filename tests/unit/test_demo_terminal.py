"""``cloudbunch demo`` as a person uses it: at a terminal (Ctrl-C) and piped into ``head``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

REPO = Path(__file__).resolve().parents[2]


def _default_sigint() -> None:
    """In the child, before exec: SIGINT handled by default and not blocked, whatever the
    test process (and the many tests before this one) left to inherit."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.terminal
def test_ctrl_c_at_the_prompt_exits_at_once() -> None:
    # Before, a thread blocked in input() held the exit until the next Enter: the expect
    # for EOF timed out. The generous timeout only bounds a hang; it is not a speed check.
    child = pexpect.spawn(sys.executable, ["-m", "router.cli", "demo", "--embedded"],
                          cwd=str(REPO), timeout=60, encoding="utf-8",
                          preexec_fn=_default_sigint)
    try:
        child.expect_exact("you> ")
        child.sendline("help")
        child.expect_exact("bot> I take pizza orders.")
        child.expect_exact("you> ")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    assert "Traceback" not in (child.before or "")


def test_demo_piped_into_head_ends_without_a_traceback() -> None:
    # `cloudbunch demo < /dev/null | head -2`: the reader goes away after two lines.
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "demo", "--embedded"],
                            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("CLOUDBUNCH_")})
    assert proc.stdout is not None and proc.stderr is not None
    first = [proc.stdout.readline(), proc.stdout.readline()]
    proc.stdout.close()  # what head does after its lines
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=60)
    assert first[0].startswith(b"demo: using the embedded in-memory engine")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == 1, err

"""Bounded waits for a state the code under test reaches by itself and announces nowhere: a
supervisor restarting its worker, a probe host or a spare becoming ready, a process ending, a
relay dropping a connection. Each wait has a deadline and names what it waited for; where a ready
line or an event exists, tests wait on that instead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WAIT_S = 60.0
POLL_S = 0.01


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Return once ``condition()`` is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(POLL_S)  # ok: the bounded poll every wait here goes through


async def until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """:func:`wait_for` inside an event loop, which keeps running meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        await asyncio.sleep(POLL_S)  # ok: the bounded poll every wait here goes through

"""The structured event log: one JSON object per line in ``<state-dir>/events.jsonl``.

Operators and experiments read what the daemon decided and why from here: start and stop, model
submitted / probed / admitted / refused / removed / loaded, switches with their extra cost, and
request errors. Each line is flushed as it is written (no fsync: losing the last lines in a power
cut is acceptable for a log, unlike for the model store).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any


class EventLog:
    FILENAME = "events.jsonl"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.FILENAME
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._pid = os.getpid()
        # A crash mid-write leaves a torn last line; start on a fresh one so no event is lost.
        if self.path.stat().st_size and not self._ends_with_newline():
            self._file.write("\n")

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"ts": round(time.time(), 6), "event": event, "pid": self._pid, **fields}
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
        return record

    def tail(self, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` events (of one kind, if ``event`` is given), oldest first."""
        return read_events(self.path, limit, event)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_events(path: Path, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
    kept: deque[dict[str, Any]] = deque(maxlen=max(0, limit))
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash mid-write
                if event is None or record.get("event") == event:
                    kept.append(record)
    except FileNotFoundError:
        return []
    return list(kept)

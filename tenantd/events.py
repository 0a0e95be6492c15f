"""The structured event log: one JSON object per line in ``<state-dir>/events.jsonl``.

Operators and experiments read what the daemon decided and why from here: start and stop, model
submitted / probed / admitted / refused / removed / loaded, switches with their extra cost, and
request errors. Each line is flushed as it is written (no fsync: losing the last lines in a power
cut is acceptable for a log, unlike for the model store). The file is bounded: past ``max_bytes``
it is rotated to ``events.jsonl.1`` (replacing the previous one), so a tenant that provokes errors
cannot fill an edge box's disk. Reading the tail reads from the end of the files, not all of them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_CHUNK = 64 * 1024


class EventLog:
    FILENAME = "events.jsonl"

    def __init__(self, state_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = state_dir / self.FILENAME
        self.rotated = state_dir / (self.FILENAME + ".1")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._size = self.path.stat().st_size
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
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            if self._size + len(line) > self.max_bytes and self._size > 0:
                self._file.close()
                os.replace(self.path, self.rotated)
                self._file = self.path.open("a", encoding="utf-8", buffering=1)
                self._size = 0
            self._file.write(line)
            self._size += len(line)
        return record

    def tail(self, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` events (of one kind, if ``event`` is given), oldest first."""
        with self._lock:  # not while a rotation moves the files
            newer = read_events(self.path, limit, event)
            if len(newer) >= limit:
                return newer
            return read_events(self.rotated, limit - len(newer), event) + newer

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_events(path: Path, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
    """The last ``limit`` events in ``path`` (of one kind, if ``event``), oldest first, reading the
    file backwards in chunks until enough are found."""
    found: list[dict[str, Any]] = []  # newest first
    if limit <= 0:
        return found
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            carry = b""
            while end > 0 and len(found) < limit:
                start = max(0, end - _CHUNK)
                f.seek(start)
                block = f.read(end - start) + carry
                end = start
                lines = block.split(b"\n")
                # The first piece may be the end of a line that starts in an earlier chunk.
                carry = lines.pop(0) if start > 0 else b""
                for line in reversed(lines):
                    _collect(line, event, found)
                    if len(found) >= limit:
                        break
    except FileNotFoundError:
        return []
    return found[::-1]


def _collect(line: bytes, event: str | None, found: list[dict[str, Any]]) -> None:
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # a line torn by a crash mid-write
    if isinstance(record, dict) and (event is None or record.get("event") == event):
        found.append(record)

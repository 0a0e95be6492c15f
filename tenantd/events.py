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
import logging
import os
import threading
import time
from collections import deque
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger("tenantd")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_CHUNK = 64 * 1024
MAX_LINE_BYTES = 1024 * 1024


class Event(StrEnum):
    """The kinds of event the daemon writes. Stable names: never rename, only add. Each line of
    :data:`EVENT_TABLE` says what the event means; ``docs/protocol.md`` (section 7.7) lists them."""

    START = "start"
    STOP = "stop"
    MODEL_SUBMITTED = "model.submitted"
    MODEL_PROBED = "model.probed"
    MODEL_ADMITTED = "model.admitted"
    MODEL_REFUSED = "model.refused"
    MODEL_LOADED = "model.loaded"
    MODEL_LOAD_FAILED = "model.load_failed"
    MODEL_DAMAGED = "model.damaged"
    MODEL_FILES_SET_ASIDE = "model.files_set_aside"
    MODEL_REMOVED = "model.removed"
    MODEL_INSTANCES = "model.instances"
    SWITCH = "switch"
    SWITCH_SUMMARY = "switch.summary"
    REQUEST_ERROR = "request.error"
    ADMISSION_OVER_BUDGET = "admission.over_budget"
    ADMISSION_WITHIN_BUDGET = "admission.within_budget"
    BUDGET_CHANGED = "budget.changed"
    QUOTA_EXCEEDED = "quota.exceeded"
    POLICY_CHANGED = "policy.changed"
    KEYS_RELOADED = "keys.reloaded"
    DEVICE_LOST = "device.lost"
    DEVICE_RETRY_FAILED = "device.retry_failed"
    DEVICE_RECOVERED = "device.recovered"
    WORKER_CRASHED = "worker.crashed"
    WORKER_RESTARTED = "worker.restarted"
    WORKER_QUARANTINED = "worker.quarantined"
    PIPELINE_SET = "pipeline.set"
    PIPELINE_REMOVED = "pipeline.removed"
    PIPELINE_NOT_RESTORED = "pipeline.not_restored"
    PIPELINE_FAILED = "pipeline.failed"
    PIPELINE_CLOUD_FAILED = "pipeline.cloud_failed"


EVENT_TABLE: dict[Event, str] = {
    Event.START: "The daemon bound its endpoint: device, profile, emulated, endpoint, pid, version.",
    Event.STOP: "The daemon stopped after its drain: dropped_requests, requests.",
    Event.MODEL_SUBMITTED: "A tenant sent a model file; it is stored by hash, not yet probed.",
    Event.MODEL_PROBED: "The probe loaded the file in a throwaway process: footprint, load and first inference times.",
    Event.MODEL_ADMITTED: "Admission accepted the model: the device's budget and use at that moment.",
    Event.MODEL_REFUSED: "A submission was refused: code (INVALID_MODEL, ADMISSION_DENIED, ...) and the reason.",
    Event.MODEL_LOADED: "A model is served: load_ms, and whether it replaced or was restored.",
    Event.MODEL_LOAD_FAILED: "A stored model could not be loaded at start-up; it is kept, and requests say why.",
    Event.MODEL_DAMAGED: "A model file is missing or not its recorded size at start-up: not loaded; status lists it.",
    Event.MODEL_FILES_SET_ASIDE: "At start-up, model files no stored model uses were moved to orphans/, not deleted.",
    Event.MODEL_REMOVED: "A model was removed by its tenant or the operator.",
    Event.MODEL_INSTANCES: "A model got its instances: instances, wanted, instance_bytes (each measured), limited_by.",
    Event.SWITCH: "A slot ran another model than the one it ran last: the reload (if swapped) and overhead_ms.",
    Event.SWITCH_SUMMARY: "All switches of one model pair in a window of up to 10 s: count, reloads, overhead.",
    Event.REQUEST_ERROR: "A request got an error reply: op, tenant, code, message.",
    Event.ADMISSION_OVER_BUDGET: "The models admitted no longer fit the budget (it shrank, or a policy changed it).",
    Event.ADMISSION_WITHIN_BUDGET: "The models admitted fit the budget again.",
    Event.BUDGET_CHANGED: "A shared budget moved with the host's memory use by more than the noise band.",
    Event.QUOTA_EXCEEDED: "After a policy change a tenant is over its model or memory quota; its models stay.",
    Event.POLICY_CHANGED: "The operator applied a new policy: the fields that changed.",
    Event.KEYS_RELOADED: "The keys folder was read again (SIGHUP or reload_keys): the identities in force.",
    Event.DEVICE_LOST: "The runtime reported the device gone; inference fails fast while it is retried.",
    Event.DEVICE_RETRY_FAILED: "One retry of a lost device failed; the wait before the next one doubles.",
    Event.DEVICE_RECOVERED: "The lost device is back and its models are reloaded: down_s, attempts.",
    Event.WORKER_CRASHED: "The device worker died: reason (signal or watchdog), calls in flight, suspect model files.",
    Event.WORKER_RESTARTED: "A new device worker runs and has every model again: down_s, attempts, reloaded.",
    Event.WORKER_QUARANTINED: "A model file crashed the device worker twice; it is not loaded or run again.",
    Event.PIPELINE_SET: "A tenant defined or redefined a pipeline.",
    Event.PIPELINE_REMOVED: "A pipeline was removed.",
    Event.PIPELINE_NOT_RESTORED: "A stored pipeline could not be read back at start-up.",
    Event.PIPELINE_FAILED: "A pipeline request failed: code and details.",
    Event.PIPELINE_CLOUD_FAILED: "A cascade's cloud stage failed and the edge answer was sent instead.",
}


# What the operator and tenants decided, and what the daemon decided about them: kept in audit.jsonl
# as well, where the high-rate kinds (switch, request.error, budget.changed, ...) cannot rotate it away.
AUDIT: frozenset[str] = frozenset(
    {
        Event.START,
        Event.STOP,
        Event.MODEL_SUBMITTED,
        Event.MODEL_ADMITTED,
        Event.MODEL_REFUSED,
        Event.MODEL_REMOVED,
        Event.MODEL_LOAD_FAILED,
        Event.MODEL_DAMAGED,
        Event.MODEL_FILES_SET_ASIDE,
        Event.ADMISSION_OVER_BUDGET,
        Event.ADMISSION_WITHIN_BUDGET,
        Event.QUOTA_EXCEEDED,
        Event.POLICY_CHANGED,
        Event.KEYS_RELOADED,
        Event.DEVICE_LOST,
        Event.DEVICE_RECOVERED,
        Event.WORKER_CRASHED,
        Event.WORKER_RESTARTED,
        Event.WORKER_QUARANTINED,
        Event.PIPELINE_SET,
        Event.PIPELINE_REMOVED,
        Event.PIPELINE_NOT_RESTORED,
    }
)
SWITCH_WINDOW_S = 10.0
SWITCH_EVENTS_PER_WINDOW = 10


class _Lines:
    """One bounded JSON-lines file: appended one whole line per write, rotated to ``NAME.1``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.max_bytes = max_bytes
        # Unbuffered: each line is one write() that either reaches the file or fails now, so a full
        # disk loses that line (counted in ``lost``) instead of leaving it in a buffer to tear later.
        self._file = path.open("ab", buffering=0)
        self._size = path.stat().st_size
        self.lost = 0
        # A crash mid-write leaves a torn last line; start on a fresh one so no event is lost.
        if self._size and not self._ends_with_newline():
            self._file.write(b"\n")

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def write(self, line: bytes) -> None:
        """Append ``line`` (the caller holds the log's lock)."""
        try:
            if self._size + len(line) > self.max_bytes and self._size > 0:
                self._file.close()
                os.replace(self.path, self.rotated)
                self._file = self.path.open("ab", buffering=0)
                self._size = 0
            written = self._file.write(line) or 0
        except OSError as exc:  # a full disk: the log loses a line, the daemon serves on
            self._lost(exc)
            return
        self._size += written
        if written < len(line):  # the disk filled mid-line: end it, so the next line is whole
            self._lost(OSError("short write"))

    def _lost(self, exc: OSError) -> None:
        if self.lost == 0 or self.lost % 1000 == 0:
            log.warning("%s cannot be written (%s); %d line(s) lost so far", self.path.name, exc, self.lost + 1)
        self.lost += 1
        try:
            self._size += self._file.write(b"\n") or 0
        except OSError:
            pass  # still full: the next whole line starts after the torn one, which readers skip

    def tail(self, limit: int, event: str | None) -> list[dict[str, Any]]:
        newer = read_events(self.path, limit, event)
        if len(newer) >= limit:
            return newer
        return read_events(self.rotated, limit - len(newer), event) + newer

    def close(self) -> None:
        self._file.close()


class EventLog:
    """``events.jsonl``: every event, rotated by size. ``audit.jsonl``: the audit events
    (:data:`AUDIT`) again, rotated by its own size, so that a flood of switches or request errors
    cannot push them out. Switch events are sampled per model pair and summarised
    (:class:`SwitchSummaries`)."""

    FILENAME = "events.jsonl"
    AUDIT_FILENAME = "audit.jsonl"

    def __init__(self, state_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._lock = threading.Lock()
        self._events = _Lines(state_dir / self.FILENAME, max_bytes)
        self._audit = _Lines(state_dir / self.AUDIT_FILENAME, max_bytes)
        self.path, self.rotated = self._events.path, self._events.rotated
        self.audit_path = self._audit.path
        self._pid = os.getpid()
        self.switches = SwitchSummaries(self)

    @property
    def max_bytes(self) -> int:
        return self._events.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._events.max_bytes = self._audit.max_bytes = value

    @property
    def lost(self) -> int:
        return self._events.lost + self._audit.lost

    def configure(self, policy: Any) -> None:
        """Take a policy's event settings (``event_log_max_bytes``, ``switch_events``)."""
        self.max_bytes = policy.event_log_max_bytes
        self.switches.log_all = policy.switch_events == "all"

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"ts": round(time.time(), 6), "event": event, "pid": self._pid, **fields}
        line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        audit = event in AUDIT
        with self._lock:
            self._events.write(line)
            if audit:
                self._audit.write(line)
        if audit:  # also in the daemon's own log (the journal, a collector), with its names as extras
            named = {k: fields[k] for k in ("tenant", "model", "code") if fields.get(k) is not None}
            log.info(
                "event %s%s", event, "".join(f" {k}={v}" for k, v in named.items()), extra={"event": event, **named}
            )
        return record

    def tail(self, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` events (of one kind, if ``event`` is given), oldest first: from the
        event log, and from the audit log for audit events the event log has rotated away."""
        self.switches.flush_due()
        with self._lock:  # not while a rotation moves the files
            found = self._events.tail(limit, event)
            older = self._audit.tail(limit, event) if event is None or event in AUDIT else []
        if not older:
            return found
        # An audit event is in both files: keep one of each, in time order (a stable sort keeps the
        # order of events with the same ts), and the newest ``limit`` of them.
        seen = {json.dumps(e, sort_keys=True, default=str) for e in found}
        merged = found + [e for e in older if json.dumps(e, sort_keys=True, default=str) not in seen]
        merged.sort(key=lambda e: e["ts"] if isinstance(e.get("ts"), int | float) else 0.0)
        return merged[-limit:]

    def close(self) -> None:
        self.switches.flush_due(everything=True)
        with self._lock:
            self._events.close()
            self._audit.close()


def read_events(path: Path, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
    """The last ``limit`` events in ``path`` (of one kind, if ``event``), oldest first, reading the
    file backwards in chunks until enough are found. A line longer than ``MAX_LINE_BYTES`` is no
    event this daemon wrote (a page is at most 1 MiB): it is skipped without being held whole."""
    found: list[dict[str, Any]] = []  # newest first
    if limit <= 0:
        return found
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            # The line that continues into the chunks already read, as pieces (joined once, when
            # its start is found: joining at every chunk would cost the square of its length).
            carry: deque[bytes] = deque()
            carry_bytes, overlong = 0, False
            while end > 0 and len(found) < limit:
                start = max(0, end - _CHUNK)
                f.seek(start)
                parts = f.read(end - start).split(b"\n")
                end = start
                carry.appendleft(parts[-1])
                carry_bytes += len(parts[-1])
                if carry_bytes > MAX_LINE_BYTES:
                    carry, overlong = deque(), True
                if len(parts) == 1 and start > 0:
                    continue  # no newline in this chunk: the line goes on
                lines = [b"".join(carry) if not overlong else b"", *reversed(parts[1:-1])]
                if len(parts) > 1:
                    carry, carry_bytes, overlong = deque([parts[0]]), len(parts[0]), False
                    if start == 0:
                        lines.append(parts[0])  # the file's first line
                for line in lines:
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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return  # a line torn by a crash mid-write, or anything else that is no event
    if isinstance(record, dict) and (event is None or record.get("event") == event):
        found.append(record)


class Sampler:
    """Lets through at most ``burst`` occurrences of each key per ``window_s`` and counts the rest,
    so that a flood (a fuzzing client, a peer that stopped reading) costs a few lines, not one each.
    ``take`` returns whether to write this one, and how many were held back since the last written."""

    def __init__(self, burst: int = 10, window_s: float = 10.0, clock: Any = time.monotonic) -> None:
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, written, held back)

    def take(self, key: str) -> tuple[bool, int]:
        now = self._clock()
        start, written, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self.window_s:
            start, written = now, 0
        if written < self.burst:
            self._windows[key] = (start, written + 1, 0)
            return True, held
        self._windows[key] = (start, written, held + 1)
        return False, 0


class SwitchSummaries:
    """Switches, counted so that their figures survive at any rate: each ordered model pair
    (``from`` -> ``to``) has a window of ``SWITCH_WINDOW_S`` starting at its first switch; the
    first ``SWITCH_EVENTS_PER_WINDOW`` switches of a window are written as ``switch`` events (all of
    them with the policy's ``switch_events = "all"``), and every switch is counted in the window's
    one ``switch.summary`` event. A summary is written at the first switch, read of the log or stop
    after its window ends (``until`` is when it was closed). Switches are recorded on the event loop
    and the log is read on worker threads, hence the lock."""

    def __init__(self, log: EventLog, clock: Any = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self.log_all = False
        self._windows: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.RLock()  # taken before the log's own lock, never after

    def record(self, previous: str, model: str, **fields: Any) -> None:
        """One switch from ``previous`` to ``model``; ``fields`` as the ``switch`` event has them."""
        with self._lock:
            self._record(previous, model, fields)

    def _record(self, previous: str, model: str, fields: dict[str, Any]) -> None:
        self.flush_due()
        now = self._clock()
        window = self._windows.setdefault(
            (previous, model),
            {"opened": now, "since": round(time.time(), 6), "count": 0, "logged": 0, "reloads": 0, "measured": 0}
            | {"overhead_total_ms": 0.0, "overhead_max_ms": None, "load_total_ms": 0.0},
        )
        window["count"] += 1
        window["reloads"] += bool(fields.get("reload"))
        window["load_total_ms"] += fields.get("load_ms") or 0.0
        overhead = fields.get("overhead_ms")
        if overhead is not None:
            window["measured"] += 1
            window["overhead_total_ms"] += overhead
            top = window["overhead_max_ms"]
            window["overhead_max_ms"] = overhead if top is None else max(top, overhead)
        if self.log_all or window["logged"] < SWITCH_EVENTS_PER_WINDOW:
            window["logged"] += 1
            self._log.emit(Event.SWITCH, **{"from": previous, "to": model}, **fields)

    def flush_due(self, everything: bool = False) -> None:
        """Write the summaries of the windows that have ended (all of them at stop)."""
        with self._lock:
            now = self._clock()
            due = [p for p, w in self._windows.items() if everything or now - w["opened"] >= SWITCH_WINDOW_S]
            for pair in due:
                self._write(pair, self._windows.pop(pair))

    def _write(self, pair: tuple[str, str], window: dict[str, Any]) -> None:
        measured = window["measured"]
        self._log.emit(
            Event.SWITCH_SUMMARY,
            **{"from": pair[0], "to": pair[1]},
            since=window["since"],
            until=round(time.time(), 6),
            count=window["count"],
            logged=window["logged"],
            reloads=window["reloads"],
            load_total_ms=round(window["load_total_ms"], 4),
            measured=measured,
            overhead_total_ms=round(window["overhead_total_ms"], 4),
            overhead_mean_ms=round(window["overhead_total_ms"] / measured, 4) if measured else None,
            overhead_max_ms=window["overhead_max_ms"],
        )

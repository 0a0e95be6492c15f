"""Unit tests for tenantd.events: the JSON-lines event log."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantd.events import EventLog, read_events


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    events = EventLog(tmp_path)
    yield events
    events.close()


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_emit_writes_one_json_line_per_event(log: EventLog, tmp_path: Path) -> None:
    before = time.time()
    returned = log.emit("model.admitted", model="m", tenant="alice", footprint_bytes=1234)
    log.emit("daemon.stop", reason="SIGTERM")
    after = time.time()

    assert log.path == tmp_path / "events.jsonl"
    raw = lines(log.path)
    assert len(raw) == 2
    first = json.loads(raw[0])
    assert first == returned
    assert first["event"] == "model.admitted"
    assert first["pid"] == os.getpid()
    assert before - 1e-3 <= first["ts"] <= after + 1e-3
    assert first["model"] == "m"
    assert first["tenant"] == "alice"
    assert first["footprint_bytes"] == 1234
    second = json.loads(raw[1])
    assert second["event"] == "daemon.stop"
    assert second["reason"] == "SIGTERM"
    assert "model" not in second


def test_emit_is_readable_before_close(log: EventLog) -> None:
    # Line-buffered: another reader sees the event without the log being closed or flushed.
    log.emit("daemon.start")
    assert [e["event"] for e in read_events(log.path)] == ["daemon.start"]


def test_emit_serialises_unusual_values_as_strings(log: EventLog, tmp_path: Path) -> None:
    log.emit("odd", path=tmp_path, items=(1, 2), nested={"a": None})
    record = json.loads(lines(log.path)[0])
    assert record["path"] == str(tmp_path)
    assert record["items"] == [1, 2]
    assert record["nested"] == {"a": None}


def test_emit_keeps_newlines_inside_values_on_one_line(log: EventLog) -> None:
    log.emit("model.refused", reason="line one\nline two")
    raw = lines(log.path)
    assert len(raw) == 1
    assert json.loads(raw[0])["reason"] == "line one\nline two"


def test_log_appends_across_reopen(tmp_path: Path) -> None:
    first = EventLog(tmp_path)
    first.emit("daemon.start", n=1)
    first.close()
    second = EventLog(tmp_path)
    second.emit("daemon.start", n=2)
    try:
        assert [e["n"] for e in second.tail()] == [1, 2]
    finally:
        second.close()


def test_tail_limits_and_keeps_oldest_first(log: EventLog) -> None:
    for i in range(10):
        log.emit("tick", i=i)
    assert [e["i"] for e in log.tail(3)] == [7, 8, 9]
    assert [e["i"] for e in log.tail()] == list(range(10))
    assert [e["i"] for e in log.tail(100)] == list(range(10))
    assert log.tail(0) == []


def test_tail_filters_by_event_then_limits(log: EventLog) -> None:
    for i in range(6):
        log.emit("even" if i % 2 == 0 else "odd", i=i)
    assert [e["i"] for e in log.tail(event="odd")] == [1, 3, 5]
    assert [e["i"] for e in log.tail(2, event="even")] == [2, 4]
    assert log.tail(event="nothing") == []


def test_tail_default_limit_is_100(log: EventLog) -> None:
    for i in range(120):
        log.emit("tick", i=i)
    got = log.tail()
    assert len(got) == 100
    assert got[0]["i"] == 20
    assert got[-1]["i"] == 119


def test_torn_last_line_is_skipped(log: EventLog) -> None:
    log.emit("model.loaded", model="a")
    log.emit("model.loaded", model="b")
    with log.path.open("a", encoding="utf-8") as f:
        f.write('{"ts":1.0,"event":"model.lo')  # crash mid-write: no closing brace, no newline
    got = log.tail()
    assert [e["model"] for e in got] == ["a", "b"]
    assert log.tail(1) == [got[-1]]


def test_read_events_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_events(tmp_path / "events.jsonl") == []


def test_event_after_restart_on_torn_log_is_not_lost(tmp_path: Path) -> None:
    (tmp_path / EventLog.FILENAME).write_text('{"ts":1.0,"event":"model.loaded"}\n{"ts":2.0,"ev', encoding="utf-8")
    restarted = EventLog(tmp_path)
    try:
        restarted.emit("daemon.start", version="x")
        assert [e["event"] for e in restarted.tail()] == ["model.loaded", "daemon.start"]
    finally:
        restarted.close()


def test_the_log_is_rotated_past_its_size_cap_and_tail_spans_both_files(tmp_path: Path) -> None:
    events = EventLog(tmp_path, max_bytes=4096)
    for i in range(200):  # ~70 bytes a line: several rotations
        events.emit("request.error", n=i, code="QUEUE_FULL")
    assert events.path.stat().st_size <= 4096
    assert events.rotated.exists() and events.rotated.stat().st_size <= 4096
    assert not (tmp_path / "events.jsonl.2").exists()  # one generation kept: the disk use is bounded
    kept = [e["n"] for e in events.tail(limit=1000)]
    in_current = sum(1 for _ in events.path.open())
    assert len(kept) > in_current  # the tail spans the rotated file too
    assert kept == list(range(200 - len(kept), 200))  # the newest events, in order, none missing
    assert [e["n"] for e in events.tail(limit=5)] == [195, 196, 197, 198, 199]
    events.close()


def test_tail_reads_lines_longer_than_a_chunk(tmp_path: Path) -> None:
    events = EventLog(tmp_path)
    events.emit("first")
    events.emit("big", blob="x" * 200_000)
    events.emit("last")
    assert [e["event"] for e in events.tail(limit=3)] == ["first", "big", "last"]
    assert events.tail(limit=1, event="big")[0]["blob"] == "x" * 200_000
    events.close()

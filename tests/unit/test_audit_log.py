"""The audit log (audit events in audit.jsonl, out of reach of high-rate events' rotation) and the
sampling and per-window summaries of switch events (tenantd.events)."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from pathlib import Path

from tenantd.events import (
    AUDIT,
    SWITCH_EVENTS_PER_WINDOW,
    SWITCH_WINDOW_S,
    Event,
    EventLog,
    SwitchSummaries,
    read_events,
)


def test_a_flood_of_switches_and_errors_cannot_rotate_audit_events_away(tmp_path: Path) -> None:
    events = EventLog(tmp_path, max_bytes=4096)
    events.emit(Event.MODEL_REFUSED, tenant="mallory", model="big", code="ADMISSION_DENIED")
    events.emit(Event.POLICY_CHANGED, changed=["queue_depth_total"], source="runtime")
    for i in range(500):  # ~100 KiB: the event log rotates many times over
        events.emit(Event.REQUEST_ERROR, n=i, code="QUEUE_FULL", tenant="mallory")
    assert not any('"model.refused"' in line for line in events.path.read_text().splitlines())
    assert not events.rotated.read_text().count("model.refused")
    audit = [json.loads(line) for line in events.audit_path.read_text().splitlines()]
    assert [e["event"] for e in audit] == ["model.refused", "policy.changed"]  # nothing else in it
    # The reads find them there, by kind and unfiltered, each once and in time order.
    assert [e["model"] for e in events.tail(event="model.refused")] == ["big"]
    everything = events.tail(limit=10_000)
    assert [e["event"] for e in everything[:2]] == ["model.refused", "policy.changed"]
    assert everything[-1]["n"] == 499 and len({json.dumps(e, sort_keys=True) for e in everything}) == len(everything)
    events.close()


def test_audit_events_are_read_once_while_both_logs_hold_them(tmp_path: Path) -> None:
    events = EventLog(tmp_path)
    events.emit(Event.START, pid=1)
    events.emit(Event.SWITCH, **{"from": "a", "to": "b"})
    events.emit(Event.MODEL_REMOVED, model="m")
    assert [e["event"] for e in events.tail()] == ["start", "switch", "model.removed"]
    assert [e["event"] for e in events.tail(limit=2)] == ["switch", "model.removed"]
    assert [e["event"] for e in events.tail(event="model.removed")] == ["model.removed"]
    assert events.tail(event="switch")[0]["to"] == "b"
    events.close()
    assert len(events.audit_path.read_text().splitlines()) == 2


def test_the_audit_list_is_low_rate_kinds_only() -> None:
    high_rate = {Event.SWITCH, Event.SWITCH_SUMMARY, Event.REQUEST_ERROR, Event.BUDGET_CHANGED, Event.MODEL_LOADED}
    assert not AUDIT & high_rate
    assert {Event.MODEL_REFUSED, Event.POLICY_CHANGED, Event.KEYS_RELOADED, Event.MODEL_SUBMITTED} <= AUDIT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_switches_are_sampled_and_every_one_is_summarised(tmp_path: Path) -> None:
    events = EventLog(tmp_path)
    clock = Clock()
    events.switches = SwitchSummaries(events, clock)
    for i in range(25):
        events.switches.record("a", "b", slot=0, reload=i % 5 == 0, load_ms=2.0 if i % 5 == 0 else None, overhead_ms=i)
        events.switches.record("b", "a", slot=0, reload=False, load_ms=None, overhead_ms=None)
    logged = events.tail(limit=1000, event="switch")
    assert len(logged) == 2 * SWITCH_EVENTS_PER_WINDOW  # a sample of each pair
    assert events.tail(event="switch.summary") == []  # the windows are still open
    clock.now += SWITCH_WINDOW_S
    summaries = {(s["from"], s["to"]): s for s in events.tail(event="switch.summary")}  # a read closes them
    ab, ba = summaries[("a", "b")], summaries[("b", "a")]
    assert ab["count"] == 25 and ab["logged"] == SWITCH_EVENTS_PER_WINDOW and ab["reloads"] == 5
    assert ab["measured"] == 25 and ab["overhead_total_ms"] == sum(range(25)) and ab["overhead_max_ms"] == 24
    assert ab["overhead_mean_ms"] == 12.0 and ab["load_total_ms"] == 10.0 and ab["since"] <= ab["until"]
    assert ba["count"] == 25 and ba["measured"] == 0 and ba["overhead_mean_ms"] is None
    # A new window starts with the next switch; stopping writes its summary.
    events.switches.record("a", "b", slot=0, reload=False, load_ms=None, overhead_ms=1.5)
    events.close()
    reopened = EventLog(tmp_path)
    last = reopened.tail(event="switch.summary")[-1]
    assert (last["from"], last["to"], last["count"], last["logged"]) == ("a", "b", 1, 1)
    reopened.close()


def test_switch_events_all_logs_every_switch(tmp_path: Path) -> None:
    events = EventLog(tmp_path)
    events.switches.log_all = True
    for _ in range(3 * SWITCH_EVENTS_PER_WINDOW):
        events.switches.record("a", "b", slot=0, reload=False, load_ms=None, overhead_ms=None)
    assert len(events.tail(limit=1000, event="switch")) == 3 * SWITCH_EVENTS_PER_WINDOW
    events.close()


def test_switches_recorded_while_the_log_is_read_on_another_thread_are_all_counted(tmp_path: Path) -> None:
    """Switches are recorded on the event loop and the log is read (which closes ended windows)
    on a worker thread: no switch is lost or counted twice."""
    events = EventLog(tmp_path)
    ticks = itertools.count()
    events.switches = SwitchSummaries(events, clock=lambda: next(ticks) * 0.01)  # a window per ~1,000 calls
    total, done, failures = 5000, threading.Event(), []

    def read() -> None:
        try:
            while not done.is_set():
                events.tail(limit=50, event="switch.summary")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    reader = threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so that a race would show
    try:
        reader.start()
        for i in range(total):
            events.switches.record(f"m{i % 3}", f"m{(i + 1) % 3}", slot=0, reload=False, load_ms=None, overhead_ms=1)
        done.set()
        reader.join()
    finally:
        sys.setswitchinterval(interval)
    events.close()
    assert not failures
    summaries = read_events(events.path, limit=100_000, event="switch.summary")
    assert sum(s["count"] for s in summaries) == total
    assert sum(s["overhead_total_ms"] for s in summaries) == total * 1.0

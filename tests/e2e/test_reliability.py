"""Reliability against a peer that misbehaves, with the daemon as a real process.

Reliability issue item 3: one client that sent 300 ``events {limit: 10000}`` requests and never
read its replies grew the daemon from 89 MB to 1,098 MB and logged a line per dropped reply
(12,849 for one client). Now every events page is at most 1 MiB and at most PEER_SEND_HWM replies
wait for any one peer; the rest are dropped, counted, and logged a few lines at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from tenantclient import TenantClient
from tenantd.frontdoors.zeromq import PEER_SEND_HWM
from tenantd.operations import MAX_EVENTS_REPLY_BYTES
from tenantwire import protocol
from tests.support.daemon import DaemonProcess, start_daemon_process

pytestmark = pytest.mark.e2e

HOG_REQUESTS = 300
SEEDED_EVENTS = 12_000  # ~3.7 MB of events: a 10,000-event page would be ~3 MB


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    state = tmp_path / "state"
    state.mkdir()
    with (state / "events.jsonl").open("w") as log:
        for i in range(SEEDED_EVENTS):
            log.write(json.dumps({"ts": 1.0, "event": "model.removed", "pid": 1, "model": f"m{i}", "pad": "x" * 240}))
            log.write("\n")
    proc = start_daemon_process(state, f"ipc://{tmp_path}/d.sock")
    yield proc
    proc.stop()


def _wait_for(condition: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)  # ok: polling the daemon's own counters, not standing in for a ready line


def test_a_peer_that_never_reads_cannot_grow_the_daemon(daemon: DaemonProcess) -> None:
    rss = psutil.Process(daemon.proc.pid)
    with TenantClient(daemon.endpoint) as operator:
        page = operator.call("events", {"limit": 10_000}).result
        assert len(json.dumps(page["events"])) <= MAX_EVENTS_REPLY_BYTES and page["omitted"] > 0
        before = rss.memory_info().rss

        hog = zmq.Context.instance().socket(zmq.DEALER)
        hog.setsockopt(zmq.LINGER, 0)
        hog.setsockopt(zmq.RCVHWM, 1)  # its side buffers as little as it can: the daemon's side is tested
        hog.connect(daemon.endpoint)
        try:
            for i in range(HOG_REQUESTS):
                header = {"v": protocol.PROTOCOL_VERSION, "id": i, "op": "events", "args": {"limit": 10_000}}
                hog.send(msgpack.packb(header))

            def dropped() -> int:
                return sum(operator.status().get("replies_dropped", {}).values())

            # Beyond the per-peer queue (and what the socket buffers hold) replies are dropped.
            _wait_for(lambda: dropped() >= HOG_REQUESTS - PEER_SEND_HWM - 20, "replies to the hog to be dropped")
            grown = rss.memory_info().rss - before
            assert operator.ping()["pong"] is True  # everyone else is still answered
        finally:
            hog.close()
    # The bound: PEER_SEND_HWM pages of at most 1 MiB, plus the working set of reading the log.
    assert grown < (PEER_SEND_HWM + 64) * MAX_EVENTS_REPLY_BYTES, f"the daemon grew by {grown / 2**20:.0f} MiB"
    daemon.stop()
    drop_lines = [line for line in daemon.stderr().splitlines() if "dropping a reply" in line]
    assert 1 <= len(drop_lines) <= 5, drop_lines

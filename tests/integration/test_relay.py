"""The link-emulating relay: real TCP on loopback, and a real daemon behind it.

Shaping only ever adds delay, so the lower bounds here (a round trip is at least twice the one-way
latency; a transfer is no faster than the link rate) hold however busy the machine is. The upper
bounds are loose on purpose: `python -m experiments.relay --check` prints the precise figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from experiments.relay import Link, RelayThread, _parse_rate, endpoint_address, measure
from models import tiny
from tenantclient import TenantClient
from tests.support.daemon import daemon_in_thread
from tests.support.waiting import wait_for


def test_latency_is_added_each_way() -> None:
    m = measure(Link(latency_ms=15), pings=10, bulk_bytes=256 * 1024)
    assert 30.0 <= m.rtt_ms_median < 30.0 + 100.0
    assert m.bulk_bytes == 256 * 1024


def test_bandwidth_caps_a_bulk_transfer() -> None:
    rate = 8e6  # 8 Mbit/s: 1 MB/s
    m = measure(Link(latency_ms=2, bandwidth_bps=rate), pings=5, bulk_bytes=1_000_000)
    assert m.bulk_bytes == 1_000_000  # nothing lost
    assert m.goodput_bps <= rate * 1.05
    assert m.goodput_bps > rate * 0.5


def test_directions_are_shaped_independently() -> None:
    m = measure(Link(latency_ms=25), Link(latency_ms=0), pings=6, bulk_bytes=64 * 1024)
    assert 25.0 <= m.rtt_ms_median < 25.0 + 100.0


def test_daemon_behind_the_relay_serves_with_the_links_delay(tmp_path: Path) -> None:
    model = tiny.mlp(4, [8], 3)
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    with daemon_in_thread(tmp_path / "state", "tcp://127.0.0.1:*", auth="header") as daemon:
        with TenantClient(daemon.endpoint, tenant="edge") as direct:
            direct.submit_model(model, "m")
            want = direct.infer("m", x)
        with RelayThread(endpoint_address(daemon.endpoint), Link(latency_ms=20)) as relay:
            with TenantClient(relay.endpoint, tenant="edge") as remote:
                remote.ping()  # connect and handshake through the relay
                start = time.perf_counter()
                got = remote.infer("m", x)
                elapsed_ms = (time.perf_counter() - start) * 1e3
            assert relay.relay.stats.connections == 1
            assert relay.relay.stats.up.bytes > 0 and relay.relay.stats.down.bytes > 0
    assert elapsed_ms >= 40.0
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize(
    ("text", "bps"), [("10mbit", 10e6), ("500kbit", 5e5), ("1gbit", 1e9), ("0", None), ("inf", None), ("2500", 2500.0)]
)
def test_rates_parse(text: str, bps: float | None) -> None:
    assert _parse_rate(text) == bps


def test_bad_links_and_endpoints_are_refused() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        Link(latency_ms=-1)
    with pytest.raises(ValueError, match="bandwidth_bps"):
        Link(bandwidth_bps=0)
    with pytest.raises(ValueError, match="tcp://"):
        endpoint_address("ipc:///tmp/x.sock")
    assert endpoint_address("tcp://127.0.0.1:5555") == ("127.0.0.1", 5555)


def test_the_link_can_change_under_an_open_connection(tmp_path: Path) -> None:
    with daemon_in_thread(tmp_path / "state", "tcp://127.0.0.1:*", auth="header") as daemon:
        with RelayThread(endpoint_address(daemon.endpoint), Link()) as relay, TenantClient(relay.endpoint) as client:
            client.ping()
            start = time.perf_counter()
            client.ping()
            fast_ms = (time.perf_counter() - start) * 1e3
            relay.set_links(Link(latency_ms=30))
            start = time.perf_counter()
            client.ping()
            slow_ms = (time.perf_counter() - start) * 1e3
            assert relay.relay.stats.connections == 1  # the same connection throughout
    assert slow_ms >= 60.0 > fast_ms


def test_a_target_that_dies_mid_upload_ends_the_connection() -> None:
    import socket
    import threading

    # A target that takes the connection, reads a little, then resets it.
    listener = socket.create_server(("127.0.0.1", 0))

    def target() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST

    threading.Thread(target=target, daemon=True).start()
    link = Link(bandwidth_bps=8e6, buffer_bytes=64 * 1024)  # the upload outruns the link: the pump waits for room
    with RelayThread(listener.getsockname()[:2], link) as relay:
        host, port = relay.relay.address
        with socket.create_connection((host, port), timeout=10) as client:
            try:
                client.sendall(b"\0" * (2 * 1024 * 1024))
            except OSError:
                pass  # the relay may close on us first
            client.settimeout(10)
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass
        # The connection's task ended; nothing left waiting for room.
        wait_for(lambda: not relay.relay._tasks, "the relay to end the connection", timeout_s=5.0)
    listener.close()

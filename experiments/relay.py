"""A user-space link emulator: a TCP relay that delays and rate-limits what passes through it.

The split-processing experiments need an edge-to-cloud link with a chosen one-way latency and
bandwidth, and the kernel on these machines has no ``netem``. This relay sits between two
endpoints (a tenant or an edge daemon on one side, a cloud daemon's ``tcp://`` endpoint on the
other) and shapes each direction on its own, like a full-duplex link with a FIFO queue:

* bytes are cut into packets of at most ``mtu`` bytes; a packet starts to serialize when the
  link is free, takes ``8 * size / bandwidth`` seconds to serialize, and is delivered
  ``latency`` seconds after its last bit left;
* the link holds at most ``buffer_bytes`` in flight per direction; past that the relay stops
  reading, so the sender's own TCP flow control pushes back as a full queue would.

ZeroMQ (and CurveZMQ) streams pass through unchanged: the relay never looks inside them. Because
timers in user space are not exact, :func:`measure` checks what a relay really delivers (round
trip of small messages, goodput of a bulk transfer) so that an experiment can report the link it
actually had, not only the one it asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("experiments.relay")

DEFAULT_MTU = 1500
DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
_READ_BYTES = 256 * 1024


@dataclass(frozen=True)
class Link:
    """One direction of an emulated link. ``bandwidth_bps`` is in bits per second; ``None``
    means unlimited (only the latency is added)."""

    latency_ms: float = 0.0
    bandwidth_bps: float | None = None
    mtu: int = DEFAULT_MTU
    buffer_bytes: int = DEFAULT_BUFFER_BYTES

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError(f"bandwidth_bps must be > 0 (or None for unlimited), got {self.bandwidth_bps}")
        if self.mtu < 64 or self.buffer_bytes < self.mtu:
            raise ValueError("mtu must be >= 64 and buffer_bytes >= mtu")

    def describe(self) -> str:
        rate = "unlimited" if self.bandwidth_bps is None else f"{self.bandwidth_bps / 1e6:g} Mbit/s"
        return f"{self.latency_ms:g} ms one-way, {rate}"


@dataclass
class DirectionStats:
    bytes: int = 0
    packets: int = 0


@dataclass
class RelayStats:
    connections: int = 0
    up: DirectionStats = field(default_factory=DirectionStats)  # client -> target
    down: DirectionStats = field(default_factory=DirectionStats)  # target -> client


class _Shaper:
    """One direction of one connection: timestamps packets on arrival, delivers them on time."""

    def __init__(self, link: Callable[[], Link], writer: asyncio.StreamWriter, stats: DirectionStats) -> None:
        self._link = link  # read per write, so a relay's link can be changed while connections stay up
        self.writer = writer
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued_bytes = 0
        self.link_free_at = 0.0
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.eof = False
        self.broken = False  # the receiving side went away: drop what comes, stop waiting for room

    async def put(self, data: bytes) -> None:
        """Schedule ``data``; waits while the link's buffer is full."""
        link = self._link()
        while self.queued_bytes >= link.buffer_bytes and not self.broken:
            self.room.clear()
            await self.room.wait()
        if self.broken:
            return
        now = self.loop.time()
        latency = link.latency_ms / 1e3
        for start in range(0, len(data), link.mtu):
            packet = data[start : start + link.mtu]
            begin = max(now, self.link_free_at)
            done = begin if link.bandwidth_bps is None else begin + 8 * len(packet) / link.bandwidth_bps
            self.link_free_at = done
            self.queue.append((done + latency, packet))
            self.queued_bytes += len(packet)
        self.arrived.set()

    def close(self) -> None:
        self.eof = True
        self.arrived.set()

    async def run(self) -> None:
        """Deliver packets at their times; everything due at once goes out in one write."""
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        break
                    self.arrived.clear()
                    await self.arrived.wait()
                    continue
                due = self.queue[0][0]
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                now = self.loop.time()
                batch: list[bytes] = []
                while self.queue and self.queue[0][0] <= now:
                    batch.append(self.queue.popleft()[1])
                chunk = b"".join(batch)
                self.queued_bytes -= len(chunk)
                self.stats.bytes += len(chunk)
                self.stats.packets += len(batch)
                self.room.set()
                self.writer.write(chunk)
                await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except (ConnectionError, OSError):
            # The receiver went away: drop what is queued and wake a pump waiting for room, so it
            # reads on to its own EOF and the connection ends.
            self.broken = True
            self.queue.clear()
            self.queued_bytes = 0
            self.room.set()


class ShapingRelay:
    """Accepts TCP connections on ``listen`` and relays each one to ``target`` through two
    shaped directions: ``up`` (client -> target) and ``down`` (target -> client)."""

    def __init__(
        self,
        target: tuple[str, int],
        up: Link,
        down: Link | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.target = target
        self.up = up
        self.down = down if down is not None else up
        self.listen = listen
        self.stats = RelayStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def set_links(self, up: Link, down: Link | None = None) -> None:
        """Change the emulated link; applies to bytes that arrive from now on, on open
        connections too (bytes already queued keep the times they were given)."""
        self.up = up
        self.down = down if down is not None else up

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the relay is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def endpoint(self) -> str:
        """The relay's address as a ZeroMQ endpoint."""
        host, port = self.address
        return f"tcp://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        log.info(
            "relay %s -> %s:%d, up %s, down %s", self.endpoint, *self.target, self.up.describe(), self.down.describe()
        )

    async def close(self) -> None:
        # Connections first: from Python 3.12.1 wait_closed() waits for them to end.
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        target_writer: asyncio.StreamWriter | None = None
        try:
            try:
                target_reader, target_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                log.warning("relay cannot reach %s:%d: %s", *self.target, exc)
                return
            self.stats.connections += 1
            up = _Shaper(lambda: self.up, target_writer, self.stats.up)
            down = _Shaper(lambda: self.down, client_writer, self.stats.down)
            await asyncio.gather(self._pump(client_reader, up), self._pump(target_reader, down), up.run(), down.run())
        except asyncio.CancelledError:
            # close() cancels open connections; end quietly (asyncio's stream callback would log
            # a cancelled handler as an error).
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            client_writer.close()
            if target_writer is not None:
                target_writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, shaper: _Shaper) -> None:
        try:
            while data := await reader.read(_READ_BYTES):
                await shaper.put(data)
        except (ConnectionError, OSError):
            pass
        finally:
            shaper.close()


class RelayThread:
    """A :class:`ShapingRelay` on its own event loop in a daemon thread, for synchronous code
    (experiments, tests). Use as a context manager; ``endpoint`` is where clients connect."""

    def __init__(self, target: tuple[str, int], up: Link, down: Link | None = None) -> None:
        self.relay = ShapingRelay(target, up, down)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)

    def __enter__(self) -> RelayThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.relay.start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.relay.close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def endpoint(self) -> str:
        return self.relay.endpoint

    def set_links(self, up: Link, down: Link | None = None) -> None:
        """Change the link (see :meth:`ShapingRelay.set_links`); in force when this returns."""

        async def apply() -> None:
            self.relay.set_links(up, down)

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(timeout=10)


def endpoint_address(endpoint: str) -> tuple[str, int]:
    """``tcp://host:port`` -> ``(host, port)``; the relay shapes TCP only."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"the relay needs a tcp:// endpoint, got {endpoint!r}")
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cannot read host:port from {endpoint!r}")
    return host.strip("[]"), int(port)


# --- measuring what a relay delivers -------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    rtt_ms_median: float
    rtt_ms_samples: int
    goodput_bps: float
    bulk_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@contextlib.contextmanager
def _echo_server() -> Iterator[tuple[str, int]]:
    """A TCP echo server on loopback (its own loop and thread) for :func:`measure`."""
    loop = asyncio.new_event_loop()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_READ_BYTES):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = loop.run_until_complete(asyncio.start_server(echo, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, name="relay-echo", daemon=True)
    thread.start()
    try:
        host, port = server.sockets[0].getsockname()[:2]
        yield str(host), int(port)
    finally:

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def measure(up: Link, down: Link | None = None, pings: int = 20, bulk_bytes: int | None = None) -> Measurement:
    """Relay a loopback echo server through ``up``/``down`` and measure what comes out:
    the median round trip of 64-byte messages, and the goodput of a one-way bulk transfer
    (the echo's return leg is drained concurrently, so it measures the slower direction)."""
    import socket

    down = down if down is not None else up
    if bulk_bytes is None:
        slowest = min(filter(None, (up.bandwidth_bps, down.bandwidth_bps)), default=None)
        bulk_bytes = 8 * 1024 * 1024 if slowest is None else max(64 * 1024, int(slowest / 8 * 2.0))  # ~2 s
    with _echo_server() as echo, RelayThread(echo, up, down) as relay:
        host, port = relay.relay.address
        with socket.create_connection((host, port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rtts = []
            for _ in range(pings):
                start = time.perf_counter()
                sock.sendall(b"x" * 64)
                got = 0
                while got < 64:
                    got += len(sock.recv(64 - got))
                rtts.append((time.perf_counter() - start) * 1e3)
            payload = b"\0" * bulk_bytes
            received = 0

            def drain() -> None:
                nonlocal received
                while received < bulk_bytes:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    received += len(chunk)

            reader = threading.Thread(target=drain, daemon=True)
            start = time.perf_counter()
            reader.start()
            sock.sendall(payload)
            reader.join(timeout=600)
            elapsed = time.perf_counter() - start
    # The first bytes pay the round trip's latency before any goodput is seen: take it out.
    latency_s = (up.latency_ms + down.latency_ms) / 1e3
    goodput = 8 * received / max(1e-9, elapsed - latency_s)
    return Measurement(statistics.median(rtts), len(rtts), goodput, received)


def _parse_rate(text: str) -> float | None:
    """'10mbit', '500kbit', '1gbit', '0'/'inf' (unlimited), or a plain number of bits/s."""
    value = text.strip().lower()
    if value in {"0", "inf", "unlimited", "none"}:
        return None
    for suffix, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.relay",
        description="Relay TCP (e.g. a cloud daemon's tcp:// endpoint) through an emulated link.",
    )
    parser.add_argument("--target", help="where to relay to, tcp://HOST:PORT")
    parser.add_argument("--listen", default="tcp://127.0.0.1:0", help="where to accept (default: a free loopback port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="one-way latency added in each direction")
    parser.add_argument("--bandwidth", default="0", help="link rate in each direction, e.g. 10mbit (0: unlimited)")
    parser.add_argument("--check", action="store_true", help="measure the link this relay delivers, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        link = Link(latency_ms=args.latency_ms, bandwidth_bps=_parse_rate(args.bandwidth))
    except ValueError as exc:
        parser.error(str(exc))
    if args.check:
        m = measure(link)
        rate = "unlimited" if link.bandwidth_bps is None else f"{link.bandwidth_bps / 1e6:.3f}"
        print(f"asked:    rtt {2 * link.latency_ms:.2f} ms, bandwidth {rate} Mbit/s")
        print(
            f"measured: rtt {m.rtt_ms_median:.2f} ms (median of {m.rtt_ms_samples}), "
            f"goodput {m.goodput_bps / 1e6:.3f} Mbit/s over {m.bulk_bytes} bytes"
        )
        return 0
    if not args.target:
        parser.error("--target is required (or --check)")
    relay = ShapingRelay(endpoint_address(args.target), link, listen=endpoint_address(args.listen))

    async def run() -> None:
        await relay.start()
        print(f"relay ready endpoint={relay.endpoint} target={args.target} link={link.describe()}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

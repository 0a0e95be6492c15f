"""Spare probe processes: for a runtime that cannot be forked, a fresh probe started before it is needed.

ONNX Runtime and OpenVINO start a thread when imported, so the probe host (probehost.py) cannot fork
their probes, and a fresh probe spends ~300 ms starting Python and importing the runtime for a model
whose own load may take a few ms. A spare is that same fresh process, started ahead of time:
``python -m tenantd.probespare RUNTIME`` imports the runtime (and the model-file check's parser),
creates no session, measures what that cost, says it is ready on stdout, and blocks reading one job
from stdin. A probe takes a ready spare and writes it the job (what ``python -m tenantd.probe``
takes as arguments); the spare runs that one probe, answers as a fresh probe does, and exits. A
probe is thus still one process of its own: the memory limit (RLIMIT_AS, set relative to what the
spare has mapped when the job arrives), a crash, a hang and the footprint are what a fresh probe
gives, and the import is measured before the job, as the probe host measures it before forking, so
no model is charged for it.

The daemon keeps ``probe_spares`` (policy; default 1) ready per such runtime that its device can run
(a spare whose runtime cannot run on the device says so and is not replaced). A taken spare is
replaced in the background once its probe has ended, and one that dies while idle at once (one that dies before
becoming ready is retried at most every ``RESTART_INTERVAL_S``). A probe that finds no ready spare
waits for one that is starting rather than start a fresh process beside it: measured faster here,
since the starting one is ahead and two Pythons starting at once share the cores (README). Spares die
with the daemon (PR_SET_PDEATHSIG, and their stdin closing); :meth:`SpareProbes.close` kills and
reaps them. ``TENANTD_PROBE_HOST=0`` turns spares off with the probe host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantd.memory import rss_bytes
from tenantd.onnxrefs import onnx_package
from tenantd.probe import (
    PREPARED_PROBES,
    ProbeResult,
    fresh_probe,
    outcome,
    read_result,
    timed_out,
    warm_up,
    with_process,
    write_result,
)
from tenantd.runtimes import RuntimeNotAvailable, check_device, get_runtime_class

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


@dataclass(eq=False)
class _Spare:
    runtime: str
    ready: asyncio.Future[bool]  # True once it said it is ready; False if it ended before that
    proc: asyncio.subprocess.Process | None = None
    taken: bool = False
    rss: int = 0


@dataclass
class _Pool:
    spares: list[_Spare] = field(default_factory=list)  # started, not taken (ready or starting)
    failed_at: float = -float("inf")  # when a spare last ended before it was ready


class SpareProbes:
    """The daemon's spare probe processes, per runtime: starts, hands out, replaces and reaps them.

    :meth:`probe` never raises for a bad model; it probes in a fresh process where no spare can be
    had (spares off, a runtime without them, a spare that keeps failing to start)."""

    RESTART_INTERVAL_S = 5.0
    # Measured (README): waiting for a starting spare beats starting a fresh process beside it.
    WAIT_FOR_STARTING = True

    def __init__(self, runtimes: list[str], device: str, count: Callable[[], int]) -> None:
        self._pools = {runtime: _Pool() for runtime in runtimes}
        self._device = device
        self._count = count
        self._live: set[_Spare] = set()  # every spare whose process has not been reaped
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.unusable: dict[str, str] = {}  # runtime -> why it has no spares (said by a spare)
        self.import_bytes: dict[str, int] = {}  # runtime -> what its import cost a spare
        self.started = 0  # spare processes started
        self.served = 0  # probes run by spares

    def ready(self, runtime: str) -> int:
        """Spares of ``runtime`` ready to take a job now."""
        pool = self._pools.get(runtime)
        return 0 if pool is None else sum(1 for s in pool.spares if s.ready.done() and s.ready.result())

    def pids(self, runtime: str) -> list[int]:
        """Process ids of the idle spares of ``runtime`` (ready or starting)."""
        pool = self._pools.get(runtime)
        return [] if pool is None else [s.proc.pid for s in pool.spares if s.proc is not None]

    def start(self) -> None:
        """Start the spares in the background."""
        for runtime in self._pools:
            self._fill(runtime)

    async def close(self) -> None:
        """Kill every spare (idle, or in a probe the daemon no longer waits for) and reap it."""
        self._closed = True
        for spare in self._live:
            if spare.proc is not None and spare.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    spare.proc.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _fill(self, runtime: str) -> None:
        pool = self._pools[runtime]
        if not PREPARED_PROBES or self._closed or runtime in self.unusable:
            return
        if time.monotonic() - pool.failed_at < self.RESTART_INTERVAL_S:
            return  # its last spare ended before becoming ready: a broken install must not loop
        loop = asyncio.get_running_loop()
        while len(pool.spares) < max(0, self._count()):
            spare = _Spare(runtime, loop.create_future())
            pool.spares.append(spare)
            task = loop.create_task(self._run(spare), name=f"probe-spare-{runtime}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, spare: _Spare) -> None:
        """Start ``spare``, wait for it to be ready, then for its end; replace it if it ends idle."""
        pool = self._pools[spare.runtime]
        try:
            spare.proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "tenantd.probespare", spare.runtime],
                *["--device", self._device, "--parent", str(os.getpid())],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("a spare probe process for %s did not start (%s)", spare.runtime, exc)
            self._ended_unready(spare, pool)
            return
        self._live.add(spare)
        self.started += 1
        proc = spare.proc
        try:
            if self._closed:
                proc.kill()
            assert proc.stdout is not None
            message = _message(await proc.stdout.readline())
            if message.get("ready"):
                spare.rss = int(message.get("rss_bytes", 0))
                first = spare.runtime not in self.import_bytes
                self.import_bytes[spare.runtime] = int(message.get("runtime_overhead_bytes", 0))
                spare.ready.set_result(True)
                log.log(
                    logging.INFO if first else logging.DEBUG,
                    "spare probe process %d for %s ready (%.0f MiB resident)",
                    proc.pid,
                    spare.runtime,
                    spare.rss / 2**20,
                )
            else:
                if "unusable" in message:
                    self.unusable[spare.runtime] = str(message["unusable"])
                    log.info("no spare probe processes for %s: %s", spare.runtime, message["unusable"])
                await proc.wait()
                if "unusable" not in message and not self._closed:
                    log.warning(
                        "a spare probe process for %s ended before it was ready (%s)", spare.runtime, _words(proc)
                    )
                self._ended_unready(spare, pool)
                return
            await proc.wait()
            if not spare.taken and spare in pool.spares:
                pool.spares.remove(spare)
                if not self._closed:
                    log.warning(
                        "an idle spare probe process for %s ended (%s): starting another", spare.runtime, _words(proc)
                    )
                    self._fill(spare.runtime)
        finally:
            if proc.returncode is None:  # cancelled: it must not outlive the daemon's interest
                proc.kill()
                await proc.wait()
            self._live.discard(spare)

    def _ended_unready(self, spare: _Spare, pool: _Pool) -> None:
        if not spare.ready.done():
            spare.ready.set_result(False)
        if spare in pool.spares:
            pool.spares.remove(spare)
        pool.failed_at = time.monotonic()

    async def _take(self, runtime: str, timeout_s: float) -> _Spare | None:
        """A ready spare of ``runtime``, waiting for one that is starting; None if there is none."""
        pool = self._pools.get(runtime)
        if pool is None:
            return None
        deadline = time.monotonic() + timeout_s
        while True:
            self._fill(runtime)
            ready = [s for s in pool.spares if s.ready.done() and s.ready.result()]
            if ready:
                spare = ready[0]
                spare.taken = True
                pool.spares.remove(spare)
                return spare
            starting = [s.ready for s in pool.spares if not s.ready.done()]
            left = deadline - time.monotonic()
            if not starting or not self.WAIT_FOR_STARTING or left <= 0:
                return None
            await asyncio.wait(starting, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    async def probe(
        self, runtime: str, path: Path, threads: int, timeout_s: float, device: str, memory_limit: int | None
    ) -> ProbeResult:
        """Probe ``path`` in a spare of ``runtime`` (the same process a fresh probe would be), else fresh."""
        spare = await self._take(runtime, timeout_s)
        if spare is None or spare.proc is None:
            return await fresh_probe(runtime, path, threads, timeout_s, device, memory_limit)
        proc = spare.proc
        assert proc.stdin is not None and proc.stdout is not None
        job = {"path": str(path), "threads": threads, "device": device, "memory_limit": memory_limit}
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    proc.stdin.write(json.dumps(job).encode() + b"\n")
                    await proc.stdin.drain()
                    proc.stdin.close()
                    taken = _message(await proc.stdout.readline()).get("job")
                except (BrokenPipeError, ConnectionResetError):
                    taken = False
                if not taken:  # it ended while idle, just before it was taken: not the model's doing
                    log.warning("a spare probe process for %s ended before its job: probing fresh", runtime)
                    return await fresh_probe(runtime, path, threads, timeout_s, device, memory_limit)
                self.served += 1
                stdout, stderr = await proc.communicate()
        except TimeoutError:
            return timed_out(timeout_s)
        finally:
            if proc.returncode is None:  # timed out, or the daemon stopped waiting: end it (_run reaps)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            # Its replacement starts now, not while this probe runs: on a small box the two would
            # share the cores (a probe that finds no spare meanwhile starts one itself).
            self._fill(runtime)
        assert proc.returncode is not None
        return with_process(read_result(stdout, stderr, proc.returncode), "spare")


def _message(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line) if line.strip() else {}
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _words(proc: asyncio.subprocess.Process) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


# ------------------------------------------------------------------ the spare process


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tenantd.probespare",
        description="A spare probe process: imports RUNTIME, then runs the one probe job it reads from "
        "stdin (JSON: path, threads, device, memory_limit). Started by the daemon.",
    )
    parser.add_argument("runtime", help="runtime name, e.g. onnxruntime")
    parser.add_argument("--device", default="cpu", help="the daemon's device")
    parser.add_argument("--parent", type=int, help="the daemon's pid: exit if it is already gone")
    args = parser.parse_args(argv)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if args.parent is not None and os.getppid() != args.parent:  # the daemon died before prctl
        return 1
    rss_start = rss_bytes()
    try:
        cls = get_runtime_class(args.runtime)
        check_device(cls, args.device)
    except RuntimeNotAvailable as exc:
        _say({"unusable": str(exc)})
        return 0
    warm_up(cls)
    onnx_package()  # the model-file check's parser, where installed: a fresh probe loads it before measuring
    overhead = max(0, rss_bytes() - rss_start)
    _say({"ready": True, "pid": os.getpid(), "runtime_overhead_bytes": overhead, "rss_bytes": rss_bytes()})
    line = sys.stdin.readline()
    if not line:  # the daemon closed our stdin (it stopped): nothing to do
        return 0
    try:
        job = json.loads(line)
        limit = job.get("memory_limit")
        path, threads, device = Path(job["path"]), int(job["threads"]), str(job["device"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"tenantd.probespare: a job is one JSON line with path, threads, device ({exc!r})", file=sys.stderr)
        return 2
    _say({"job": True})
    result, code = outcome(args.runtime, path, threads, device, None if limit is None else int(limit), overhead)
    write_result(result)
    sys.stderr.flush()
    # Straight out: the interpreter's and the runtime's teardown (~100 ms for ONNX Runtime here) would
    # only delay the answer, which the daemon has once this process has ended.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

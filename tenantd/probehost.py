"""The probe host: a helper process, started once, that forks one probe child per submitted model.

A probe in a fresh process (:func:`tenantd.probe.probe_model`) spends most of its ~300 ms starting
Python and importing the runtime, for a model whose own load may take 9 ms. The probe host pays that
once: ``python -m tenantd.probehost`` (a fresh interpreter, never a fork of the daemon, whose
threads, sockets and locks a child must not inherit) imports the runtimes, creates no interpreter
or session, and waits on its control socket. For each probe it forks a child that sets its limits,
loads the model, measures, writes its result to pipes the daemon passed along, and exits. The child
is as isolated as a fresh probe: a crash, hang or allocation past the limit ends the child only.

Fork is safe only from a single-threaded process. Importing a runtime may start threads (measured
here: ONNX Runtime and OpenVINO start one each at import, LiteRT none), so those are probed in a
spare process started ahead of time (probespare.py) or a fresh one, and any other runtime is first
imported in a throwaway child: only one that leaves that child with a single thread is imported by
the host. The host checks that it is still single-threaded before every fork; numpy runs it with one
BLAS thread for that reason.

Memory is measured as a fresh probe measures it: the child's resident set grows from its reading
just before the load. A forked child shares the host's pages; those it writes are copied but were
counted in its resident set already, so they add nothing. File-backed pages are not in a child's
page tables until it touches them, though, so the child first maps the host's resident file pages
(MADV_POPULATE_READ, or reading /proc/self/mem on kernels before 5.14): its baseline then holds the
runtime code the host has touched, as a fresh probe's did after importing the runtime. The import's
own cost is measured once, in the host. The host's memory is its own process's: no model pays it.

If the host dies, the children it forked die with it (PR_SET_PDEATHSIG) and their probes are
answered with a clear error; the next probe starts a new host, and goes to a fresh process until
that host is ready. At shutdown the daemon closes the control socket: the host kills its children,
reaps them and exits, and the daemon reaps the host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tenantd.memory import rss_bytes
from tenantd.probe import (
    PREPARED_PROBES,
    Prober,
    ProbeResult,
    fresh_probe,
    outcome,
    read_result,
    timed_out,
    warm_up,
    with_process,
    write_result,
)
from tenantd.runtimes import get_runtime_class

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 * 1024
ENABLED = PREPARED_PROBES  # TENANTD_PROBE_HOST=0 turns the host off (and spare probe processes)
# Runtimes whose import starts a thread (checked with this module's own check on this machine):
# they are never imported by the host, so no throwaway child is spent finding it out again.
THREADED_AT_IMPORT = {
    "onnxruntime": "importing onnxruntime starts a thread",
    "openvino": "importing openvino starts a thread",
    "tensorrt": "TensorRT's CUDA context is not safe to fork",
}
# What the host's children return, besides a probe's own 0/1.
_CHILD_THREADED, _CHILD_IMPORT_FAILED = 3, 4
_MADV_POPULATE_READ = 22
_PR_SET_PDEATHSIG = 1


def threads() -> int:
    """Threads of this process (native ones included)."""
    return len(os.listdir("/proc/self/task"))


def resident_file_pages() -> list[tuple[int, int]]:
    """(address, length) of the runs of this process's file-backed pages that are in its page
    tables now: what a forked child must map again to start from the same resident set."""
    page = os.sysconf("SC_PAGE_SIZE")
    runs: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or not fields[5].startswith("/") or "r" not in fields[1]:
                    continue  # anonymous, [heap], [stack], [vdso], or not readable
                start, end = (int(x, 16) for x in fields[0].split("-"))
                raw = os.pread(pagemap.fileno(), (end - start) // page * 8, start // page * 8)
                present = (np.frombuffer(raw, np.uint64) >> np.uint64(63)).astype(np.int8)
                edges = np.flatnonzero(np.diff(np.concatenate(([0], present, [0]))))
                pairs = zip(edges[::2], edges[1::2], strict=True)
                runs += [(start + int(a) * page, int(b - a) * page) for a, b in pairs]
    except OSError as exc:  # the children then count the host's code they touch again: an overestimate
        print(f"tenantd.probehost: cannot read this process's page map ({exc})", file=sys.stderr)
        return []
    return runs


def map_pages(runs: list[tuple[int, int]]) -> None:
    """Put ``runs`` (from :func:`resident_file_pages`, taken before fork) in this process's page tables."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    missed = [(a, n) for a, n in runs if libc.madvise(a, n, _MADV_POPULATE_READ) != 0]
    if missed:  # a kernel before 5.14: reading the pages through /proc/self/mem maps them too
        with open("/proc/self/mem", "rb", buffering=0) as mem:
            for address, length in missed:
                for offset in range(0, length, 2**20):
                    try:
                        os.pread(mem.fileno(), min(2**20, length - offset), address + offset)
                    except OSError:
                        break


def _import_in_child(name: str) -> str | None:
    """Import runtime ``name`` in a throwaway child: None if it is safe to import before fork, else why not."""
    pid = os.fork()
    if pid == 0:
        code = _CHILD_IMPORT_FAILED
        try:
            get_runtime_class(name)
            code = 0 if threads() == 1 else _CHILD_THREADED
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code == 0:
        return None
    if code == _CHILD_THREADED:
        return f"importing {name} starts a thread"
    if code < 0:
        return f"importing {name} killed the process ({signal.Signals(-code).name})"
    return f"{name} does not import here"


class _Host:
    """The host's side: a single-threaded loop over the control socket and SIGCHLD."""

    def __init__(self, control: socket.socket, candidates: list[str]) -> None:
        self.control = control
        self.children: dict[int, int] = {}  # pid -> probe id
        self.overhead: dict[str, int] = {}  # runtime -> bytes its import added
        self.fresh: dict[str, str] = {}  # runtime -> why it is probed in a fresh process
        for name in candidates:
            reason = THREADED_AT_IMPORT.get(name) or _import_in_child(name)
            if reason is None and threads() != 1:
                reason = f"the probe host has {threads()} threads before importing {name}"
            if reason is not None:
                self.fresh[name] = reason
                continue
            before = rss_bytes()
            cls = get_runtime_class(name)
            self.overhead[name] = max(0, rss_bytes() - before)
            warm_up(cls)
        self.runs = resident_file_pages()
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wakeup_w)
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)  # a handler, so the wake-up byte is written

    def send(self, message: dict[str, Any]) -> None:
        self.control.send(json.dumps(message).encode())

    def serve(self) -> None:
        self.send({"ready": True, "pid": os.getpid(), "runtimes": self.overhead, "fresh": self.fresh})
        while True:
            readable, _, _ = select.select([self.control.fileno(), self.wakeup_r], [], [])
            if self.wakeup_r in readable:
                while True:
                    try:
                        os.read(self.wakeup_r, 4096)
                    except BlockingIOError:
                        break
                self.reap()
            if self.control.fileno() in readable:
                data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, 2)
                if not data:  # the daemon closed its end (or is gone): stop
                    for fd in fds:
                        os.close(fd)
                    break
                try:
                    self.handle(json.loads(data), fds)
                finally:
                    for fd in fds:
                        os.close(fd)
        for pid in self.children:
            os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            os.waitpid(pid, 0)

    def reap(self) -> None:
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            probe_id = self.children.pop(pid, None)
            if probe_id is not None:
                self.send({"id": probe_id, "returncode": os.waitstatus_to_exitcode(status)})

    def handle(self, request: dict[str, Any], fds: list[int]) -> None:
        probe_id = int(request["id"])
        if "kill" in request:  # the daemon's timeout: kill it only while it is ours (unreaped)
            for pid, owner in self.children.items():
                if owner == probe_id:
                    os.kill(pid, signal.SIGKILL)
            return
        if request["runtime"] not in self.overhead or len(fds) != 2:
            self.send({"id": probe_id, "error": f"the probe host does not probe {request['runtime']!r}"})
            return
        if threads() != 1:
            self.send({"id": probe_id, "error": f"the probe host has {threads()} threads: forking is not safe"})
            return
        host = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                self.child(host, request, fds)
            finally:
                os._exit(70)
        self.children[pid] = probe_id
        self.send({"id": probe_id, "pid": pid})

    def child(self, host: int, request: dict[str, Any], fds: list[int]) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.control.close()
        os.close(self.wakeup_r)
        os.close(self.wakeup_w)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != host:  # the host died before prctl: nobody will read the answer
            os._exit(1)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        map_pages(self.runs)
        runtime = str(request["runtime"])
        limit = request.get("memory_limit")
        result, code = outcome(
            runtime,
            Path(request["path"]),
            int(request["threads"]),
            str(request["device"]),
            None if limit is None else int(limit),
            self.overhead[runtime],
        )
        write_result(result)
        os._exit(code)


# ------------------------------------------------------------------ the daemon's side


class ProbeHost:
    """The daemon's handle on the probe host: starts it, hands it probes, restarts it when it dies.

    :meth:`probe` never raises for a bad model, like ``unforked`` (a spare probe process, else a
    fresh one), which it falls back to for a runtime the host does not import and while it starts."""

    # A host that keeps dying is started again at most this often (each start costs a Python).
    RESTART_INTERVAL_S = 5.0
    KILL_GRACE_S = 10.0

    def __init__(self, candidates: list[str], unforked: Prober = fresh_probe) -> None:
        self._candidates = candidates
        self._unforked = unforked
        self._ids = itertools.count(1)
        self._socket: socket.socket | None = None  # set while the host is ready
        self._control: socket.socket | None = None  # set while a host runs, ready or not
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._started_at = -float("inf")
        self._pending: dict[int, _Pending] = {}
        self.forked: dict[str, int] = {}  # runtime -> its import's bytes, while the host is ready
        self.fresh: dict[str, str] = {}  # runtime -> why its probes start a fresh process
        self.pid: int | None = None  # the host process while it is ready
        self.starts = 0
        self.forked_probes = 0  # probes handed to the host to fork

    def start(self) -> None:
        """Start the host in the background (it is ready when its first message arrives)."""
        if not ENABLED:
            return
        if not self._closed and (self._task is None or self._task.done()):
            self._started_at = time.monotonic()
            self.starts += 1
            self._task = asyncio.get_running_loop().create_task(self._run(), name="probe-host")

    async def close(self) -> None:
        """Stop the host: it kills and reaps its children, then exits; this reaps it."""
        self._closed = True
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_RDWR)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._control = ours
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # numpy's BLAS threads would forbid fork
        reason = "it exited"
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tenantd.probehost",
                "--control-fd",
                str(theirs.fileno()),
                *self._candidates,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        except OSError as exc:
            log.warning("the probe host did not start (%s): probes start fresh processes", exc)
            self._control = None
            ours.close()
            return
        finally:
            theirs.close()
        if self._closed:  # closed while it started: it is told to stop at once
            ours.shutdown(socket.SHUT_RDWR)
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(ours, MAX_MESSAGE)
                if not data:
                    break
                self._on_message(json.loads(data), ours)
        except (OSError, ValueError) as exc:
            reason = f"its socket failed ({exc})"
        finally:
            was_ready = self._socket is not None
            self._socket = self._control = None
            self.pid = None
            self.forked = {}
            ours.close()
            try:
                await asyncio.wait_for(proc.wait(), self.KILL_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            reason += f", {_status_words(proc.returncode)}"
            for pending in self._pending.values():
                if not pending.exit.done():
                    pending.exit.set_exception(ProbeHostLost(f"the probe host stopped ({reason})"))
            if not self._closed:
                # A host that had served is started again at once; one that died starting waits for
                # the next probe after RESTART_INTERVAL_S, so a broken install cannot loop.
                log.warning("the probe host stopped (%s)%s", reason, ": starting another" if was_ready else "")
                if was_ready:
                    loop.call_soon(self.start)

    def _on_message(self, message: dict[str, Any], ours: socket.socket) -> None:
        if message.get("ready"):
            self.forked, self.fresh, self.pid = dict(message["runtimes"]), dict(message["fresh"]), int(message["pid"])
            self._socket = ours
            fresh = "; ".join(f"{k}: {v}" for k, v in sorted(self.fresh.items())) or "none"
            log.info(
                "probe host %d ready: forks probes of %s (fresh processes: %s)", self.pid, sorted(self.forked), fresh
            )
            return
        pending = self._pending.get(int(message["id"]))
        if pending is None or pending.exit.done():
            return
        if "pid" in message:
            pending.pid = int(message["pid"])
        elif "returncode" in message:
            pending.exit.set_result(int(message["returncode"]))
        else:
            pending.exit.set_exception(ProbeHostRefused(str(message.get("error"))))

    async def probe(
        self, runtime: str, path: Path, threads: int, timeout_s: float, device: str, memory_limit: int | None
    ) -> ProbeResult:
        """Probe ``path``: in a child forked by the host when it imports ``runtime``, else fresh."""
        if self._socket is None or runtime not in self.forked:
            if self._socket is None and time.monotonic() - self._started_at >= self.RESTART_INTERVAL_S:
                self.start()
            return await self._unforked(runtime, path, threads, timeout_s, device, memory_limit)
        probe_id = next(self._ids)
        pending = self._pending[probe_id] = _Pending(asyncio.get_running_loop().create_future())
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        request = {"id": probe_id, "runtime": runtime, "path": str(path), "threads": threads, "device": device}
        try:
            socket.send_fds(
                self._socket, [json.dumps({**request, "memory_limit": memory_limit}).encode()], [out_w, err_w]
            )
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            del self._pending[probe_id]
            log.warning("probe host unreachable (%s): probing in a fresh process", exc)
            return await self._unforked(runtime, path, threads, timeout_s, device, memory_limit)
        finally:
            os.close(out_w)
            os.close(err_w)
        self.forked_probes += 1
        reading = asyncio.gather(_read_all(out_r), _read_all(err_r))
        try:
            (stdout, stderr), returncode = await asyncio.wait_for(
                asyncio.gather(reading, asyncio.shield(pending.exit)), timeout_s
            )
        except TimeoutError:
            await self._kill(probe_id, pending)
            return timed_out(timeout_s)
        except ProbeHostRefused as exc:
            log.warning("%s: probing in a fresh process", exc)
            return await self._unforked(runtime, path, threads, timeout_s, device, memory_limit)
        except ProbeHostLost as exc:
            return ProbeResult(ok=False, host_lost=True, reason=f"{exc} during this probe; the model was not judged")
        finally:
            if not pending.exit.done():  # cancelled (the daemon stopping): the child must not outlive it
                self._send_kill(probe_id)
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            del self._pending[probe_id]
        return with_process(read_result(stdout, stderr, returncode), "forked")

    def _send_kill(self, probe_id: int) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.send(json.dumps({"id": probe_id, "kill": True}).encode())

    async def _kill(self, probe_id: int, pending: _Pending) -> None:
        self._send_kill(probe_id)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(pending.exit), self.KILL_GRACE_S)


def _status_words(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


class ProbeHostLost(Exception):
    """The probe host died (or was killed) while a probe of it was in flight."""


class ProbeHostRefused(Exception):
    """The probe host declined a probe (it is no longer single-threaded)."""


@dataclass
class _Pending:
    exit: asyncio.Future[int]
    pid: int | None = None


async def _read_all(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    try:
        return await reader.read()
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tenantd.probehost", description=__doc__.split("\n\n")[0] + " Started by the daemon."
    )
    parser.add_argument("--control-fd", type=int, required=True, help="the daemon's SOCK_SEQPACKET socket")
    parser.add_argument("runtimes", nargs="*", help="runtimes to import before forking, where that is safe")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    try:
        _Host(control, args.runtimes).serve()
    except (ConnectionError, BrokenPipeError):
        return 0  # the daemon is gone
    return 0


if __name__ == "__main__":
    sys.exit(main())

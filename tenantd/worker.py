"""The daemon's side of a device worker: start it, talk to it, notice when it dies, start it again.

With ``isolation = "process"`` the device's runtime lives in a worker process
(:mod:`tenantd.workermain`, under ``worker_python``) and the executor's runtimes are
:class:`WorkerRuntime` proxies: a load, a new instance, an unload or an inference is a frame to the
worker (:mod:`tenantd.workerwire`), its tensors in shared memory. Each calling thread (a slot, a
loader) has its own connection and its own arenas, so a call is one frame out and one back, with
no thread hand-off on either side (the hop's cost is what experiments/worker_overhead.py measures).
A vendor abort, a segfault, an out-of-memory kill or an endless call then ends the worker, never
the daemon; a watcher thread per worker waits for its exit and answers for it.

Supervision (:class:`WorkerHost`): a call past ``watchdog_s`` gets the worker killed. When the
worker dies, every call on it fails with :class:`WorkerCrashed` (DEVICE_UNAVAILABLE, not retried:
the request may be the one that crashed it), each model file with a call on it (or loading) takes
a strike, and a new worker is started after a backoff (``RESTART_FIRST_S`` doubling to
``RESTART_MAX_S`` while starts fail or workers die within ``STABLE_S``) and given every model with
its instances before calls go to it; calls made meanwhile wait (up to the watchdog). A file with
``STRIKES`` strikes is quarantined until the daemon restarts (:class:`ModelQuarantined` names it).
Events ``worker.crashed``/``restarted``/``quarantined``; counts in ``status``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import tenantd
import tenantwire
from tenantd import workerwire
from tenantd.errors import DeviceLost, DeviceMemoryFull, ModelQuarantined, RuntimeFailure, WorkerCrashed
from tenantd.events import Event
from tenantd.memory import rss_bytes
from tenantd.runtimes import runtime_target
from tenantd.runtimes.base import LoadedModel, Runtime
from tenantwire.tensors import TensorSpec

log = logging.getLogger("tenantd")

STRIKES = 2  # crashes with a model's call in flight before that model is quarantined
RESTART_FIRST_S = 0.2
RESTART_MAX_S = 30.0
STABLE_S = 30.0  # a worker that ran this long before dying is restarted after RESTART_FIRST_S again
START_TIMEOUT_S = 60.0  # a new worker's first frame (its interpreter and numpy imported)
Emit = Callable[..., object]


@dataclass
class _Model:
    """What the worker holds, to give a new worker after a crash."""

    key: str
    path: str
    load: dict[str, Any]  # the load frame
    instances: int = 1


class WorkerHost:
    """One supervised worker process for one device."""

    def __init__(
        self,
        device: str,
        python: str | None = None,
        watchdog_s: float = 60.0,
        memory_limit_bytes: int | None = None,
        emit: Emit | None = None,
    ) -> None:
        self.device = device
        self.python = python or sys.executable
        self.watchdog_s = watchdog_s
        self.memory_limit_bytes = memory_limit_bytes
        self._emit = emit or (lambda *a, **k: None)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = "stopped"  # stopped | starting | running | closed
        self._gen = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None  # its end tells the worker the daemon is gone
        self._address = ""  # the worker's listening socket, for this generation
        self._dir = tempfile.mkdtemp(prefix="tenantd-worker-")
        self._in_flight: dict[int, tuple[int, str | None]] = {}  # thread -> (generation, model file)
        self._deaths: dict[int, threading.Event] = {}  # generation -> set once its death is handled
        self._models: dict[str, _Model] = {}
        self._killed: dict[int, str] = {}  # generation -> why the daemon killed it
        self._reasons: dict[int, str] = {}  # generation -> why it died
        self.strikes: dict[str, int] = {}
        self.quarantined: dict[str, str] = {}  # model file path -> why
        self.crashes = 0
        self.restarts = 0
        self.last_crash: dict[str, Any] | None = None
        self.python_version: str | None = None  # what the running worker's interpreter says it is
        self._local = threading.local()  # this thread's connection and arenas
        self._arenas: list[workerwire.Arena] = []
        self._arena_ids = itertools.count()
        self._wake = threading.Event()  # set at close: a backoff sleep ends at once
        self._up_since = 0.0  # when the current worker came up
        self._backoff = RESTART_FIRST_S
        workerwire.sweep()  # the arenas of daemons that are gone (a SIGKILLed one cannot remove its own)

    # ---------------------------------------------------------------- lifecycle

    def _spawn(self, gen: int) -> tuple[subprocess.Popen[bytes], socket.socket, str]:
        address = os.path.join(self._dir, f"w{gen}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen(64)
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        # The worker imports tenantd.workermain and the adapters from the same source as the daemon.
        roots = [str(Path(tenantd.__file__).parents[1]), str(Path(tenantwire.__file__).parents[1])]
        env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [env.get("PYTHONPATH")])])
        if self.memory_limit_bytes:
            env["TENANTD_WORKER_MEMORY_LIMIT"] = str(self.memory_limit_bytes)
        fds = (listener.fileno(), theirs.fileno())
        argv = [self.python, "-m", "tenantd.workermain", *map(str, fds)]
        try:
            proc = subprocess.Popen(argv, pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        except OSError:
            control.close()
            raise
        finally:
            listener.close()
            theirs.close()
        return proc, control, address

    def _ensure_started(self) -> None:
        """Under the lock: the first call starts the worker."""
        if self._state == "stopped":
            self._state = "starting"
            threading.Thread(target=self._bring_up, args=(0.0, False), name="worker-start", daemon=True).start()

    def _bring_up(self, delay: float, restart: bool) -> None:
        """Start a worker and give it every model not quarantined; retry on a doubling backoff."""
        down_since = time.monotonic()
        attempts = 0
        while True:
            if self._wake.wait(delay):
                return  # closed
            attempts += 1
            delay = min(max(delay * 2, RESTART_FIRST_S), RESTART_MAX_S)
            with self._lock:
                if self._state == "closed":
                    return
                self._gen += 1
                gen = self._gen
                self._deaths[gen] = threading.Event()
                try:
                    self._proc, self._control, self._address = self._spawn(gen)
                except OSError as exc:
                    log.error("device %s: the worker (%s) did not start: %s", self.device, self.python, exc)
                    continue
                proc = self._proc
            threading.Thread(target=self._watch, args=(proc, gen), name="worker-watch", daemon=True).start()
            try:
                hello = self._call({"op": "hello"}, None, starting=gen, timeout=START_TIMEOUT_S)
                reloaded = self._reload(gen)
            except RuntimeFailure as exc:  # it died (counted, the culprit struck) or never answered
                log.error("device %s: the worker did not come up: %s", self.device, exc)
                self._kill(gen, f"did not come up: {exc}")
                continue
            with self._lock:
                if self._gen != gen or self._state == "closed":
                    continue
                self._state = "running"
                self._up_since, self.python_version = time.monotonic(), str(hello.get("python"))
                self._changed.notify_all()
            log.info("device %s: worker pid %d (Python %s) running", self.device, proc.pid, hello.get("python"))
            if restart:
                self.restarts += 1
                down_s = round(time.monotonic() - down_since, 3)
                log.warning("device %s: worker restarted, %d model(s) reloaded", self.device, len(reloaded))
                self._emit(
                    Event.WORKER_RESTARTED,
                    device=self.device,
                    pid=proc.pid,
                    down_s=down_s,
                    attempts=attempts,
                    reloaded=reloaded,
                )
            return

    def _reload(self, gen: int) -> list[str]:
        """Load every model again on the new worker, one at a time. Raises WorkerCrashed."""
        reloaded = []
        for model in list(self._models.values()):
            if model.path in self.quarantined:
                continue
            try:
                self._call(dict(model.load), model.path, starting=gen)
                for _ in range(model.instances - 1):
                    self._call({"op": "add_instance", "key": model.key}, model.path, starting=gen)
            except WorkerCrashed:
                raise
            except RuntimeFailure as exc:  # it loads no more (a device gone): its calls say so
                log.error("device %s: model file %s not reloaded: %s", self.device, Path(model.path).name, exc)
                continue
            reloaded.append(Path(model.path).name)
        return reloaded

    def _watch(self, proc: subprocess.Popen[bytes], gen: int) -> None:
        """Wait for this generation's worker to end; then answer for it."""
        code = proc.wait()
        with self._lock:
            if self._state == "closed":
                self._deaths[gen].set()
                return
            suspects = sorted({path for g, path in self._in_flight.values() if g == gen and path})
            in_flight = sum(1 for g, _ in self._in_flight.values() if g == gen)
            reason = self._killed.pop(gen, None) or _exit_reason(code)
            self._reasons[gen] = reason
            was_running = self._state == "running" and self._gen == gen
            if self._gen == gen:
                self._state = "starting"
            if self._control is not None and self._gen == gen:
                self._control.close()
                self._control = None
        self.crashes += 1
        self.last_crash = {"time": time.time(), "reason": reason, "pid": proc.pid, "in_flight": in_flight}
        names = [Path(p).name for p in suspects]
        log.error("device %s: worker (pid %d) died: %s; %d call(s) in flight", self.device, proc.pid, reason, in_flight)
        self._emit(
            Event.WORKER_CRASHED, device=self.device, pid=proc.pid, reason=reason, in_flight=in_flight, suspects=names
        )
        for path in suspects:
            self.strikes[path] = self.strikes.get(path, 0) + 1
            if self.strikes[path] >= STRIKES and path not in self.quarantined:
                why = f"it was running in {self.strikes[path]} crashes of the device worker (last: {reason})"
                self.quarantined[path] = why
                self._emit(Event.WORKER_QUARANTINED, device=self.device, file=Path(path).name, reason=why)
        self._deaths[gen].set()  # the calls that were on it may answer now
        if was_running:
            # A worker that keeps dying soon after it came up waits longer each time.
            soon = time.monotonic() - self._up_since < STABLE_S
            self._backoff = min(self._backoff * 2, RESTART_MAX_S) if soon else RESTART_FIRST_S
            threading.Thread(
                target=self._bring_up, args=(self._backoff, True), name="worker-restart", daemon=True
            ).start()

    def _kill(self, gen: int, why: str) -> None:
        with self._lock:
            if self._gen != gen or self._proc is None:
                return
            self._killed.setdefault(gen, why)
            proc = self._proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)

    # ---------------------------------------------------------------- calls

    def _connection(self, gen: int, address: str, timeout: float) -> socket.socket:
        """This thread's connection to generation ``gen``'s worker (made on first use), bounded by
        ``timeout`` (``workerwire.bound``, set only when it changes)."""
        held: tuple[int, socket.socket, float] | None = getattr(self._local, "conn", None)
        if held is None or held[0] != gen:
            if held is not None:
                held[1].close()
            held = (gen, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), 0.0)
            self._local.conn = held
            held[1].connect(address)
        if held[2] != timeout:
            workerwire.bound(held[1], timeout)
            self._local.conn = (gen, held[1], timeout)
        return held[1]

    def _call(
        self,
        message: dict[str, Any],
        path: str | None,
        starting: int | None = None,
        timeout: float | None = None,
        wait: bool = True,
        frame: bytes | None = None,
        memo: workerwire.Memo | None = None,
    ) -> dict[str, Any]:
        """Send one frame on this thread's connection and wait for the reply. ``starting``: the
        generation being brought up (its reloads go before anyone else's calls). ``wait=False``:
        fail at once instead of waiting for a worker that is (re)starting. ``frame``: ``message``
        already encoded; ``memo``: replies seen before are not parsed again (then the reply is
        shared: read it only). Raises RuntimeFailure and its kinds."""
        timeout = timeout or self.watchdog_s
        deadline = time.monotonic() + timeout
        ident = threading.get_ident()
        bound = timeout  # the socket's bound: what is left of it after waiting for a start
        with self._lock:
            self._ensure_started()
            while starting is None and self._state != "running":
                left = deadline - time.monotonic()
                if self._state == "closed" or left <= 0 or not wait:
                    raise WorkerCrashed(f"the device worker of {self.device} is {self._state}, not running")
                self._changed.wait(left)
                bound = max(0.001, deadline - time.monotonic())
            if path is not None and path in self.quarantined:
                raise ModelQuarantined(f"quarantined: {self.quarantined[path]}")
            gen, address = self._gen, self._address
            if starting is not None and starting != gen:
                raise WorkerCrashed("the device worker died while it was being started")
            self._in_flight[ident] = (gen, path)
        try:
            try:
                sock = self._connection(gen, address, bound)
                sock.sendall(frame or workerwire.frame(message))
                reply = workerwire.recv(sock, memo)
            except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO/SO_SNDTIMEO ran out
                why = f"hung: no reply to {message['op']} in {timeout:g} s (the watchdog)"
                self._kill(gen, why)
                self._deaths[gen].wait(START_TIMEOUT_S)
                raise WorkerCrashed(f"the device worker {why}") from None
            except (workerwire.PeerGone, OSError):
                self._local.conn = None
                # Answered once the death is handled, so the next call waits for the new worker.
                self._deaths[gen].wait(START_TIMEOUT_S)
                reason = self._reasons.get(gen, "it ended")
                raise WorkerCrashed(f"the device worker died ({reason}) while this request ran on it") from None
        finally:
            with self._lock:
                self._in_flight.pop(ident, None)
        if not reply.get("ok"):
            if reply.get("kind") == "memory_full":
                raise DeviceMemoryFull(str(reply.get("message")), int(reply.get("networks_loaded", 0)))
            kind = DeviceLost if reply.get("kind") == "lost" else RuntimeFailure
            raise kind(str(reply.get("message")))
        return reply

    def _channel(self) -> workerwire.Channel:
        """This thread's arenas and repeating frames (made on first use)."""
        channel: workerwire.Channel | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = workerwire.Channel(workerwire.arena_path(f"{id(self):x}-{next(self._arena_ids)}"))
            with self._lock:
                self._arenas.extend(channel.arenas)
            self._local.channel = channel
        return channel

    def infer(self, key: str, path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        channel = self._channel()
        message, frame = channel.infer_call(key, inputs)
        return channel.outputs(self._call(message, path, frame=frame, memo=channel.memo))

    def load(self, frame: dict[str, Any]) -> dict[str, Any]:
        reply = self._call(dict(frame), str(frame["path"]))
        self._models[frame["key"]] = _Model(frame["key"], str(frame["path"]), frame)
        return reply

    def add_instance(self, key: str) -> int:
        model = self._models.get(key)
        if model is None:  # unloaded (removed, replaced) while the growth was on its way
            raise RuntimeFailure(f"model {key} is no longer loaded")
        reply = self._call({"op": "add_instance", "key": key}, model.path)
        model.instances = int(reply["instances"])
        return model.instances

    def unload(self, key: str) -> None:
        """Unload the model (not reloaded after a restart from now on). Never waits for a worker
        that is restarting (it may be called on the event loop): a dead worker holds nothing."""
        model = self._models.pop(key, None)
        if model is not None and self._state == "running":
            with contextlib.suppress(WorkerCrashed):
                self._call({"op": "unload", "key": key}, None, wait=False)

    def release(self, runtime: str) -> None:
        if self._state == "running":
            with contextlib.suppress(WorkerCrashed):
                self._call({"op": "release", "runtime": runtime}, None, wait=False)

    def call(self, message: dict[str, Any], path: str | None) -> dict[str, Any]:
        """One frame to the worker and its reply (see ``tenantd.workermain``'s ``op_*``)."""
        return self._call(message, path)

    def rss(self) -> int:
        """The worker's resident memory (started and running first, so that a load measured
        against it is charged for the model, not for the worker's interpreter): what a load or an
        instance grows. Blocks while the worker starts. Raises WorkerCrashed."""
        self._call({"op": "hello"}, None)
        proc = self._proc
        if proc is None:
            return 0
        try:
            return rss_bytes(proc.pid)
        except (OSError, psutil.Error):  # it ended just now; the next call says so
            return 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def status(self) -> dict[str, Any]:
        quarantined = sorted(Path(p).name for p in self.quarantined)
        return {"isolation": "process", "worker_state": self._state, "worker_pid": self.pid,
                "worker_python": self.python, "worker_python_version": self.python_version,
                "worker_crashes": self.crashes, "worker_restarts": self.restarts,
                "worker_last_crash": self.last_crash, "quarantined": quarantined}  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._state = "closed"
            self._changed.notify_all()
            proc, control = self._proc, self._control
            self._control = None
            arenas, self._arenas = self._arenas, []
        self._wake.set()
        if control is not None:
            control.close()  # the worker ends when its control socket does
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for arena in arenas:
            arena.close(unlink=True)
        shutil.rmtree(self._dir, ignore_errors=True)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class WorkerModel(LoadedModel):
    """A model loaded in the worker: each call is a frame to it."""

    def __init__(self, host: WorkerHost, key: str, path: str, reply: dict[str, Any]) -> None:
        self._host, self._key, self._path = host, key, path
        self.inputs = tuple(TensorSpec.from_wire(s) for s in reply["inputs"])
        self.outputs = tuple(TensorSpec.from_wire(s) for s in reply["outputs"])
        self.can_add_instances = bool(reply["can_add_instances"])  # type: ignore[misc]
        self.device_bytes = int(reply["device_bytes"])
        self.facts = dict(reply["facts"])
        self.max_batch = int(reply.get("max_batch", 1))

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self._host.infer(self._key, self._path, inputs)

    def add_instance(self) -> None:
        self.instances = self._host.add_instance(self._key)

    def unload(self) -> None:
        self._host.unload(self._key)


class WorkerRuntime(Runtime):
    """Runtime ``runtime`` (a registry name), run in the device's worker."""

    name = "worker"
    suffixes = ()
    # The runtime in the worker checks the file again (its Runtime.load), with its own format's rule.
    own_format = "the format of the runtime in the worker, checked there"
    _keys = itertools.count(1)

    def __init__(self, host: WorkerHost, runtime: str, device: str, num_threads: int = 1, slots: int = 1) -> None:
        super().__init__(device, num_threads, slots)
        self._host = host
        self.runtime = runtime
        self.target = runtime_target(runtime)

    def _load(self, source: bytes | Path) -> LoadedModel:
        if not isinstance(source, Path):
            raise RuntimeFailure("a device worker loads model files by path, not bytes")
        key = f"{next(self._keys)}:{source.name}"
        frame = {**self._frame("load"), "key": key, "path": str(source)}
        return WorkerModel(self._host, key, str(source), self._host.load(frame))

    def _frame(self, op: str) -> dict[str, Any]:
        return {
            "op": op,
            "runtime": self.runtime,
            "target": self.target,
            "device": self.device,
            "num_threads": self.num_threads,
            "slots": self.slots,
        }

    def prepare(self) -> None:
        """Have the runtime made in the worker (its library imported) before a load is measured."""
        self._host.call(self._frame("runtime"), None)

    def release(self) -> None:
        self._host.release(self.runtime)

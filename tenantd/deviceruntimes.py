"""Which runtimes the device has: the daemon's own Python's, or, when the device has a worker, the worker's.

A device's worker may run under an interpreter of its own (policy ``worker_python``): OpenVINO
2022.3, the last with the NCS2's MYRIAD plugin, has no wheels past Python 3.10, and on JetPack 4.6
TensorRT and pycuda exist only for the system's Python 3.6. There the daemon's Python lacks the
vendor package that the worker has, so with ``isolation = "process"`` the worker answers which
runtimes the device has (its ``runtimes`` op: each runtime's ``requires`` checked by the registry's
own rule in the worker's Python, and for a runtime about to be used, its adapter imported there:
version, device kinds). Submission's check, ``status``'s ``runtimes`` and the start-up log come
from that answer; an inline device keeps the registry's answer for the daemon's Python. Whether
the daemon's Python can also import a runtime (``in_daemon``) decides how a submission is probed:
in a throwaway process as before, or by a trial load in the worker (:mod:`tenantd.workerprobe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tenantd.errors import RuntimeFailure
from tenantd.executor import Executor
from tenantd.runtimes import (
    RuntimeNotAvailable,
    available_runtimes,
    check_device,
    device_kind,
    get_runtime_class,
    install_hint,
    registered_runtimes,
    runtime_requires,
    runtime_target,
)

log = logging.getLogger("tenantd")

# How long ``status`` waits for the worker's first answer (a worker still starting); then it says [].
FIRST_ANSWER_WAIT_S = 5.0


def _asked(runtime: str) -> dict[str, Any]:
    """What the worker needs to answer for ``runtime``: its requirements and its adapter."""
    return {"requires": list(runtime_requires(runtime)), "target": runtime_target(runtime)}


class DeviceRuntimes:
    """The runtimes of one device, asked of its worker where it has one."""

    def __init__(self, device: str, executor: Executor) -> None:
        self.device = device
        self._executor = executor
        # The worker's answers for runtimes it has, inspected (adapter imported): name -> answer.
        self._inspected: dict[str, dict[str, Any]] = {}
        self._listing: list[str] | None = None  # the worker's last full answer: installed runtimes
        self._first: asyncio.Future[None] | None = None  # the start-up's question to the worker

    @property
    def python(self) -> str | None:
        """The worker's interpreter, or None where the runtimes run in the daemon."""
        worker = self._executor.worker
        return None if worker is None else worker.python

    def in_daemon(self, runtime: str) -> bool:
        """Whether the daemon's own Python can import ``runtime`` (and so probe a model with it)."""
        try:
            get_runtime_class(runtime)
        except RuntimeNotAvailable:
            return False
        return True

    async def check(self, runtime: str) -> None:
        """Raise RuntimeNotAvailable, naming what to install and where, unless ``runtime`` can run
        on the device. Asks the worker (once per runtime it has) where there is one: RuntimeFailure
        when the worker does not answer."""
        if self._executor.worker is None:
            check_device(get_runtime_class(runtime), self.device)
            return
        answer = await self.inspect(runtime)
        if not answer["installed"]:
            why = answer.get("reason") or f"missing {', '.join(answer['missing'])}"
            raise RuntimeNotAvailable(
                f"runtime {runtime!r} is not installed in the worker's Python {self.python} ({why}); "
                f"install {install_hint(runtime)} there"
            )
        kinds = [str(k) for k in answer.get("device_kinds", [])]
        if kinds and device_kind(self.device) not in kinds:
            raise RuntimeNotAvailable(
                f"runtime {runtime!r} does not run on device {self.device!r} (it runs on: {', '.join(kinds)})"
            )

    async def inspect(self, runtime: str) -> dict[str, Any]:
        """The worker's answer for ``runtime``: installed, missing, and where installed its version,
        device kinds and ``import_bytes`` (what importing its adapter and library grew the worker
        by, measured under the executor's measure lock; 0 when the worker had imported it before)."""
        known = self._inspected.get(runtime)
        if known is not None:
            return known
        ask = {runtime: {**_asked(runtime), "inspect": True}}
        async with self._executor.measure_lock:
            before = await self._executor.rss()
            reply = await asyncio.get_running_loop().run_in_executor(None, self._ask, ask)
            grown = await self._executor.rss() - before
        answer = dict(reply["runtimes"][runtime])
        if answer["installed"]:
            answer["import_bytes"] = max(0, grown)
            self._inspected[runtime] = answer  # a runtime not installed is asked again next time
        return answer

    def _ask(self, runtimes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        worker = self._executor.worker
        assert worker is not None
        return worker.call({"op": "runtimes", "runtimes": runtimes}, None)

    def list_in_worker(self) -> list[str]:
        """Ask the worker which registered runtimes its Python has (nothing imported there);
        blocks while the worker starts. Raises RuntimeFailure."""
        answers = self._ask({name: _asked(name) for name in registered_runtimes()})["runtimes"]
        self._listing = sorted(name for name, answer in answers.items() if answer["installed"])
        return self._listing

    def start(self) -> None:
        """At start-up, on the daemon's loop: ask the worker (if any) on a thread, and log its answer."""
        self._first = asyncio.get_running_loop().run_in_executor(None, self.log_at_start)

    async def first_answer(self) -> None:
        """Wait (at most FIRST_ANSWER_WAIT_S) for the start-up's answer, so that ``status`` right
        after start-up lists the worker's runtimes rather than none."""
        if self._first is not None and not self._first.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._first), FIRST_ANSWER_WAIT_S)

    def available(self) -> list[str]:
        """The runtimes installed for the device (``status``): the daemon's; or the worker's, as it
        last answered (the start-up's answer, never waiting for a worker here: [] until then)."""
        if self._executor.worker is None:
            return available_runtimes()
        return list(self._listing or [])

    def log_at_start(self) -> None:
        """With a worker, log which runtimes it has (on a thread of its own: this waits for the
        worker to start). Inline, nothing: finding the libraries may run subprocesses (``status`` does)."""
        if self._executor.worker is None:
            return
        try:
            have = self.list_in_worker()
        except RuntimeFailure as exc:
            log.error("device %s: the worker (%s) did not say which runtimes it has: %s", self.device, self.python, exc)
            return
        lacking = [name for name in registered_runtimes() if name not in have]
        log.info(
            "device %s: runtimes installed in the worker's Python %s: %s%s",
            self.device,
            self.python,
            ", ".join(have) or "none",
            f" (not there: {', '.join(lacking)})" if lacking else "",
        )

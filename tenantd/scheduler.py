"""Per-device request scheduling: bounded per-tenant queues, round-robin across tenants, a fixed
number of execution slots, and deadlines.

Everything here runs on the daemon's event loop thread, so the queues need no locks; the slow part
(the inference) is awaited by the ``execute`` callback, which runs it on a worker thread. Fairness
is round-robin over tenants that have work waiting: a tenant's burst fills only its own queue, and
each tenant gets a turn before any gets a second one. A model runs one request at a time (runtime
interpreters are not re-entrant), so a tenant whose next request is for a busy model is passed
over for that turn rather than blocking a slot. Queues are bounded per tenant and per device, and a
request with a deadline that cannot start in time is dropped by a timer, not left to rot.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tenantd.protocol import ErrorCode

log = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} queue is full ({limit} requests waiting)")
        self.scope = scope
        self.limit = limit


@dataclass(eq=False)
class Job:
    """One queued request. ``payload`` is opaque to the scheduler."""

    tenant: str
    model: str
    payload: Any
    deadline: float | None = None  # loop.time() by which the job must start
    enqueued: float = 0.0  # loop.time() when queued
    started: float = 0.0  # loop.time() when a slot took it
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


Execute = Callable[[Job, int], Awaitable[None]]
Drop = Callable[[Job, ErrorCode, str], None]


class Scheduler:
    def __init__(
        self,
        slots: int,
        execute: Execute,
        drop: Drop,
        depth_per_tenant: int = 64,
        depth_total: int = 1024,
    ) -> None:
        self.slots = slots
        self._execute = execute
        self._drop = drop
        self.depth_per_tenant = depth_per_tenant
        self.depth_total = depth_total
        self._queues: dict[str, deque[Job]] = {}
        self._ring: deque[str] = deque()  # tenants with waiting jobs, next to serve at the left
        self._busy: set[str] = set()  # models running right now
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.queued = 0
        self.running = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._slot(i), name=f"slot-{i}") for i in range(self.slots)]

    async def drain(self, timeout: float) -> int:
        """Stop taking jobs, finish what is queued or running within ``timeout`` seconds; drop
        the rest with UNAVAILABLE. Returns how many were dropped."""
        self._closing = True
        self._wakeup.set()
        done, _ = await asyncio.wait(self._tasks, timeout=timeout) if self._tasks else (set(), set())
        dropped = 0
        for tenant in list(self._queues):
            queue = self._queues.pop(tenant)
            while queue:
                job = queue.popleft()
                self._cancel_timer(job)
                self._drop(job, ErrorCode.UNAVAILABLE, "the daemon shut down before this request could run")
                dropped += 1
        self._ring.clear()
        self.queued = 0
        for task in self._tasks:
            if task not in done:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return dropped

    # ---------------------------------------------------------------- queueing

    def submit(self, job: Job) -> None:
        if self._closing:
            raise QueueFull("device (shutting down)", 0)
        queue = self._queues.get(job.tenant)
        if queue is not None and len(queue) >= self.depth_per_tenant:
            raise QueueFull(f"tenant {job.tenant!r}", self.depth_per_tenant)
        if self.queued >= self.depth_total:
            raise QueueFull("device", self.depth_total)
        loop = asyncio.get_running_loop()
        job.enqueued = loop.time()
        if job.deadline is not None:
            job.timer = loop.call_at(job.deadline, self._expire, job)
        if queue is None:
            queue = self._queues[job.tenant] = deque()
        if not queue:
            self._ring.append(job.tenant)
        queue.append(job)
        self.queued += 1
        self._wakeup.set()

    def queue_depths(self) -> dict[str, int]:
        return {tenant: len(q) for tenant, q in self._queues.items() if q}

    def is_busy(self, model: str) -> bool:
        return model in self._busy

    def _expire(self, job: Job) -> None:
        queue = self._queues.get(job.tenant)
        if queue is None or job not in queue:
            return  # already started or dropped
        queue.remove(job)
        self.queued -= 1
        if not queue:
            self._ring.remove(job.tenant)
        job.timer = None
        self._drop(job, ErrorCode.DEADLINE_EXCEEDED, "the request could not start before its deadline")

    @staticmethod
    def _cancel_timer(job: Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def _take(self) -> Job | None:
        """The next job in round-robin order whose model is idle, or None."""
        for _ in range(len(self._ring)):
            tenant = self._ring[0]
            queue = self._queues[tenant]
            if queue[0].model in self._busy:
                self._ring.rotate(-1)
                continue
            job = queue.popleft()
            self._ring.popleft()
            if queue:
                self._ring.append(tenant)
            self.queued -= 1
            self._cancel_timer(job)
            return job
        return None

    async def _slot(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = self._take()
            if job is None:
                if self._closing and self.queued == 0:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job.started = loop.time()
            if job.deadline is not None and job.started > job.deadline:
                self._drop(job, ErrorCode.DEADLINE_EXCEEDED, "the request could not start before its deadline")
                continue
            self._busy.add(job.model)
            self.running += 1
            try:
                await self._execute(job, slot)
            except asyncio.CancelledError:
                # Drain timed out with this job still running: its requester still gets an answer.
                self._drop(job, ErrorCode.UNAVAILABLE, "the daemon shut down while this request ran")
                raise
            except Exception as exc:  # execute answers its own errors; this is a daemon bug
                log.exception("slot %d: unhandled error running a job of tenant %s", slot, job.tenant)
                self._drop(job, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            finally:
                self._busy.discard(job.model)
                self.running -= 1
                # A job passed over because its model was busy may be runnable now.
                self._wakeup.set()

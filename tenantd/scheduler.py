"""Per-device request scheduling: bounded per-tenant queues, round-robin across tenants, a fixed
number of execution slots, and deadlines.

Each execution slot is a thread. When a slot finishes a request it takes the next one itself,
under the scheduler's lock, and starts running it at once: the reply to the finished request goes
back to the event loop in parallel (through the ``execute`` callback) instead of sitting between
two inferences. Requests are queued, expired and drained from the event loop.

Which waiting request runs next is the discipline's choice. ``round-robin``: over tenants that
have work waiting, so a tenant's burst fills only its own queue and each tenant gets a turn before
any gets a second one. ``weighted-fair``: the same, but a tenant of weight w gets w turns in a row.
``swap-aware``: a tenant whose next request is for a model already loaded goes first, so a swapping
device switches less; a request passed over ``max_pass_over`` times goes first of all, so no tenant
starves. Each tenant's own requests always run in the order they came. A model runs as many requests
at once as it has instances (``instances(model)``: one interpreter each, as interpreters are not
re-entrant), so a tenant whose next request is for a model with every instance busy is passed over
for that turn rather than holding a slot. Queues are bounded per tenant and per
device; a request with a deadline that cannot start in time is dropped by a timer, never run late.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tenantd.errors import QueueFull
from tenantwire.errors import ErrorCode

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One queued request. ``payload`` is opaque to the scheduler. Times are time.monotonic()."""

    tenant: str
    model: str
    payload: Any
    deadline: float | None = None  # by when the job must start
    enqueued: float = 0.0
    started: float = 0.0
    passed_over: int = 0  # swap-aware: times another tenant's request went first
    # Set on the event loop when the daemon gave up waiting for this job (drain timeout): its
    # late result must not be answered a second time.
    abandoned: bool = False
    answered: bool = False  # set on the event loop by settle(), when its one reply goes out
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


# execute(job, slot) runs on the slot's thread. It owns answering the job; if it raises, the
# scheduler answers INTERNAL. drop(job, code, message) is always called on the event loop thread.
# Whoever answers a job calls settle(job) first and answers only if it returns True, so a job is
# answered once even when the drain gives up on it while its result is on the way.
# job_done(job) runs on the slot thread once the job's model is no longer busy.
Execute = Callable[[Job, int], None]
Drop = Callable[[Job, ErrorCode, str], None]
JobDone = Callable[[Job], None]


class Scheduler:
    def __init__(
        self,
        slots: int,
        execute: Execute,
        drop: Drop,
        depth_per_tenant: int = 64,
        depth_total: int = 1024,
        job_done: JobDone | None = None,
        discipline: str = "round-robin",
        weight: Callable[[str], int] = lambda tenant: 1,
        in_flight_limit: Callable[[str], int | None] = lambda tenant: None,
        loaded: Callable[[str], bool] = lambda model: True,
        max_pass_over: int = 8,
        instances: Callable[[str], int] = lambda model: 1,
    ) -> None:
        self.slots = slots
        self._execute = execute
        self._drop = drop
        self._job_done = job_done
        self.discipline = discipline
        self._weight = weight if discipline == "weighted-fair" else (lambda tenant: 1)
        self._in_flight_limit = in_flight_limit
        self._loaded = loaded
        self._instances = instances  # called with _cond held: must not take the scheduler's lock
        self.max_pass_over = max_pass_over
        self._turns_left: dict[str, int] = {}  # weighted-fair: turns the head tenant has left
        self.depth_per_tenant = depth_per_tenant
        self.depth_total = depth_total
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._queues: dict[str, deque[Job]] = {}
        self._ring: deque[str] = deque()  # tenants with waiting jobs, next to serve at the left
        self._busy: dict[str, int] = {}  # models running right now: how many calls each
        self._running: dict[int, Job] = {}  # slot -> job
        self._closing = False
        self.queued = 0
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    # ---------------------------------------------------------------- lifecycle (event loop)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._slot, args=(i,), name=f"tenantd-slot-{i}", daemon=True)
            for i in range(self.slots)
        ]
        for thread in self._threads:
            thread.start()

    async def drain(self, timeout: float) -> int:
        """Stop taking jobs and finish what is queued or running within ``timeout`` seconds;
        answer the rest with UNAVAILABLE. Returns how many queued jobs were dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        loop = asyncio.get_running_loop()
        give_up = time.monotonic() + timeout
        for thread in self._threads:
            await loop.run_in_executor(None, thread.join, max(0.0, give_up - time.monotonic()))
        with self._cond:
            left = [job for queue in self._queues.values() for job in queue]
            self._queues.clear()
            self._ring.clear()
            self._turns_left.clear()
            self.queued = 0
            stuck = list(self._running.values())
            self._cond.notify_all()  # slots waiting on a busy model may exit now
        for job in left:
            self._cancel_timer(job)
            self._drop(job, ErrorCode.UNAVAILABLE, "the daemon shut down before this request could run")
        for job in stuck:
            if job.answered:
                continue  # its reply went out just before the drain gave up
            job.abandoned = True
            self._drop(job, ErrorCode.UNAVAILABLE, "the daemon shut down while this request ran")
        return len(left)

    # ---------------------------------------------------------------- queueing (event loop)

    def submit(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closing:
                raise QueueFull("device (shutting down)", 0)
            queue = self._queues.get(job.tenant)
            if queue is not None and len(queue) >= self.depth_per_tenant:
                raise QueueFull(f"tenant {job.tenant!r}", self.depth_per_tenant)
            limit = self._in_flight_limit(job.tenant)
            if limit is not None:
                running = sum(1 for j in self._running.values() if j.tenant == job.tenant)
                if (len(queue) if queue else 0) + running >= limit:
                    raise QueueFull(f"tenant {job.tenant!r} in-flight", limit)
            if self.queued >= self.depth_total:
                raise QueueFull("device", self.depth_total)
            job.enqueued = time.monotonic()
            if queue is None:
                queue = self._queues[job.tenant] = deque()
            if not queue:
                self._ring.append(job.tenant)
            queue.append(job)
            self.queued += 1
            self._cond.notify()
        if job.deadline is not None:
            # Cancelled by settle() when the job is answered; if a slot takes the job first,
            # _expire returns at once.
            job.timer = loop.call_later(max(0.0, job.deadline - time.monotonic()), self._expire, job)

    def reconfigure(
        self, discipline: str, depth_per_tenant: int, depth_total: int, max_pass_over: int, weight: Callable[[str], int]
    ) -> None:
        """Apply a new policy's scheduling settings; waiting requests stay queued."""
        with self._cond:
            self.discipline = discipline
            self._weight = weight if discipline == "weighted-fair" else (lambda tenant: 1)
            self.depth_per_tenant = depth_per_tenant
            self.depth_total = depth_total
            self.max_pass_over = max_pass_over
            self._turns_left.clear()
            self._cond.notify_all()

    def settle(self, job: Job) -> bool:
        """On the event loop, before answering ``job``: False if it was answered already. Cancels
        its deadline timer, which would otherwise hold the request's inputs until the deadline."""
        if job.answered:
            return False
        job.answered = True
        self._cancel_timer(job)
        return True

    def queue_depths(self) -> dict[str, int]:
        with self._cond:
            return {tenant: len(q) for tenant, q in self._queues.items() if q}

    def is_busy(self, model: str) -> bool:
        with self._cond:
            return model in self._busy

    def _full(self, model: str) -> bool:
        """Every instance of ``model`` is running a call. Caller holds _cond."""
        running = self._busy.get(model, 0)
        return running > 0 and running >= self._instances(model)

    def instances_changed(self) -> None:
        """A model got more instances: a slot may take a job that waited for one."""
        with self._cond:
            self._cond.notify_all()

    def _expire(self, job: Job) -> None:
        with self._cond:
            if job.started:
                return
            queue = self._queues.get(job.tenant)
            if queue is None or job not in queue:
                return  # already started or dropped
            queue.remove(job)
            self.queued -= 1
            if not queue:
                self._ring.remove(job.tenant)
                self._turns_left.pop(job.tenant, None)
        job.timer = None
        self._drop(job, ErrorCode.DEADLINE_EXCEEDED, "the request could not start before its deadline")

    @staticmethod
    def _cancel_timer(job: Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    # ---------------------------------------------------------------- slots (slot threads)

    def _take(self) -> Job | None:
        """The next job by the discipline whose model is idle, or None. Caller holds _cond."""
        if self.discipline == "swap-aware":
            job = self._take_swap_aware()
            if job is not None:
                return job
        return self._take_in_turn()

    def _take_in_turn(self) -> Job | None:
        """Round-robin over tenants (weighted-fair: ``weight`` turns in a row each)."""
        for _ in range(len(self._ring)):
            tenant = self._ring[0]
            queue = self._queues[tenant]
            if self._full(queue[0].model):
                self._turns_left.pop(tenant, None)
                self._ring.rotate(-1)
                continue
            job = queue.popleft()
            self.queued -= 1
            turns = self._turns_left.pop(tenant, self._weight(tenant)) - 1
            if queue and turns > 0:
                self._turns_left[tenant] = turns  # stays at the head for its next turn
            else:
                self._ring.popleft()
                if queue:
                    self._ring.append(tenant)
            return job
        return None

    def _take_swap_aware(self) -> Job | None:
        """A head job passed over too often, else the first head job whose model is loaded."""
        heads = [(i, self._queues[t][0]) for i, t in enumerate(self._ring)]
        runnable = [(i, job) for i, job in heads if not self._full(job.model)]
        starving = [(i, job) for i, job in runnable if job.passed_over >= self.max_pass_over]
        chosen = starving[0] if starving else next(((i, j) for i, j in runnable if self._loaded(j.model)), None)
        if chosen is None:
            return None
        index, job = chosen
        for _, ahead in heads[:index]:
            ahead.passed_over += 1
        tenant = self._ring[index]
        del self._ring[index]
        queue = self._queues[tenant]
        queue.popleft()
        self.queued -= 1
        if queue:
            self._ring.append(tenant)
        return job

    def _to_loop(self, job: Job, code: ErrorCode, message: str) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._drop, job, code, message)
        except RuntimeError:  # the loop is closed: the daemon is gone, nobody to answer
            log.warning("could not answer a %s job of tenant %s: the event loop is closed", code.value, job.tenant)

    def _slot(self, slot: int) -> None:
        while True:
            with self._cond:
                job = self._take()
                while job is None:
                    if self._closing and self.queued == 0:
                        return
                    self._cond.wait()
                    job = self._take()
                self._busy[job.model] = self._busy.get(job.model, 0) + 1
                self._running[slot] = job
                job.started = time.monotonic()
            try:
                if job.deadline is not None and job.started > job.deadline:
                    self._to_loop(job, ErrorCode.DEADLINE_EXCEEDED, "the request could not start before its deadline")
                else:
                    self._execute(job, slot)
            except Exception as exc:
                log.exception("slot %d: unhandled error running a job of tenant %s", slot, job.tenant)
                self._to_loop(job, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            finally:
                with self._cond:
                    left = self._busy.pop(job.model) - 1
                    if left:
                        self._busy[job.model] = left
                    del self._running[slot]
                    # A job passed over because its model was busy may be runnable now.
                    self._cond.notify_all()
                if self._job_done is not None:
                    self._job_done(job)

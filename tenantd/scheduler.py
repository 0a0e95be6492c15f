"""Per-device request scheduling: bounded per-tenant queues, round-robin across tenants, a fixed
number of execution slots, and deadlines.

Each execution slot is a thread. When a slot finishes a request it takes the next one itself,
under the scheduler's lock, and starts running it at once: the reply to the finished request goes
back to the event loop in parallel (through the ``execute`` callback) instead of sitting between
two inferences. Requests are queued, expired and drained from the event loop.

Which waiting request runs next is the discipline's choice. ``round-robin``: over tenants that
have work waiting, so a tenant's burst fills only its own queue and each tenant gets a turn before
any gets a second one. ``weighted-fair``: the same, but a tenant of weight w gets w turns in a row.
``swap-aware``: a tenant whose next request is for a warm model goes first (``loaded(model)``:
loaded, and on a one-model cache such as the EdgeTPU's the model that ran last), so a device
switches less; a request passed over ``max_pass_over`` times goes first of all, so no tenant
starves. Each tenant's own requests always run in the order they came. A model runs as many requests
at once as it has instances (``instances(model)``: one interpreter each, as interpreters are not
re-entrant), so a tenant whose next request is for a model with every instance busy is passed over
for that turn rather than holding a slot. Queues are bounded per tenant and per
device; a request with a deadline that cannot start in time is dropped by a timer, never run late.

Dynamic batching (``batching(job)``: the most requests per call for the job's model, and how long
the oldest may wait for more): a slot that takes a batchable job takes with it the batchable jobs
of the same model queued right behind it in that tenant's queue (a model belongs to one tenant, so
a batch is one tenant's), and ``execute_batch`` runs them as one call. When fewer are queued than
the batch holds, the head job waits in its queue until it is ``max_queue_delay`` old (other
tenants' jobs run meanwhile), unless a deadline in it would pass first or the device is draining.
Fairness counts a batch as its requests: a tenant that took k in one turn owes k - 1 turns
(``weight`` per round under weighted-fair), which it gives up to other waiting tenants.
"""

from __future__ import annotations

import asyncio
import itertools
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
    batchable: bool = False  # may share a call with others of its model (every input one row)
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
# execute_batch(jobs, slot): as execute, for two or more jobs of one model run as one call.
ExecuteBatch = Callable[[list[Job], int], None]
# batching(job) -> (max batch, max queue delay in seconds) for the job's model; called under _cond.
Batching = Callable[[Job], tuple[int, float]]


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
        execute_batch: ExecuteBatch | None = None,
        batching: Batching = lambda job: (1, 0.0),
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
        self._execute_batch = execute_batch
        self._batching = batching if execute_batch is not None else (lambda job: (1, 0.0))
        self._owed: dict[str, int] = {}  # turns a tenant owes for the extra requests of its batches
        self._wake_at: float | None = None  # when the first batch waiting to fill is due (under _cond)
        self.batches: dict[int, int] = {}  # batch size -> calls run at that size (sizes above 1)
        self.max_pass_over = max_pass_over
        self._turns_left: dict[str, int] = {}  # weighted-fair: turns the head tenant has left
        self.depth_per_tenant = depth_per_tenant
        self.depth_total = depth_total
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._queues: dict[str, deque[Job]] = {}
        self._ring: deque[str] = deque()  # tenants with waiting jobs, next to serve at the left
        self._busy: dict[str, int] = {}  # models running right now: how many calls each
        self._running: dict[int, list[Job]] = {}  # slot -> the job (or batch) it runs
        self._closing = False
        self.queued = 0
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> int:
        return sum(len(jobs) for jobs in self._running.values())

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
            self._owed.clear()
            self.queued = 0
            stuck = [job for jobs in self._running.values() for job in jobs]
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
                running = sum(1 for jobs in self._running.values() for j in jobs if j.tenant == job.tenant)
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
            self._owed.clear()
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
                self._owed.pop(job.tenant, None)
        job.timer = None
        self._drop(job, ErrorCode.DEADLINE_EXCEEDED, "the request could not start before its deadline")

    @staticmethod
    def _cancel_timer(job: Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    # ---------------------------------------------------------------- slots (slot threads)

    def _take(self) -> list[Job] | None:
        """The next job by the discipline whose model is idle, with the jobs batched with it, or
        None. Caller holds _cond."""
        self._wake_at = None
        if self.discipline == "swap-aware":
            jobs = self._take_swap_aware()
            if jobs is not None:
                return jobs
        return self._take_in_turn()

    def _waits(self, queue: deque[Job]) -> bool:
        """The tenant's head job should wait for its batch to fill: it is batchable, fewer jobs of
        its model are queued behind it than a batch holds, it is younger than the queue delay, no
        deadline in the batch would pass before that, and the device is not draining. Caller holds
        _cond; notes when to look again in ``_wake_at``."""
        head = queue[0]
        if not head.batchable or self._closing:
            return False
        limit, delay = self._batching(head)
        if limit <= 1 or delay <= 0:
            return False
        batch = self._batch_behind(queue, limit)
        if len(batch) >= limit:
            return False
        due = head.enqueued + delay
        if time.monotonic() >= due or any(j.deadline is not None and j.deadline <= due for j in batch):
            return False
        self._wake_at = due if self._wake_at is None else min(self._wake_at, due)
        return True

    def _batch_behind(self, queue: deque[Job], limit: int) -> list[Job]:
        """The head job and the batchable jobs of its model right behind it, at most ``limit``."""
        head = queue[0]
        batch = [head]
        if head.batchable:
            for job in itertools.islice(queue, 1, limit):
                if job.model != head.model or not job.batchable:
                    break
                batch.append(job)
        return batch

    def _pop(self, tenant: str) -> list[Job]:
        """Take the tenant's head job and those batched with it off its queue; they owe turns."""
        queue = self._queues[tenant]
        limit = self._batching(queue[0])[0] if queue[0].batchable else 1
        jobs = self._batch_behind(queue, max(1, limit))
        for _ in jobs:
            queue.popleft()
        self.queued -= len(jobs)
        if len(jobs) > 1:
            self._owed[tenant] = self._owed.get(tenant, 0) + len(jobs) - 1
        return jobs

    def _owes(self, tenant: str) -> bool:
        """The tenant owes turns for its batches and another tenant has work it can run now: it
        gives up this turn (``weight`` of its debt). Caller holds _cond; ``tenant`` is at the
        ring's head."""
        owed = self._owed.get(tenant, 0)
        if owed <= 0:
            return False
        if len(self._ring) < 2:
            self._owed.pop(tenant, None)  # nobody to give the turns to: the debt lapses
            return False
        others = (self._queues[t] for t in self._ring if t != tenant)
        if not any(not self._full(q[0].model) and not self._waits(q) for q in others):
            return False  # nobody could take the turn now: giving it up would leave the slot idle
        left = owed - self._weight(tenant)
        if left > 0:
            self._owed[tenant] = left
        else:
            self._owed.pop(tenant, None)
        return True

    def _take_in_turn(self) -> list[Job] | None:
        """Round-robin over tenants (weighted-fair: ``weight`` turns in a row each); a batch of k
        uses k turns, the ones past the tenant's weight owed for later rounds."""
        for _ in range(len(self._ring)):
            tenant = self._ring[0]
            queue = self._queues[tenant]
            if tenant not in self._turns_left and self._owes(tenant):
                self._ring.rotate(-1)
                continue
            if self._full(queue[0].model) or self._waits(queue):
                self._turns_left.pop(tenant, None)
                self._ring.rotate(-1)
                continue
            jobs = self._pop(tenant)
            turns = self._turns_left.pop(tenant, self._weight(tenant)) - len(jobs)
            if turns < 0:
                self._owed[tenant] = -turns  # the batch's requests past this round's turns
            elif len(jobs) > 1:
                self._owed.pop(tenant, None)  # this round's turns covered them
            if queue and turns > 0:
                self._turns_left[tenant] = turns  # stays at the head for its next turn
            else:
                self._ring.popleft()
                if queue:
                    self._ring.append(tenant)
            return jobs
        return None

    def _take_swap_aware(self) -> list[Job] | None:
        """A head job passed over too often, else the first head job whose model is warm."""
        heads = [(i, self._queues[t][0]) for i, t in enumerate(self._ring)]
        runnable = [
            (i, job) for i, job in heads if not self._full(job.model) and not self._waits(self._queues[self._ring[i]])
        ]
        starving = [(i, job) for i, job in runnable if job.passed_over >= self.max_pass_over]
        chosen = starving[0] if starving else next(((i, j) for i, j in runnable if self._loaded(j.model)), None)
        if chosen is None:
            return None
        index, _ = chosen
        for _, ahead in heads[:index]:
            ahead.passed_over += 1
        tenant = self._ring[index]
        del self._ring[index]
        queue = self._queues[tenant]
        jobs = self._pop(tenant)
        self._owed.pop(tenant, None)  # swap-aware orders by residency, not by turns
        if queue:
            self._ring.append(tenant)
        return jobs

    def _to_loop(self, job: Job, code: ErrorCode, message: str) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._drop, job, code, message)
        except RuntimeError:  # the loop is closed: the daemon is gone, nobody to answer
            log.warning("could not answer a %s job of tenant %s: the event loop is closed", code.value, job.tenant)

    def _slot(self, slot: int) -> None:
        while True:
            with self._cond:
                jobs = self._take()
                while jobs is None:
                    if self._closing and self.queued == 0:
                        return
                    # A batch waiting to fill is due at _wake_at even if nothing else happens.
                    wake = self._wake_at
                    self._cond.wait(None if wake is None else max(0.0, wake - time.monotonic()))
                    jobs = self._take()
                job = jobs[0]
                self._busy[job.model] = self._busy.get(job.model, 0) + 1
                self._running[slot] = jobs
                started = time.monotonic()
                for each in jobs:
                    each.started = started
                if len(jobs) > 1:
                    self.batches[len(jobs)] = self.batches.get(len(jobs), 0) + 1
            try:
                late = [j for j in jobs if j.deadline is not None and started > j.deadline]
                for each in late:
                    self._to_loop(each, ErrorCode.DEADLINE_EXCEEDED, "the request could not start before its deadline")
                run = [j for j in jobs if j not in late]
                if len(run) > 1:
                    assert self._execute_batch is not None
                    self._execute_batch(run, slot)
                elif run:
                    self._execute(run[0], slot)
            except Exception as exc:
                log.exception("slot %d: unhandled error running a job of tenant %s", slot, job.tenant)
                for each in jobs:
                    self._to_loop(each, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
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

"""Unit tests for tenantd.scheduler with a fake ``execute`` (no runtime).

Execution slots are threads: ``execute`` runs on a slot thread, ``submit``/deadline timers/``drop``
run on the event loop thread. pytest-asyncio is not a dependency: every test runs its coroutine
with ``asyncio.run``. Tests wait on events and futures, never on wall-clock sleeps; the timeouts
(``GUARD_S``) only keep a scheduler bug from turning into a hang. Every test drains its scheduler,
and a fixture checks that no slot thread outlives its test.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, ClassVar

import pytest

from tenantd.scheduler import Job, QueueFull, Scheduler
from tenantwire.errors import ErrorCode

GUARD_S = 5.0  # upper bound on any single wait; generous, only hit if the scheduler hangs


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a test coroutine; fail on errors raised in loop callbacks (which asyncio only logs)."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        await asyncio.wait_for(factory(), timeout=4 * GUARD_S)

    asyncio.run(main())
    assert [context.get("message") for context in errors] == []


async def until(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, timeout=GUARD_S)


async def joined(sched: Scheduler) -> None:
    """Wait (off the loop) for the scheduler's slot threads to exit."""

    def join() -> None:
        for thread in sched._threads:
            thread.join(GUARD_S)

    await asyncio.to_thread(join)
    assert not any(thread.is_alive() for thread in sched._threads)


class Fake:
    """Records what the scheduler does. Jobs' payloads are string labels. Create it on the loop.

    Jobs whose label is in ``gated`` block their slot thread until ``release(label)``; others finish
    as soon as they start. ``fail`` labels raise from execute. A job that finishes posts its
    "reply" to the loop (``replied``) as the daemon's execute does, unless it was abandoned.

    Slot-thread state is guarded by ``lock``; ``dropped``/``replied`` and the futures live on the
    loop thread. Misuse of threads is recorded in ``wrong_thread`` and checked after every test.
    """

    instances: ClassVar[list[Fake]] = []

    def __init__(self, gated: Iterable[str] = (), fail: Iterable[str] = ()) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.gated = frozenset(gated)
        self.fail = frozenset(fail)
        self.lock = threading.Lock()
        # Guarded by lock (written on slot threads).
        self.started: list[str] = []
        self.finished: list[str] = []
        self.slots_used: dict[str, int] = {}
        self.threads_used: dict[str, str] = {}
        self.running = 0
        self.max_running = 0
        self.running_per_model: Counter[str] = Counter()
        self.max_per_model: Counter[str] = Counter()
        self.abandoned_seen: list[str] = []
        self.gate_timeouts: list[str] = []
        self.wrong_thread: list[str] = []
        self._gates: dict[str, threading.Event] = {}
        self._started_events: dict[str, threading.Event] = {}
        # Loop thread only.
        self.dropped: list[tuple[str, ErrorCode, str]] = []
        self.replied: list[str] = []
        self._happened: dict[tuple[str, str], Any] = {}
        self._waiters: dict[tuple[str, str], asyncio.Future[Any]] = {}
        Fake.instances.append(self)

    # ------------------------------------------------------------------ control (any thread)

    def _gate(self, label: str) -> threading.Event:
        with self.lock:
            return self._gates.setdefault(label, threading.Event())

    def release(self, label: str) -> None:
        self._gate(label).set()

    def started_event(self, label: str) -> threading.Event:
        """Set on the slot thread as soon as ``label`` starts: usable while the loop is blocked."""
        with self.lock:
            return self._started_events.setdefault(label, threading.Event())

    # ------------------------------------------------------------------ waiting (loop thread)

    def _signal(self, kind: str, label: str, value: Any = None) -> None:
        key = (kind, label)
        self._happened.setdefault(key, value)
        fut = self._waiters.get(key)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def future(self, kind: str, label: str) -> asyncio.Future[Any]:
        key = (kind, label)
        fut = self._waiters.get(key)
        if fut is None:
            fut = self._waiters[key] = self.loop.create_future()
            if key in self._happened:
                fut.set_result(self._happened[key])
        return fut

    def started_future(self, label: str) -> asyncio.Future[None]:
        return self.future("started", label)

    def finished_future(self, label: str) -> asyncio.Future[None]:
        """Resolves once execute for ``label`` has returned or raised (as seen from the loop)."""
        return self.future("finished", label)

    def dropped_future(self, label: str) -> asyncio.Future[tuple[ErrorCode, str]]:
        return self.future("dropped", label)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed: the test is over and nobody is waiting
            pass

    def _reply(self, label: str) -> None:
        self.replied.append(label)
        self._signal("replied", label)

    # ------------------------------------------------------------------ the scheduler's callbacks

    def execute(self, job: Job, slot: int) -> None:
        label = job.payload
        with self.lock:
            if threading.get_ident() == self.loop_thread:
                self.wrong_thread.append(f"execute {label} on the loop thread")
            self.started.append(label)
            self.slots_used[label] = slot
            self.threads_used[label] = threading.current_thread().name
            self.running += 1
            self.running_per_model[job.model] += 1
            self.max_running = max(self.max_running, self.running)
            self.max_per_model[job.model] = max(self.max_per_model[job.model], self.running_per_model[job.model])
        self.started_event(label).set()
        self._post(self._signal, "started", label)
        try:
            if label in self.fail:
                raise RuntimeError(f"boom in {label}")
            if label in self.gated and not self._gate(label).wait(GUARD_S):
                with self.lock:
                    self.gate_timeouts.append(label)
            with self.lock:
                self.finished.append(label)
                if job.abandoned:
                    self.abandoned_seen.append(label)
            if not job.abandoned:
                self._post(self._reply, label)
        finally:
            with self.lock:
                self.running -= 1
                self.running_per_model[job.model] -= 1
            self._post(self._signal, "finished", label)

    def drop(self, job: Job, code: ErrorCode, message: str) -> None:
        if threading.get_ident() != self.loop_thread:
            with self.lock:
                self.wrong_thread.append(f"drop {job.payload} off the loop thread")
        self.dropped.append((job.payload, code, message))
        self._signal("dropped", job.payload, (code, message))


def job(tenant: str, model: str, label: str, deadline: float | None = None) -> Job:
    return Job(tenant=tenant, model=model, payload=label, deadline=deadline)


@pytest.fixture(autouse=True)
def _hygiene() -> Iterator[None]:
    """No slot thread outlives its test; no fake saw a callback on the wrong thread."""
    before = set(threading.enumerate())
    Fake.instances.clear()
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.name.startswith("tenantd-slot-")]
    for thread in leaked:
        thread.join(GUARD_S)
    assert [t.name for t in leaked if t.is_alive()] == []
    for fake in Fake.instances:
        assert fake.wrong_thread == []
        assert fake.gate_timeouts == []
    Fake.instances.clear()


# --------------------------------------------------------------------------- fairness


def test_round_robin_interleaves_tenants_with_one_slot() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        # Distinct models so model-busy rules play no part; only fairness decides the order.
        for i in range(6):
            sched.submit(job("A", f"a{i}", f"A{i}"))
        for i in range(2):
            sched.submit(job("B", f"b{i}", f"B{i}"))
        assert sched.queue_depths() == {"A": 6, "B": 2}
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["A0", "B0", "A1", "B1", "A2", "A3", "A4", "A5"]
        assert fake.dropped == []
        assert set(fake.slots_used.values()) == {0}
        assert set(fake.threads_used.values()) == {"tenantd-slot-0"}
        # Every reply reached the loop (drain returns only after the slot thread exited, and the
        # replies were posted before that; one loop turn delivers them).
        await asyncio.sleep(0)
        assert fake.replied == fake.started

    run(main)


def test_round_robin_with_same_model_per_tenant() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        for i in range(6):
            sched.submit(job("A", "ma", f"A{i}"))
        for i in range(2):
            sched.submit(job("B", "mb", f"B{i}"))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert [label[0] for label in fake.started] == list("ABABAAAA")
        # Within a tenant, FIFO.
        assert [x for x in fake.started if x[0] == "A"] == [f"A{i}" for i in range(6)]

    run(main)


def test_three_tenants_each_get_a_turn_before_any_gets_a_second() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        for tenant, n in (("A", 3), ("B", 3), ("C", 1)):
            for i in range(n):
                sched.submit(job(tenant, f"{tenant}{i}", f"{tenant}{i}"))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["A0", "B0", "C0", "A1", "B1", "A2", "B2"]

    run(main)


# --------------------------------------------------------------------------- queue limits


def test_per_tenant_depth_limit() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop, depth_per_tenant=2, depth_total=100)
        sched.submit(job("A", "m", "A0"))
        sched.submit(job("A", "m", "A1"))
        with pytest.raises(QueueFull) as info:
            sched.submit(job("A", "m", "A2"))
        assert "A" in info.value.scope
        assert info.value.scope.startswith("tenant")
        assert info.value.limit == 2
        assert "full" in str(info.value)
        # Other tenants are unaffected.
        sched.submit(job("B", "m", "B0"))
        sched.submit(job("B", "m", "B1"))
        assert sched.queue_depths() == {"A": 2, "B": 2}
        assert sched.queued == 4
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert sorted(fake.started) == ["A0", "A1", "B0", "B1"]

    run(main)


def test_per_tenant_depth_frees_up_when_jobs_start() -> None:
    async def main() -> None:
        fake = Fake(gated={"A0"})
        sched = Scheduler(1, fake.execute, fake.drop, depth_per_tenant=1)
        sched.submit(job("A", "m", "A0"))
        sched.start()
        await until(fake.started_future("A0"))
        # A0 is running, not waiting: A may queue one more.
        sched.submit(job("A", "m", "A1"))
        with pytest.raises(QueueFull) as info:
            sched.submit(job("A", "m", "A2"))
        assert info.value.scope == "tenant 'A'"
        fake.release("A0")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["A0", "A1"]

    run(main)


def test_total_depth_limit() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop, depth_per_tenant=10, depth_total=3)
        sched.submit(job("A", "m", "A0"))
        sched.submit(job("B", "m", "B0"))
        sched.submit(job("C", "m", "C0"))
        with pytest.raises(QueueFull) as info:
            sched.submit(job("D", "m", "D0"))
        assert info.value.scope == "device"
        assert info.value.limit == 3
        with pytest.raises(QueueFull) as info:
            sched.submit(job("A", "m", "A1"))
        assert info.value.scope == "device"
        assert sched.queue_depths() == {"A": 1, "B": 1, "C": 1}
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert sorted(fake.started) == ["A0", "B0", "C0"]

    run(main)


def test_submit_after_drain_is_refused() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        with pytest.raises(QueueFull) as info:
            sched.submit(job("A", "m", "late"))
        assert "shutting down" in info.value.scope
        assert fake.started == []
        assert sched.queued == 0

    run(main)


# --------------------------------------------------------------------------- deadlines


def test_job_past_its_deadline_while_queued_is_dropped_not_run() -> None:
    async def main() -> None:
        fake = Fake(gated={"blocker"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m1", "blocker"))
        late = job("B", "m2", "late", deadline=time.monotonic() + 0.02)
        sched.submit(late)
        assert late.timer is not None
        sched.submit(job("C", "m3", "patient"))
        sched.start()
        await until(fake.started_future("blocker"))

        # The only slot is held by the blocker, so the deadline timer on the loop drops it.
        code, message = await until(fake.dropped_future("late"))
        assert code is ErrorCode.DEADLINE_EXCEEDED
        assert "deadline" in message
        assert late.timer is None
        assert late.started == 0.0  # no slot ever took it
        assert sched.queue_depths() == {"C": 1}
        assert sched.queued == 1

        fake.release("blocker")
        await until(fake.started_future("patient"))
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["blocker", "patient"]
        assert [d[0] for d in fake.dropped] == ["late"]

    run(main)


def test_job_whose_deadline_passed_when_a_slot_takes_it_is_dropped_not_run() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        late = job("A", "m1", "late", deadline=time.monotonic() - 1.0)
        sched.submit(late)
        sched.submit(job("B", "m2", "next"))
        sched.start()
        # Block the loop thread (no await) until the slot has moved past "late" to "next": the
        # deadline timer cannot fire, so it is the slot that finds the expired job.
        assert fake.started_event("next").wait(GUARD_S)
        assert late.started != 0.0  # a slot took it

        code, message = await until(fake.dropped_future("late"))
        assert code is ErrorCode.DEADLINE_EXCEEDED
        assert "deadline" in message
        assert await until(sched.drain(GUARD_S)) == 0
        await asyncio.sleep(0)  # let the (now pointless) timer run: it must not answer again
        assert fake.started == ["next"]
        assert [d[0] for d in fake.dropped] == ["late"]
        assert fake.replied == ["next"]

    run(main)


def test_job_with_deadline_that_starts_in_time_runs() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        before = time.monotonic()
        ontime = job("A", "m", "ontime", deadline=before + 60)
        sched.submit(ontime)
        assert before <= ontime.enqueued <= time.monotonic()
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["ontime"]
        assert ontime.enqueued <= ontime.started <= time.monotonic()
        assert fake.dropped == []

    run(main)


def test_expired_job_in_middle_of_tenant_queue_keeps_round_robin() -> None:
    async def main() -> None:
        fake = Fake(gated={"blocker"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("X", "mx", "blocker"))
        sched.submit(job("A", "a0", "A0"))
        sched.submit(job("A", "a1", "A1-late", deadline=time.monotonic() + 0.02))
        sched.submit(job("A", "a2", "A2"))
        sched.submit(job("B", "b0", "B0"))
        sched.start()
        await until(fake.started_future("blocker"))
        code, _ = await until(fake.dropped_future("A1-late"))
        assert code is ErrorCode.DEADLINE_EXCEEDED
        assert sched.queue_depths() == {"A": 2, "B": 1}
        fake.release("blocker")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["blocker", "A0", "B0", "A2"]

    run(main)


# --------------------------------------------------------------------------- models and slots


def test_same_model_never_runs_concurrently_even_with_two_slots() -> None:
    async def main() -> None:
        fake = Fake(gated={"A-m1", "B-m1", "A-m2"})
        sched = Scheduler(2, fake.execute, fake.drop)
        sched.submit(job("A", "m1", "A-m1"))
        sched.submit(job("B", "m1", "B-m1"))
        sched.submit(job("A", "m2", "A-m2"))
        sched.start()
        # The second slot passes over B's job (m1 is busy) and takes A's m2 job instead.
        await until(fake.started_future("A-m1"))
        await until(fake.started_future("A-m2"))
        assert sched.is_busy("m1")
        assert sched.is_busy("m2")
        assert sched.running == 2
        assert "B-m1" not in fake.started
        assert sched.queue_depths() == {"B": 1}

        fake.release("A-m1")
        await until(fake.started_future("B-m1"))
        assert fake.max_per_model["m1"] == 1
        fake.release("B-m1")
        fake.release("A-m2")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.max_per_model["m1"] == 1
        assert fake.max_running == 2
        assert sorted(fake.finished) == ["A-m1", "A-m2", "B-m1"]
        assert not sched.is_busy("m1")
        assert not sched.is_busy("m2")
        assert sched.running == 0

    run(main)


def test_two_jobs_for_one_model_are_serialised_on_two_slots() -> None:
    async def main() -> None:
        fake = Fake(gated={"j1", "j2"})
        sched = Scheduler(2, fake.execute, fake.drop)
        sched.submit(job("A", "m", "j1"))
        sched.submit(job("B", "m", "j2"))
        sched.start()
        await until(fake.started_future("j1"))
        # Prove the idle slot has looked at the queue while j2 waits: a job for another model,
        # behind j2 in round-robin order, runs to completion on it, and j2 is still queued.
        sched.submit(job("C", "p", "probe"))
        await until(fake.finished_future("probe"))
        assert fake.started == ["j1", "probe"]
        assert sched.queue_depths() == {"B": 1}
        assert sched.is_busy("m")
        fake.release("j1")
        await until(fake.started_future("j2"))
        fake.release("j2")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.max_per_model["m"] == 1
        assert fake.finished == ["probe", "j1", "j2"]

    run(main)


def test_different_models_run_concurrently_on_two_slots() -> None:
    async def main() -> None:
        fake = Fake(gated={"x", "y"})
        sched = Scheduler(2, fake.execute, fake.drop)
        sched.submit(job("A", "m1", "x"))
        sched.submit(job("A", "m2", "y"))
        sched.start()
        # Both start while neither has been released: they are running at the same time.
        await until(fake.started_future("x"))
        await until(fake.started_future("y"))
        assert fake.running == 2
        assert sched.running == 2
        assert {fake.slots_used["x"], fake.slots_used["y"]} == {0, 1}
        assert {fake.threads_used["x"], fake.threads_used["y"]} == {"tenantd-slot-0", "tenantd-slot-1"}
        fake.release("x")
        fake.release("y")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.max_running == 2

    run(main)


def test_one_slot_never_runs_two_jobs_at_once() -> None:
    async def main() -> None:
        fake = Fake(gated={"x"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m1", "x"))
        sched.submit(job("B", "m2", "y"))
        sched.start()
        await until(fake.started_future("x"))
        # The only slot thread is blocked inside x: y can only wait.
        assert fake.started == ["x"]
        assert sched.queue_depths() == {"B": 1}
        assert sched.running == 1
        fake.release("x")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["x", "y"]
        assert fake.max_running == 1

    run(main)


def test_slot_takes_its_next_job_itself_without_the_event_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = Fake(gated={"j1"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m", "j1"))
        sched.submit(job("A", "m", "j2"))
        sched.start()
        await until(fake.started_future("j1"))

        seen: dict[str, Any] = {}
        blocked: asyncio.Future[None] = loop.create_future()

        def block_the_loop() -> None:
            # A loop callback that holds the loop thread while the slot finishes j1: j2 must
            # still start, before j1's reply (posted to the loop) has been delivered.
            fake.release("j1")
            seen["j2 started"] = fake.started_event("j2").wait(GUARD_S)
            seen["replied meanwhile"] = list(fake.replied)
            blocked.set_result(None)

        loop.call_soon(block_the_loop)
        await until(blocked)
        assert seen == {"j2 started": True, "replied meanwhile": []}

        assert await until(sched.drain(GUARD_S)) == 0
        await until(fake.future("replied", "j2"))
        assert fake.replied == ["j1", "j2"]
        assert fake.started == ["j1", "j2"]
        assert fake.threads_used["j1"] == fake.threads_used["j2"] == "tenantd-slot-0"
        assert fake.max_per_model["m"] == 1

    run(main)


# --------------------------------------------------------------------------- drain


def test_drain_finishes_queued_work_and_returns_zero() -> None:
    async def main() -> None:
        fake = Fake(gated={"first"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m", "first"))
        for i in range(4):
            sched.submit(job("B", f"m{i}", f"B{i}"))
        sched.start()
        await until(fake.started_future("first"))
        drain = asyncio.create_task(sched.drain(GUARD_S))
        await asyncio.sleep(0)  # the drain task runs up to its first wait
        assert not drain.done()  # still waiting on the running job
        with pytest.raises(QueueFull):
            sched.submit(job("C", "m", "during-drain"))
        fake.release("first")
        assert await until(drain) == 0
        assert fake.finished == ["first", "B0", "B1", "B2", "B3"]
        assert fake.dropped == []
        assert sched.queue_depths() == {}
        assert sched.queued == 0
        assert sched.running == 0

    run(main)


def test_drain_timeout_drops_remaining_queued_jobs_with_unavailable() -> None:
    async def main() -> None:
        fake = Fake(gated={"stuck"})
        sched = Scheduler(1, fake.execute, fake.drop)
        stuck = job("A", "m", "stuck")
        sched.submit(stuck)
        q1 = job("A", "m", "q1")
        sched.submit(q1)
        q2 = job("B", "m2", "q2", deadline=time.monotonic() + 60)
        sched.submit(q2)
        assert q2.timer is not None
        sched.start()
        await until(fake.started_future("stuck"))

        dropped = await until(sched.drain(0.05))

        assert dropped == 2  # the queued ones; the running one is abandoned and answered too
        assert sorted(d[0] for d in fake.dropped) == ["q1", "q2", "stuck"]
        assert all(code is ErrorCode.UNAVAILABLE for _, code, _ in fake.dropped)
        assert stuck.abandoned
        assert not q1.abandoned
        assert not q2.abandoned
        assert fake.started == ["stuck"]
        assert fake.finished == []
        assert sched.queue_depths() == {}
        assert sched.queued == 0
        # The dropped job's deadline timer is cancelled, so it cannot fire a second answer.
        assert q2.timer is None

        # The stuck job finishes late: the slot thread then exits without running anything else,
        # and nothing answers the abandoned job a second time.
        fake.release("stuck")
        await until(fake.finished_future("stuck"))
        await joined(sched)
        await asyncio.sleep(0)
        assert fake.abandoned_seen == ["stuck"]
        assert fake.started == ["stuck"]
        assert fake.replied == []
        assert len(fake.dropped) == 3
        assert sched.running == 0

    run(main)


def test_drain_with_nothing_started_drops_everything() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m", "a"))
        sched.submit(job("B", "m", "b"))
        # start() never called: nothing can run.
        assert await until(sched.drain(0.01)) == 2
        assert fake.started == []
        assert sorted((d[0], d[1]) for d in fake.dropped) == [
            ("a", ErrorCode.UNAVAILABLE),
            ("b", ErrorCode.UNAVAILABLE),
        ]

    run(main)


# --------------------------------------------------------------------------- failures


def test_execute_that_raises_is_dropped_as_internal_and_slot_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fake = Fake(fail={"bad"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m", "bad"))
        sched.submit(job("A", "m", "good1"))
        sched.submit(job("B", "m2", "good2"))
        sched.start()
        code, message = await until(fake.dropped_future("bad"))
        assert code is ErrorCode.INTERNAL
        assert "RuntimeError" in message
        await until(fake.started_future("good1"))
        await until(fake.started_future("good2"))
        assert await until(sched.drain(GUARD_S)) == 0
        # Round robin still holds after the failure: B had a turn before A's second job.
        assert fake.finished == ["good2", "good1"]
        assert [d[0] for d in fake.dropped] == ["bad"]
        # The same slot thread served on after the failure.
        assert fake.threads_used["good1"] == fake.threads_used["good2"] == fake.threads_used["bad"]
        assert not sched.is_busy("m")
        assert sched.running == 0

    with caplog.at_level(logging.ERROR, logger="tenantd.scheduler"):
        run(main)
    assert any("tenant A" in r.getMessage() and r.exc_info is not None for r in caplog.records)


# --------------------------------------------------------------------------- introspection


def test_queue_depths_reflect_waiting_jobs() -> None:
    async def main() -> None:
        fake = Fake(gated={"A0"})
        sched = Scheduler(1, fake.execute, fake.drop)
        assert sched.queue_depths() == {}
        for i in range(3):
            sched.submit(job("A", f"a{i}", f"A{i}"))
        sched.submit(job("B", "b", "B0"))
        assert sched.queue_depths() == {"A": 3, "B": 1}
        assert sched.queued == 4

        sched.start()
        await until(fake.started_future("A0"))
        # A0 is running, not waiting.
        assert sched.queue_depths() == {"A": 2, "B": 1}
        assert sched.queued == 3
        assert sched.running == 1
        assert sched.is_busy("a0")

        fake.release("A0")
        assert await until(sched.drain(GUARD_S)) == 0
        assert sched.queue_depths() == {}
        assert sched.queued == 0
        assert sched.running == 0
        assert fake.started == ["A0", "B0", "A1", "A2"]

    run(main)


# --------------------------------------------------------------------------- disciplines and limits


def test_weighted_fair_gives_each_tenant_its_weight_in_turns() -> None:
    async def main() -> None:
        fake = Fake()
        weights = {"A": 2, "B": 1}
        sched = Scheduler(1, fake.execute, fake.drop, discipline="weighted-fair", weight=weights.__getitem__)
        for i in range(6):
            sched.submit(job("A", f"a{i}", f"A{i}"))
        for i in range(3):
            sched.submit(job("B", f"b{i}", f"B{i}"))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["A0", "A1", "B0", "A2", "A3", "B1", "A4", "A5", "B2"]

    run(main)


def test_weights_are_ignored_under_round_robin() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop, discipline="round-robin", weight=lambda t: 5)
        for i in range(2):
            sched.submit(job("A", f"a{i}", f"A{i}"))
            sched.submit(job("B", f"b{i}", f"B{i}"))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["A0", "B0", "A1", "B1"]

    run(main)


def test_swap_aware_serves_loaded_models_first_within_the_pass_over_bound() -> None:
    async def main() -> None:
        fake = Fake()
        # Model "hot" is loaded; "cold" is not. B's request waits at most two pass-overs.
        sched = Scheduler(
            1, fake.execute, fake.drop, discipline="swap-aware", loaded=lambda m: m == "hot", max_pass_over=2
        )
        sched.submit(job("B", "cold", "B0"))
        for i in range(4):
            sched.submit(job("A", "hot", f"A{i}"))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        # A's loaded model goes first twice; then B's request has been passed over twice and runs.
        assert fake.started == ["A0", "A1", "B0", "A2", "A3"]

    run(main)


def test_swap_aware_falls_back_to_round_robin_when_nothing_is_loaded() -> None:
    async def main() -> None:
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop, discipline="swap-aware", loaded=lambda m: False)
        for i in range(2):
            sched.submit(job("A", f"a{i}", f"A{i}"))
            sched.submit(job("B", f"b{i}", f"B{i}"))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["A0", "B0", "A1", "B1"]

    run(main)


def test_in_flight_limit_counts_queued_and_running() -> None:
    async def main() -> None:
        fake = Fake(gated={"A0"})
        sched = Scheduler(1, fake.execute, fake.drop, in_flight_limit=lambda t: 2 if t == "A" else None)
        sched.start()
        sched.submit(job("A", "m", "A0"))
        await until(fake.started_future("A0"))
        sched.submit(job("A", "m", "A1"))  # one running + one queued = 2
        with pytest.raises(QueueFull) as full:
            sched.submit(job("A", "m", "A2"))
        assert "in-flight" in full.value.scope and full.value.limit == 2
        sched.submit(job("B", "m2", "B0"))  # other tenants are not limited by A's quota
        fake.release("A0")
        assert await until(sched.drain(GUARD_S)) == 0
        assert sorted(fake.started) == ["A0", "A1", "B0"]

    run(main)


# --------------------------------------------------------------------------- instances


def test_a_model_with_two_instances_runs_on_both_slots_at_once() -> None:
    async def main() -> None:
        fake = Fake(gated={"j1", "j2", "j3"})
        sched = Scheduler(2, fake.execute, fake.drop, instances=lambda model: 2 if model == "m" else 1)
        for label in ("j1", "j2", "j3"):
            sched.submit(job("A", "m", label))
        sched.start()
        # Both start while neither has been released: two calls of one model at the same time.
        await until(fake.started_future("j1"))
        await until(fake.started_future("j2"))
        assert fake.running_per_model["m"] == 2
        assert {fake.slots_used["j1"], fake.slots_used["j2"]} == {0, 1}
        assert sched.queue_depths() == {"A": 1}  # j3 waits for a slot
        for label in ("j1", "j2"):
            fake.release(label)
        fake.release("j3")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.max_per_model["m"] == 2
        assert fake.started == ["j1", "j2", "j3"]  # one tenant's requests in the order they came

    run(main)


def test_instances_bound_concurrency_below_the_slots() -> None:
    async def main() -> None:
        fake = Fake(gated={"j1", "j2", "j3"})
        sched = Scheduler(3, fake.execute, fake.drop, instances=lambda model: 2)
        for label in ("j1", "j2", "j3"):
            sched.submit(job("A", "m", label))
        sched.start()
        await until(fake.started_future("j1"))
        await until(fake.started_future("j2"))
        # The third slot is free but both instances are busy: a job for another model, queued
        # behind j3, runs on it while j3 waits.
        sched.submit(job("B", "p", "probe"))
        await until(fake.finished_future("probe"))
        assert "j3" not in fake.started
        fake.release("j1")
        await until(fake.started_future("j3"))
        fake.release("j2")
        fake.release("j3")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.max_per_model["m"] == 2

    run(main)


def test_more_instances_let_a_waiting_job_start() -> None:
    async def main() -> None:
        fake = Fake(gated={"j1", "j2"})
        count = {"m": 1}
        sched = Scheduler(2, fake.execute, fake.drop, instances=lambda model: count[model])
        sched.submit(job("A", "m", "j1"))
        sched.submit(job("A", "m", "j2"))
        sched.start()
        await until(fake.started_future("j1"))
        assert sched.queue_depths() == {"A": 1}
        count["m"] = 2  # an instance was added (the residency's background growth)
        sched.instances_changed()
        await until(fake.started_future("j2"))  # while j1 still runs
        assert fake.running_per_model["m"] == 2
        fake.release("j1")
        fake.release("j2")
        assert await until(sched.drain(GUARD_S)) == 0

    run(main)


def test_tenants_still_take_turns_on_a_model_with_instances() -> None:
    async def main() -> None:
        # A floods its model; B asks twice. With two instances per model and one slot's worth of
        # turns each, B's requests do not wait behind A's backlog: round-robin holds.
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop, instances=lambda model: 2)
        for i in range(6):
            sched.submit(job("A", "ma", f"A{i}"))
        for i in range(2):
            sched.submit(job("B", "mb", f"B{i}"))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert [label[0] for label in fake.started] == list("ABABAAAA")

    run(main)


def test_tenants_take_turns_on_two_slots_with_a_shared_busy_model() -> None:
    async def main() -> None:
        # Two tenants' requests for one model of two instances: both slots run it, and the
        # tenants alternate, whatever each has queued.
        fake = Fake(gated={"A0", "B0"})
        sched = Scheduler(2, fake.execute, fake.drop, instances=lambda model: 2)
        for i in range(4):
            sched.submit(job("A", "m", f"A{i}"))
        for i in range(2):
            sched.submit(job("B", "m", f"B{i}"))
        sched.start()
        await until(fake.started_future("A0"))
        await until(fake.started_future("B0"))
        assert sorted(fake.started) == ["A0", "B0"]
        fake.release("A0")
        fake.release("B0")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started[2:4] in (["A1", "B1"], ["B1", "A1"])
        assert fake.started[4:] == ["A2", "A3"]

    run(main)

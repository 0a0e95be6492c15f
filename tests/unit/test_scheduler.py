"""Unit tests for tenantd.scheduler with a fake ``execute`` coroutine (no runtime).

pytest-asyncio is not a dependency: every test runs its coroutine with ``asyncio.run``. Tests wait
on events and futures, never on wall-clock sleeps; ``asyncio.wait_for`` bounds only guard against
a hang turning into a 120 s pytest timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import pytest

from tenantd.protocol import ErrorCode
from tenantd.scheduler import Job, QueueFull, Scheduler

GUARD_S = 5.0  # upper bound on any single wait; generous, only hit if the scheduler hangs


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(factory(), timeout=4 * GUARD_S))


async def until(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, timeout=GUARD_S)


class Fake:
    """Records what the scheduler does. Jobs' payloads are string labels.

    Jobs whose label is in ``gated`` wait for ``release(label)`` before finishing; others finish
    as soon as they start. ``fail`` labels raise from execute.
    """

    def __init__(self, gated: Iterable[str] = (), fail: Iterable[str] = ()) -> None:
        self.gated = set(gated)
        self.fail = set(fail)
        self.started: list[str] = []
        self.finished: list[str] = []
        self.slots_used: dict[str, int] = {}
        self.dropped: list[tuple[str, ErrorCode, str]] = []
        self.running = 0
        self.max_running = 0
        self.running_per_model: Counter[str] = Counter()
        self.max_per_model: Counter[str] = Counter()
        self._gates: dict[str, asyncio.Event] = {}
        self._start_waiters: dict[str, asyncio.Future[None]] = {}
        self._drop_waiters: dict[str, asyncio.Future[tuple[ErrorCode, str]]] = {}

    def _gate(self, label: str) -> asyncio.Event:
        return self._gates.setdefault(label, asyncio.Event())

    def release(self, label: str) -> None:
        self._gate(label).set()

    def started_future(self, label: str) -> asyncio.Future[None]:
        fut = self._start_waiters.get(label)
        if fut is None:
            fut = self._start_waiters[label] = asyncio.get_running_loop().create_future()
            if label in self.started:
                fut.set_result(None)
        return fut

    def dropped_future(self, label: str) -> asyncio.Future[tuple[ErrorCode, str]]:
        fut = self._drop_waiters.get(label)
        if fut is None:
            fut = self._drop_waiters[label] = asyncio.get_running_loop().create_future()
            for lab, code, msg in self.dropped:
                if lab == label:
                    fut.set_result((code, msg))
        return fut

    async def execute(self, job: Job, slot: int) -> None:
        label = job.payload
        self.started.append(label)
        self.slots_used[label] = slot
        fut = self._start_waiters.get(label)
        if fut is not None and not fut.done():
            fut.set_result(None)
        self.running += 1
        self.running_per_model[job.model] += 1
        self.max_running = max(self.max_running, self.running)
        self.max_per_model[job.model] = max(self.max_per_model[job.model], self.running_per_model[job.model])
        try:
            if label in self.fail:
                raise RuntimeError(f"boom in {label}")
            if label in self.gated:
                await self._gate(label).wait()
            self.finished.append(label)
        finally:
            self.running -= 1
            self.running_per_model[job.model] -= 1

    def drop(self, job: Job, code: ErrorCode, message: str) -> None:
        self.dropped.append((job.payload, code, message))
        fut = self._drop_waiters.get(job.payload)
        if fut is not None and not fut.done():
            fut.set_result((code, message))


def job(tenant: str, model: str, label: str, deadline: float | None = None) -> Job:
    return Job(tenant=tenant, model=model, payload=label, deadline=deadline)


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
        await until(sched.drain(GUARD_S))
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
        with pytest.raises(QueueFull):
            sched.submit(job("A", "m", "A2"))
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
        await until(sched.drain(GUARD_S))
        with pytest.raises(QueueFull):
            sched.submit(job("A", "m", "late"))
        assert fake.started == []

    run(main)


# --------------------------------------------------------------------------- deadlines


def test_job_past_its_deadline_while_queued_is_dropped_not_run() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = Fake(gated={"blocker"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m1", "blocker"))
        sched.submit(job("B", "m2", "late", deadline=loop.time() + 0.02))
        sched.submit(job("C", "m3", "patient"))
        sched.start()
        await until(fake.started_future("blocker"))

        code, message = await until(fake.dropped_future("late"))
        assert code is ErrorCode.DEADLINE_EXCEEDED
        assert "deadline" in message
        assert sched.queue_depths() == {"C": 1}
        assert sched.queued == 1

        fake.release("blocker")
        await until(fake.started_future("patient"))
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["blocker", "patient"]
        assert [d[0] for d in fake.dropped] == ["late"]

    run(main)


def test_job_with_deadline_that_starts_in_time_runs() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = Fake()
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m", "ontime", deadline=loop.time() + 60))
        sched.start()
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["ontime"]
        assert fake.dropped == []

    run(main)


def test_expired_job_in_middle_of_tenant_queue_keeps_round_robin() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = Fake(gated={"blocker"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("X", "mx", "blocker"))
        sched.submit(job("A", "a0", "A0"))
        sched.submit(job("A", "a1", "A1-late", deadline=loop.time() + 0.02))
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

    run(main)


def test_two_jobs_for_one_model_are_serialised_on_two_slots() -> None:
    async def main() -> None:
        fake = Fake(gated={"j1", "j2"})
        sched = Scheduler(2, fake.execute, fake.drop)
        sched.submit(job("A", "m", "j1"))
        sched.submit(job("B", "m", "j2"))
        sched.start()
        await until(fake.started_future("j1"))
        # Give the other slot every chance to (wrongly) start j2.
        for _ in range(20):
            await asyncio.sleep(0)
        assert fake.started == ["j1"]
        assert sched.running == 1
        fake.release("j1")
        await until(fake.started_future("j2"))
        fake.release("j2")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.max_per_model["m"] == 1
        assert fake.finished == ["j1", "j2"]

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
        for _ in range(20):
            await asyncio.sleep(0)
        assert fake.started == ["x"]
        fake.release("x")
        assert await until(sched.drain(GUARD_S)) == 0
        assert fake.started == ["x", "y"]
        assert fake.max_running == 1

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
        await asyncio.sleep(0)
        assert not drain.done()  # still waiting on the running job
        fake.release("first")
        assert await until(drain) == 0
        assert fake.finished == ["first", "B0", "B1", "B2", "B3"]
        assert fake.dropped == []
        assert sched.queue_depths() == {}
        assert sched.queued == 0

    run(main)


def test_drain_timeout_drops_remaining_queued_jobs_with_unavailable() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = Fake(gated={"stuck"})
        sched = Scheduler(1, fake.execute, fake.drop)
        sched.submit(job("A", "m", "stuck"))
        sched.submit(job("A", "m", "q1"))
        q2 = job("B", "m2", "q2", deadline=loop.time() + 60)
        sched.submit(q2)
        assert q2.timer is not None
        sched.start()
        await until(fake.started_future("stuck"))

        dropped = await until(sched.drain(0.05))

        assert dropped == 2  # the queued ones; the running one is cancelled and answered too
        assert sorted(d[0] for d in fake.dropped) == ["q1", "q2", "stuck"]
        assert all(code is ErrorCode.UNAVAILABLE for _, code, _ in fake.dropped)
        assert fake.started == ["stuck"]
        assert fake.finished == []
        assert sched.queue_depths() == {}
        assert sched.queued == 0
        # The dropped job's deadline timer is cancelled, so it cannot fire a second answer.
        assert q2.timer is None

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
        assert not sched.is_busy("m")
        assert sched.running == 0

    with caplog.at_level(logging.ERROR, logger="tenantd.scheduler"):
        run(main)
    assert any("tenant A" in r.getMessage() for r in caplog.records)


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

        fake.release("A0")
        assert await until(sched.drain(GUARD_S)) == 0
        assert sched.queue_depths() == {}
        assert sched.queued == 0
        assert sched.running == 0
        assert fake.started == ["A0", "B0", "A1", "A2"]

    run(main)

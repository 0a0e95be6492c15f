"""Unit tests for the scheduler's dynamic batching, with a fake ``execute`` (no runtime).

As in test_scheduler.py: slots are threads, ``submit``/timers/``drop`` run on the event loop, every
test runs its coroutine with ``asyncio.run`` and waits on events, never on the clock (``GUARD_S``
only keeps a bug from hanging). A "blocker" job holds the one slot while a test queues what it
wants batched, so what is queued when the slot looks is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tenantd.scheduler import Job, Scheduler
from tenantwire.errors import ErrorCode

GUARD_S = 5.0
LONG_DELAY_S = 60.0  # a queue delay no test may wait out: a batch that waits for it fails by GUARD_S


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        await asyncio.wait_for(factory(), timeout=4 * GUARD_S)

    asyncio.run(main())
    assert [context.get("message") for context in errors] == []


class Calls:
    """Records each call a slot makes: a tuple of the labels it ran (one for an unbatched job).
    Jobs labelled ``block*`` hold their slot until ``release``."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.lock = threading.Lock()
        self.calls: list[tuple[str, ...]] = []
        self.dropped: dict[str, ErrorCode] = {}
        self.gate = threading.Event()
        self.blocking = threading.Event()
        # Jobs labelled with a key here hold their slot until their own event is set.
        self.gates: dict[str, threading.Event] = {}
        self.holding: dict[str, threading.Event] = {}
        self._done: dict[str, asyncio.Future[None]] = {}

    def done(self, label: str) -> asyncio.Future[None]:
        if label not in self._done:
            self._done[label] = self.loop.create_future()
        return self._done[label]

    def _finish(self, labels: tuple[str, ...]) -> None:
        for label in labels:
            future = self.done(label)
            if not future.done():
                future.set_result(None)

    def execute(self, job: Job, slot: int) -> None:
        self.execute_batch([job], slot)

    def execute_batch(self, jobs: list[Job], slot: int) -> None:
        labels = tuple(str(j.payload) for j in jobs)
        with self.lock:
            self.calls.append(labels)
        if labels[0] in self.gates:
            self.holding[labels[0]].set()
            assert self.gates[labels[0]].wait(GUARD_S), f"the test never released {labels[0]}"
        elif labels[0].startswith("block"):
            self.blocking.set()
            assert self.gate.wait(GUARD_S), "the test never released the blocker"
        self.loop.call_soon_threadsafe(self._finish, labels)

    def drop(self, job: Job, code: ErrorCode, message: str) -> None:
        self.dropped[str(job.payload)] = code
        self._finish((str(job.payload),))

    def gated(self, label: str) -> None:
        """Make ``label`` hold its slot until ``self.gates[label].set()``."""
        self.gates[label] = threading.Event()
        self.holding[label] = threading.Event()

    async def holds(self, label: str) -> None:
        assert await asyncio.to_thread(self.holding[label].wait, GUARD_S)

    async def blocked(self) -> None:
        """Wait (off the loop) until the blocker holds the slot."""
        assert await asyncio.to_thread(self.blocking.wait, GUARD_S)

    async def all_done(self, labels: list[str]) -> None:
        await asyncio.wait_for(asyncio.gather(*(self.done(label) for label in labels)), GUARD_S)


def make(
    calls: Calls,
    batching: Callable[[Job], tuple[int, float]],
    slots: int = 1,
    discipline: str = "round-robin",
    weight: Callable[[str], int] = lambda tenant: 1,
) -> Scheduler:
    sched = Scheduler(
        slots,
        execute=calls.execute,
        drop=calls.drop,
        execute_batch=calls.execute_batch,
        batching=batching,
        discipline=discipline,
        weight=weight,
    )
    sched.start()
    return sched


def job(tenant: str, model: str, label: str, batchable: bool = True, deadline: float | None = None) -> Job:
    return Job(tenant=tenant, model=model, payload=label, batchable=batchable, deadline=deadline)


def by_model(limits: dict[str, int], delay_s: float = 0.0) -> Callable[[Job], tuple[int, float]]:
    return lambda j: (limits.get(j.model, 1), delay_s)


def test_queued_jobs_of_one_model_run_as_batches_of_at_most_max_batch() -> None:
    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 3}))
        sched.submit(job("z", "other", "block"))
        await calls.blocked()
        labels = [f"a{i}" for i in range(1, 8)]
        for label in labels:
            sched.submit(job("a", "m", label))
        calls.gate.set()
        await calls.all_done(labels)
        assert calls.calls == [("block",), ("a1", "a2", "a3"), ("a4", "a5", "a6"), ("a7",)]
        assert sched.batches == {3: 2}
        await sched.drain(GUARD_S)

    run(body)


def test_a_model_that_cannot_batch_is_never_batched() -> None:
    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 1}, delay_s=LONG_DELAY_S))  # max_batch 1: the model cannot
        sched.submit(job("z", "other", "block"))
        await calls.blocked()
        labels = [f"a{i}" for i in range(1, 5)]
        for label in labels:
            sched.submit(job("a", "m", label))
        calls.gate.set()
        await calls.all_done(labels)
        assert calls.calls == [("block",), ("a1",), ("a2",), ("a3",), ("a4",)]
        assert sched.batches == {}
        await sched.drain(GUARD_S)

    run(body)


def test_a_job_that_cannot_share_a_call_runs_alone_and_splits_the_batch() -> None:
    """A request with several rows already (batchable False) is never stacked with others; the
    batch behind it keeps its tenant's order."""

    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 8}))
        sched.submit(job("z", "other", "block"))
        await calls.blocked()
        sched.submit(job("a", "m", "a1"))
        sched.submit(job("a", "m", "a2"))
        sched.submit(job("a", "m", "rows4", batchable=False))
        sched.submit(job("a", "m", "a3"))
        sched.submit(job("a", "n", "n1"))  # another model of the tenant ends a batch too
        sched.submit(job("a", "m", "a4"))
        calls.gate.set()
        await calls.all_done(["a1", "a2", "rows4", "a3", "n1", "a4"])
        assert calls.calls == [("block",), ("a1", "a2"), ("rows4",), ("a3",), ("n1",), ("a4",)]
        await sched.drain(GUARD_S)

    run(body)


def test_fairness_counts_a_batch_as_its_requests() -> None:
    """Round-robin: a's batch of 4 is four turns, so b runs four requests before a runs again."""

    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 4}))
        sched.submit(job("z", "other", "block"))
        await calls.blocked()
        a = [f"a{i}" for i in range(1, 9)]
        b = [f"b{i}" for i in range(1, 6)]
        for label in a:
            sched.submit(job("a", "m", label))
        for label in b:
            sched.submit(job("b", "n", label))  # b's model does not batch
        calls.gate.set()
        await calls.all_done(a + b)
        assert calls.calls == [
            ("block",),
            ("a1", "a2", "a3", "a4"),
            ("b1",),
            ("b2",),
            ("b3",),
            ("b4",),
            ("a5", "a6", "a7", "a8"),
            ("b5",),
        ]
        await sched.drain(GUARD_S)

    run(body)


def test_a_tenant_that_owes_turns_still_runs_when_nobody_else_can() -> None:
    """b's next request waits for b's busy model: a, owing a turn for its batch, must not leave
    the free slot idle for it (b's model stays busy until a's work is done, so an idle slot hangs)."""

    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 2}), slots=2)
        calls.gated("b-busy")
        calls.gated("z-busy")
        sched.submit(job("b", "nb", "b-busy"))
        await calls.holds("b-busy")
        sched.submit(job("z", "x", "z-busy"))
        await calls.holds("z-busy")
        sched.submit(job("b", "nb", "b2"))  # waits for its model: one instance, running b-busy
        a = ["a1", "a2", "a3", "a4"]
        for label in a:
            sched.submit(job("a", "m", label))
        calls.gates["z-busy"].set()
        await calls.all_done(a)
        assert calls.calls[2:] == [("a1", "a2"), ("a3", "a4")]
        calls.gates["b-busy"].set()
        await calls.all_done(["b2"])
        await sched.drain(GUARD_S)

    run(body)


def test_weighted_fair_counts_a_batch_against_the_tenants_weight() -> None:
    """a has weight 2: its batch of 4 is its two turns of this round and two of the next, so b
    (weight 1) runs twice before a's next batch."""

    async def body() -> None:
        calls = Calls()
        weights = {"a": 2, "b": 1}
        sched = make(calls, by_model({"m": 4}), discipline="weighted-fair", weight=lambda t: weights.get(t, 1))
        sched.submit(job("z", "other", "block"))
        await calls.blocked()
        a = [f"a{i}" for i in range(1, 9)]
        b = [f"b{i}" for i in range(1, 4)]
        for label in a:
            sched.submit(job("a", "m", label))
        for label in b:
            sched.submit(job("b", "n", label))
        calls.gate.set()
        await calls.all_done(a + b)
        assert calls.calls == [
            ("block",),
            ("a1", "a2", "a3", "a4"),
            ("b1",),
            ("b2",),
            ("a5", "a6", "a7", "a8"),
            ("b3",),
        ]
        await sched.drain(GUARD_S)

    run(body)


def test_a_batch_waits_for_the_queue_delay_to_fill_and_goes_as_soon_as_it_is_full() -> None:
    """With a free slot and a long max_queue_delay, a1 waits for company instead of running alone;
    the batch goes the moment it is full (waiting out the delay would fail by GUARD_S)."""

    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 3}, delay_s=LONG_DELAY_S))
        labels = ["a1", "a2", "a3"]
        sched.submit(job("a", "m", "a1"))
        sched.submit(job("b", "n", "b1"))  # another tenant's work runs while a1 waits
        await calls.all_done(["b1"])
        assert calls.calls == [("b1",)]
        sched.submit(job("a", "m", "a2"))
        sched.submit(job("a", "m", "a3"))
        await calls.all_done(labels)
        assert calls.calls == [("b1",), ("a1", "a2", "a3")]
        await sched.drain(GUARD_S)

    run(body)


def test_a_batch_that_does_not_fill_goes_once_its_delay_has_passed() -> None:
    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 8}, delay_s=0.02))
        sched.submit(job("a", "m", "a1"))
        sched.submit(job("a", "m", "a2"))
        await calls.all_done(["a1", "a2"])  # nothing else comes: the slot's timed wait lets them go
        assert sorted(label for call in calls.calls for label in call) == ["a1", "a2"]
        await sched.drain(GUARD_S)

    run(body)


def test_a_request_whose_deadline_would_pass_while_the_batch_fills_goes_now() -> None:
    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 8}, delay_s=LONG_DELAY_S))
        sched.submit(job("a", "m", "a1", deadline=time.monotonic() + 30.0))  # due before the batch
        await calls.all_done(["a1"])
        assert calls.calls == [("a1",)]
        assert calls.dropped == {}
        await sched.drain(GUARD_S)

    run(body)


def test_a_late_job_in_a_batch_is_dropped_and_the_rest_run() -> None:
    """A job whose deadline passed while the slot was busy is refused; its batch runs without it."""

    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 8}))
        sched.submit(job("z", "other", "block"))
        await calls.blocked()
        sched.submit(job("a", "m", "a1"))
        late = job("a", "m", "late", deadline=time.monotonic() + 0.001)
        sched.submit(late)
        sched.submit(job("a", "m", "a2"))
        await asyncio.to_thread(time.sleep, 0.01)  # past late's deadline (any longer sleep is fine)
        calls.gate.set()
        await calls.all_done(["a1", "late", "a2"])
        assert calls.dropped == {"late": ErrorCode.DEADLINE_EXCEEDED}
        assert calls.calls == [("block",), ("a1", "a2")]
        await sched.drain(GUARD_S)

    run(body)


def test_a_draining_device_does_not_wait_for_batches_to_fill() -> None:
    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 8}, delay_s=LONG_DELAY_S))
        sched.submit(job("a", "m", "a1"))
        sched.submit(job("a", "m", "a2"))
        dropped = await sched.drain(GUARD_S)
        assert dropped == 0
        await calls.all_done(["a1", "a2"])
        assert calls.calls == [("a1", "a2")]

    run(body)


@pytest.mark.parametrize("discipline", ["round-robin", "swap-aware"])
def test_a_running_batch_counts_as_its_requests(discipline: str) -> None:
    """``running`` (status, the in-flight limit) counts each request of a batch; swap-aware batches too."""

    async def body() -> None:
        calls = Calls()
        sched = make(calls, by_model({"m": 3}, delay_s=LONG_DELAY_S), discipline=discipline)
        labels = ["block0", "block1", "block2"]
        for label in labels:
            sched.submit(job("a", "m", label))
        await calls.blocked()
        assert sched.running == 3
        calls.gate.set()
        await calls.all_done(labels)
        assert calls.calls == [("block0", "block1", "block2")]
        await sched.drain(GUARD_S)

    run(body)

"""The inference core: check -> queue -> run on a slot -> hand the outcome to a callback.

Every way into the daemon that runs a model is a caller of this one module: the ZeroMQ front door
(:mod:`tenantd.frontdoors.zeromq`), pipelines' edge stage (:mod:`tenantd.pipelines`), and any front
door added later. It knows nothing about sockets. :meth:`InferenceCore.submit` checks the request
against the catalog (the tenant owns the model; the inputs match its specs) and the device's
health, and queues it with the :class:`~tenantd.scheduler.Scheduler`; a slot thread runs it on the
:class:`~tenantd.executor.Executor`; the outcome, an :class:`Answer` or a
:class:`~tenantwire.errors.TenantdError`, is handed to the caller's callback on the event loop,
exactly once. :meth:`InferenceCore.infer` is the same as an awaitable.

Dynamic batching: a request whose every input has one row is ``batchable``; the policy's
``max_batch`` for its tenant's model, capped by what the loaded model can take, sizes the batches
the scheduler gathers; :meth:`InferenceCore._execute_batch` runs them on the executor as one call
and settles each job with its own rows. A request that already carries several rows runs alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tenantd.catalog import Catalog
from tenantd.config import Policy
from tenantd.devicehealth import DeviceHealth
from tenantd.errors import DeviceUnavailable, InputMismatch, ModelFailed, UnknownModel, WorkerCrashed
from tenantd.executor import Resident, RunResult
from tenantd.lifecycle import Lifecycle
from tenantd.metrics import Metrics
from tenantd.residency import Residency
from tenantd.runtimes import DeviceLost, RuntimeFailure
from tenantd.scheduler import Job, Scheduler
from tenantd.store import ModelRecord
from tenantwire.errors import ErrorCode, TenantdError
from tenantwire.tensors import TensorSpec

Tensors = list[tuple[str | None, np.ndarray]]


@dataclass
class Answer:
    """A request's outputs, named as the model names them, and the daemon's timings."""

    outputs: Tensors
    timings: dict[str, Any]


Outcome = Answer | TenantdError
Done = Callable[[Outcome], None]


@dataclass
class _Work:
    inputs: list[np.ndarray]
    record: ModelRecord  # the model the owner and inputs were checked against
    resident: Resident  # and its loaded instance: the job runs on exactly this one or not at all
    done: Done


class InferenceCore:
    def __init__(
        self,
        catalog: Catalog,
        residency: Residency,
        health: DeviceHealth,
        lifecycle: Lifecycle,
        policy: Callable[[], Policy],
        slots: int,
        metrics: Metrics,
    ) -> None:
        self._catalog = catalog
        self.metrics = metrics  # every request's outcome is counted here, whichever door it came by
        self._residency = residency
        self._executor = residency.executor
        self._health = health
        self._lifecycle = lifecycle
        self._policy = policy
        self._loop: asyncio.AbstractEventLoop | None = None
        current = policy()
        self.scheduler = Scheduler(
            slots,
            execute=self._execute,
            drop=self._drop,
            job_done=residency.job_done,
            depth_per_tenant=current.queue_depth_per_tenant,
            depth_total=current.queue_depth_total,
            discipline=current.discipline,
            weight=lambda tenant: self._policy().tenant(tenant).weight,
            in_flight_limit=lambda tenant: self._policy().tenant(tenant).max_in_flight,
            loaded=residency.is_warm,
            max_pass_over=current.max_pass_over,
            instances=self._executor.instances_of,
            execute_batch=self._execute_batch,
            batching=self._batching,
        )
        residency.busy = self.scheduler.is_busy
        residency.instances_changed = self.scheduler.instances_changed

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()

    # ------------------------------------------------------------------ on the event loop

    def submit(self, tenant: str, model: Any, tensors: Tensors, deadline_ms: float | None, done: Done) -> None:
        """Check and queue one request; ``done`` gets its outcome later, on the loop. A request
        refused before it is queued raises here instead (``done`` is then never called)."""
        self.metrics.request("infer")
        try:
            self._queue(tenant, model, tensors, deadline_ms, done)
        except TenantdError as exc:
            self.metrics.refused(tenant, model, exc.code.value)
            raise

    def _queue(self, tenant: str, model: Any, tensors: Tensors, deadline_ms: float | None, done: Done) -> None:
        self._lifecycle.check_accepting()
        record = self._catalog.owned_model(tenant, model)
        inputs = match_inputs(record.inputs, tensors)
        self._health.check()
        resident = self._executor.resident.get(record.name)
        if resident is None:
            raise ModelFailed(f"model {record.name!r} could not be loaded (see events)")
        if deadline_ms is None:
            deadline_ms = self._policy().default_deadline_ms
        job = Job(
            tenant=record.owner,
            model=record.name,
            payload=_Work(inputs, record, resident, done),
            deadline=None if deadline_ms is None else time.monotonic() + deadline_ms / 1e3,
            batchable=all(a.ndim >= 1 and a.shape[0] == 1 for a in inputs),
        )
        self.scheduler.submit(job)  # raises QueueFull

    async def infer(self, tenant: str, model: str, tensors: Tensors, deadline_ms: float | None) -> Answer:
        """:meth:`submit` as an awaitable; raises the refusal."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        self.submit(tenant, model, tensors, deadline_ms, done)
        outcome = await future
        if isinstance(outcome, TenantdError):
            raise outcome
        return outcome

    def _batching(self, job: Job) -> tuple[int, float]:
        """(max batch, max queue delay in s) for the job's model: the policy's, capped by what the
        loaded model can take. Called by the scheduler under its lock."""
        resident = self._executor.resident.get(job.model)
        can = 1 if resident is None else resident.max_batch
        if can <= 1 or self._executor.twin is not None:  # a twin models one request per service time
            return 1, 0.0
        limit, delay_ms = self._policy().batching(job.tenant, job.model)
        return min(limit, can), delay_ms / 1e3

    def _finish(self, job: Job, slot: int, result: RunResult) -> None:
        work: _Work = job.payload
        self._residency.unload_retired()
        if not self.scheduler.settle(job):
            return  # already answered (the drain gave up on it)
        queue_s, total_s = job.started - job.enqueued, time.monotonic() - job.enqueued
        switch, overhead_ms = self._residency.record_run(work.resident, result, job.model, slot)
        timings: dict[str, Any] = {
            "queue_ms": round(queue_s * 1e3, 4),
            "compute_ms": round(result.compute_ms, 4),
            "total_ms": round(total_s * 1e3, 4),
            **switch,
            **result.twin_timings(),
        }
        if result.batch > 1:
            timings["batch"] = result.batch
        self.metrics.served(
            job.tenant,
            job.model,
            queue_s,
            result.compute_ms / 1e3,
            total_s,
            None if overhead_ms is None else max(0.0, overhead_ms) / 1e3,  # below 0: noise
            batch=result.batch,
        )
        names = [spec.name for spec in work.record.outputs]
        work.done(Answer(list(zip(names, result.outputs, strict=True)), timings))

    def _drop(self, job: Job, code: ErrorCode, message: str) -> None:
        self._residency.unload_retired()
        if not self.scheduler.settle(job):
            return  # already answered (the drain gave up on it)
        work: _Work = job.payload
        self.metrics.refused(job.tenant, job.model, code.value)
        work.done(TenantdError(code, message, {"tenant": job.tenant}))

    def _device_lost(self, job: Job, reason: str) -> None:
        self._health.mark_lost(reason, job.model)
        self._drop(job, ErrorCode.DEVICE_UNAVAILABLE, f"model {job.model!r}: {reason}")

    # ------------------------------------------------------------------ on a slot thread

    def _runnable(self, job: Job) -> bool:
        """The job may still run on its model; if not, its refusal goes to the event loop."""
        work: _Work = job.payload
        loop = self._loop
        assert loop is not None
        if self._executor.resident.get(job.model) is not work.resident:
            # Removed (and perhaps re-created by someone else) or replaced while this waited: the
            # owner and input checks no longer hold, so it must not run.
            message = f"model {job.model!r} was removed or replaced while this request waited"
            loop.call_soon_threadsafe(self._drop, job, UnknownModel.CODE, message)
            return False
        if self._health.lost is not None:  # queued before the device went: do not touch it
            loop.call_soon_threadsafe(self._drop, job, DeviceUnavailable.CODE, self._health.message())
            return False
        return True

    def _execute(self, job: Job, slot: int) -> None:
        """Run the job, then hand the result to the event loop to answer."""
        work: _Work = job.payload
        loop = self._loop
        assert loop is not None
        if not self._runnable(job):
            return
        try:
            result = self._executor.run(work.resident, work.inputs, slot)
        except DeviceLost as exc:
            loop.call_soon_threadsafe(self._device_lost, job, str(exc))
            return
        except WorkerCrashed as exc:  # not retried: this request may be what crashed the worker
            loop.call_soon_threadsafe(self._drop, job, DeviceUnavailable.CODE, f"model {job.model!r}: {exc}")
            return
        except RuntimeFailure as exc:
            loop.call_soon_threadsafe(self._drop, job, ModelFailed.CODE, f"model {job.model!r}: {exc}")
            return
        loop.call_soon_threadsafe(self._finish, job, slot, result)

    def _execute_batch(self, jobs: list[Job], slot: int) -> None:
        """Run jobs of one model as one call; each is answered with its own rows."""
        loop = self._loop
        assert loop is not None
        jobs = [job for job in jobs if self._runnable(job)]
        if len(jobs) <= 1:
            for job in jobs:
                self._execute(job, slot)
            return
        works: list[_Work] = [job.payload for job in jobs]
        try:
            results = self._executor.run_batch(works[0].resident, [w.inputs for w in works], slot)
        except DeviceLost as exc:
            for job in jobs:
                loop.call_soon_threadsafe(self._device_lost, job, str(exc))
            return
        except RuntimeFailure as exc:
            for job in jobs:
                loop.call_soon_threadsafe(self._drop, job, ModelFailed.CODE, f"model {job.model!r}: {exc}")
            return
        for job, result in zip(jobs, results, strict=True):
            loop.call_soon_threadsafe(self._finish, job, slot, result)


def match_inputs(specs: Sequence[TensorSpec], tensors: Sequence[tuple[str | None, np.ndarray]]) -> list[np.ndarray]:
    """Order ``tensors`` as the model's inputs and check each against its spec.

    A single unnamed tensor feeds a single-input model; otherwise every tensor is named and every
    input given exactly once."""

    def mismatch(message: str) -> InputMismatch:
        return InputMismatch(message, {"inputs": [s.to_wire() for s in specs]})

    if len(tensors) != len(specs):
        raise mismatch(f"the model takes {len(specs)} input(s), got {len(tensors)}")
    if len(specs) == 1 and tensors[0][0] is None:
        ordered = [tensors[0][1]]
    else:
        by_name: dict[str, np.ndarray] = {}
        for name, array in tensors:
            if name is None:
                raise mismatch("inputs must be named for a multi-input model")
            by_name[name] = array
        missing = [s.name for s in specs if s.name not in by_name]
        unknown = sorted(set(by_name) - {s.name for s in specs})
        if missing or unknown:
            raise mismatch(f"inputs do not match the model's: missing {missing}, unknown {unknown}")
        ordered = [by_name[s.name] for s in specs]
    for spec, array in zip(specs, ordered, strict=True):
        problem = spec.accepts(array)
        if problem:
            raise mismatch(problem)
    return ordered

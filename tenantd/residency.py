"""Residency: which admitted models are loaded on the device right now, and how that changes.

Without swapping every served model stays loaded, as on a device whose memory model is a
parameter cache (the EdgeTPU: the device streams a model's parameters in on a switch, so its
interpreters stay loaded). With swapping (the policy's ``overcommit = "swap"``) a served model
may be unloaded and is reloaded by the first request that needs it (:class:`~tenantd.executor.Swapping`
tells the executor how much room there is and tells the admission ledger what was loaded or
evicted). This module also owns the end of a model's life (a removed or replaced model is
*retired*: unloaded once no slot is running it), the start of the daemon (stored models restored),
and the record of each switch (a slot running another model than last time) with its overhead.

It also gives a loaded model its instances: a busy model runs as many requests at once as it has
instances (LiteRT interpreters, OpenVINO infer requests, callers of one ONNX Runtime session), up to
one per slot (``instances`` in the policy; an EdgeTPU or NCS2 profile keeps one). Instances past the
first are made after the model is installed, in the background, one at a time, each only if the
budget has room for it (the first is estimated at the model's footprint, the next at what the
first measured) and charged what its creation measured; the ``model.instances`` event says how many
a model got and, if fewer than asked, why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tenantd.admission import Admission
from tenantd.catalog import Catalog
from tenantd.config import Policy
from tenantd.devices import DeviceProfile, MemoryModel
from tenantd.events import Event, EventLog
from tenantd.executor import Executor, Resident, RunResult, Swapping
from tenantd.runtimes import DeviceLost, RuntimeFailure, RuntimeNotAvailable
from tenantd.scheduler import Job
from tenantd.store import Store

log = logging.getLogger("tenantd")


def seed_from_probe(resident: Resident, probe: dict[str, Any]) -> None:
    """What the probe (and the compiler output given with the submission) told about a model:
    its warm window starts with the probe's second (warm) inference, so that even its first switch
    has an overhead to state; its co-compiled group, if any, says which models share its cache."""
    warm = probe.get("warm_infer_ms")
    if isinstance(warm, (int, float)) and warm > 0 and not resident.warm_ms:
        resident.warm_ms.append(float(warm))
    group = probe.get("edgetpu_cocompiled_group")
    if isinstance(group, list) and len(group) > 1:
        resident.cache_group = frozenset(str(m) for m in group)


class Residency:
    def __init__(
        self,
        executor: Executor,
        admission: Admission,
        profile: DeviceProfile,
        swap: bool,
        events: EventLog,
        policy: Callable[[], Policy] = Policy,
    ) -> None:
        self.executor = executor
        self._policy = policy
        self._admission = admission
        self._profile = profile
        self._events = events
        # Whether a model is running on a slot now; set by the inference core that owns the scheduler.
        self.busy: Callable[[str], bool] = lambda model: False
        # Tells the scheduler a model has one more instance; set with ``busy``.
        self.instances_changed: Callable[[], None] = lambda: None
        self._growing: set[asyncio.Task[None]] = set()
        self._retired: list[Resident] = []  # removed or replaced, unloaded once idle
        self._loop: asyncio.AbstractEventLoop | None = None
        if swap:
            executor.swapping = self._swapping()

    @property
    def swapping(self) -> bool:
        return self.executor.swapping is not None

    def _swapping(self) -> Swapping:
        admission = self._admission

        # overcommit = "swap": the ledger holds the loaded models only.
        def loaded(resident: Resident) -> None:
            if self.executor.resident.get(resident.name) is not resident:
                return  # removed or replaced while it loaded: not charged; unloaded once idle
            file_bytes = resident.path.stat().st_size if resident.path is not None else 0
            size, overhead, _ = admission.footprint(resident.name, resident.size, resident.runtime_overhead, file_bytes)
            admission.charge(resident.name, size, resident.runtime, overhead)
            admission.loaded(resident.name, 0, resident.runtime)

        return Swapping(
            unit="footprint",
            room=lambda: admission.budget().free_bytes,
            loaded=loaded,
            evicted=lambda r: admission.release(r.name),
            busy=lambda name: self.busy(name),
        )

    def swappable(self, name: str, runtime: str, path: Path, footprint: int, details: dict[str, Any]) -> Resident:
        """A served model that is not loaded yet; its size is counted in the swapping's unit."""
        swapping = self.executor.swapping
        assert swapping is not None
        size = footprint
        resident = Resident(
            name=name,
            runtime=runtime,
            model=None,
            path=path,
            size=size,
            runtime_overhead=int(details.get("runtime_overhead_bytes", 0)),
        )
        seed_from_probe(resident, details)
        return resident

    async def restore(self, store: Store, catalog: Catalog) -> None:
        """Serve every stored model again (start-up). One that cannot be loaded keeps its record:
        the tenant's model is not lost, and its requests say why it cannot run."""
        self._loop = asyncio.get_running_loop()
        for record in store.list_models():
            if (damage := store.model_file_problem(record)) is not None:  # never load what was not probed
                log.error("model %s of tenant %s is damaged, not loaded: %s", record.name, record.owner, damage)
                self._events.emit(Event.MODEL_DAMAGED, model=record.name, tenant=record.owner, reason=damage)
                catalog.models[record.name] = record
                continue
            path = store.blob_path(record.sha256)
            # Charged as admitted: the probe's footprint, or under a device twin the twin's.
            measured, overhead = record.footprint_bytes, int(record.probe.get("runtime_overhead_bytes", 0))
            charge, overhead, _ = self._admission.footprint(record.name, measured, overhead, record.size_bytes)
            if self.swapping:
                resident = self.swappable(record.name, record.runtime, path, record.footprint_bytes, record.probe)
                self.executor.install(resident)
                catalog.models[record.name] = record
                if self._profile.memory_model is MemoryModel.CACHE:  # admitted against host memory
                    self._admission.charge(record.name, charge, record.runtime, overhead)
                    self._admission.unloaded(record.name)  # charged, but not in host memory until loaded
                continue
            try:
                resident, load_ms = await self.executor.load(record.name, record.runtime, path)
            except (RuntimeFailure, RuntimeNotAvailable, OSError) as exc:
                log.error("model %s of tenant %s could not be loaded: %s", record.name, record.owner, exc)
                self._events.emit(Event.MODEL_LOAD_FAILED, model=record.name, tenant=record.owner, reason=str(exc))
                catalog.models[record.name] = record
                continue
            seed_from_probe(resident, record.probe)
            self.install(resident, record.owner)
            catalog.models[record.name] = record
            # Acknowledged models come back even if the budget shrank; over_budget says so.
            self._admission.charge(record.name, charge, record.runtime, overhead)
            self._events.emit(
                Event.MODEL_LOADED, model=record.name, tenant=record.owner, load_ms=round(load_ms, 3), restored=True
            )

    def install(self, resident: Resident, owner: str | None = None) -> None:
        """Serve ``resident`` under its name; the model it replaces is retired. With an ``owner``,
        the model then gets the instances its policy asks for, in the background."""
        self.retire(self.executor.install(resident))
        self._admission.release_instances(resident.name)  # the instances charged were the replaced model's
        if owner is not None:
            self._spawn_growth(resident, owner)

    def regrow(self, owners: Mapping[str, str]) -> None:
        """A new policy is in force: loaded models (``owners``: model -> tenant) that it gives
        more instances get them now; fewer apply from a model's next load."""
        for name, resident in list(self.executor.resident.items()):
            owner = owners.get(name)
            if owner is not None and resident.instances < self.wanted_instances(owner):
                self._spawn_growth(resident, owner)

    def _spawn_growth(self, resident: Resident, owner: str) -> None:
        if self.swapping or resident.model is None:
            return
        if any(task.get_name() == f"instances-{resident.name}" for task in self._growing):
            return  # one growth per model at a time: two would both count the same instances short
        task = asyncio.get_running_loop().create_task(self.grow(resident, owner), name=f"instances-{resident.name}")
        self._growing.add(task)
        task.add_done_callback(self._grown)

    def _grown(self, task: asyncio.Task[None]) -> None:
        self._growing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("giving model instances failed", exc_info=task.exception())

    def wanted_instances(self, owner: str) -> int:
        """Instances the policy asks for a model of ``owner``: at most one per slot, and one where
        the device profile says so or models are swapped."""
        policy = self._policy()
        asked = policy.tenant(owner).instances or policy.instances
        limit = self.executor.slots
        if self._profile.max_instances is not None:
            limit = min(limit, self._profile.max_instances)
        if self.swapping or self.executor.twin is not None:
            # A twin device runs one inference at a time (executor.py), and its memory model has
            # no room for copies: extra instances would take memory the twin does not model.
            limit = 1
        return limit if asked == "auto" else min(asked, limit)

    async def grow(self, resident: Resident, owner: str) -> None:
        """Add instances to ``resident`` until it has what its policy asks, the budget has no room
        for one more, or the runtime cannot; then say so in a ``model.instances`` event."""
        name, model, wanted = resident.name, resident.model, self.wanted_instances(owner)
        if model is None or model.instances >= wanted:
            return
        measured: list[int] = []
        limited_by = None
        estimate = self._admission.ledger.models.get(name, 0)  # an upper bound: it holds the file too
        while model.instances < wanted:
            if not model.can_add_instances:
                limited_by = f"the {resident.runtime} runtime runs one call of a model at a time"
                break
            if self.executor.resident.get(name) is not resident:
                return  # removed or replaced meanwhile: its successor gets its own
            if not self._admission.reserve_instance(name, estimate):
                free = self._admission.budget().free_bytes
                limited_by = f"budget: {free} bytes free, an instance needs about {estimate}"
                break
            try:
                grew = await self.executor.add_instance(resident)
            except (RuntimeFailure, DeviceLost) as exc:
                self._admission.instance_failed(name, estimate)
                limited_by = f"runtime: {exc}"
                break
            if self.executor.resident.get(name) is not resident:
                self._admission.instance_failed(name, estimate)  # it went with the retired model
                return
            self._admission.instance_loaded(name, estimate, grew)
            measured.append(grew)
            estimate = max(measured)
            self.instances_changed()
        self._events.emit(
            Event.MODEL_INSTANCES,
            model=name,
            tenant=owner,
            instances=model.instances,
            wanted=wanted,
            instance_bytes=measured,
            limited_by=limited_by,
        )
        if limited_by is not None:
            log.info("model %s has %d of %d instance(s): %s", name, model.instances, wanted, limited_by)

    async def settled(self) -> None:
        """Wait until no model is being given instances (tests, shutdown)."""
        while self._growing:
            await asyncio.gather(*self._growing, return_exceptions=True)

    async def close(self) -> None:
        """Stop giving models instances (shutdown)."""
        for task in list(self._growing):
            task.cancel()
        await self.settled()

    def remove(self, name: str) -> None:
        self.retire(self.executor.evict(name))

    def retire(self, resident: Resident | None) -> None:
        """A model was removed or replaced: unload it once no slot is running it."""
        if resident is None:
            return
        swapping = self.executor.swapping
        if swapping is not None and resident.model is not None:
            # Its memory is no longer the served model's: the ledger stops charging it now (a
            # replacement is charged when it is loaded).
            swapping.evicted(resident)
        self._retired.append(resident)
        self.unload_retired()

    def unload_retired(self) -> None:
        if self._retired:
            busy = [r for r in self._retired if self.busy(r.name)]
            for resident in self._retired:
                if resident not in busy:
                    Executor.unload(resident)
            self._retired = busy

    def job_done(self, job: Job) -> None:
        """On a slot thread, once the job's model is idle: a retired model may be unloadable now."""
        if self._retired and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.unload_retired)
            except RuntimeError:  # the loop is closed: the process is exiting anyway
                pass

    def is_loaded(self, model: str) -> bool:
        served = self.executor.resident.get(model)
        return served is not None and served.model is not None

    def is_warm(self, model: str) -> bool:
        """Whether ``model`` can start without a switch's extra cost (swap-aware runs these first):
        it is loaded, and on a one-model parameter cache (the EdgeTPU's) it is also the model the
        device ran last, or of its co-compiled group, whose parameters are still in the cache."""
        if not self.is_loaded(model):
            return False
        if self._profile.memory_model is MemoryModel.CACHE:
            return self.executor.shares_cache(self.executor.last_model, self.executor.resident[model])
        return True

    def loaded_models(self) -> list[str]:
        return sorted(r.name for r in list(self.executor.resident.values()) if r.model is not None)

    def record_run(
        self, resident: Resident, result: RunResult, model: str, slot: int
    ) -> tuple[dict[str, Any], float | None]:
        """On the loop, after a run: account it, and when it was a switch log the switch event.
        Returns the switch's part of the reply's timings, and the switch's overhead in ms (None
        when the run was no switch, or its overhead cannot be stated yet)."""
        switch, warm_median, overhead = self.executor.account(resident, result)
        timings: dict[str, Any] = {"switch": switch, "slot": slot}
        if not switch:
            return timings, None
        timings["switched_from"] = result.previous
        reload = result.reload
        if reload is not None:
            timings["load_ms"] = round(reload.load_ms, 4)
        self._events.switches.record(
            str(result.previous),
            model,
            slot=slot,
            reload=reload is not None,
            load_ms=None if reload is None else round(reload.load_ms, 4),
            evicted=[] if reload is None else reload.evicted,
            compute_ms=round(result.compute_ms, 4),
            warm_median_ms=None if warm_median is None else round(warm_median, 4),
            # load (if any) + this first inference - the model's warm median
            overhead_ms=None if overhead is None else round(overhead, 4),
        )
        return timings, overhead

    def status(self) -> dict[str, Any]:
        ex = self.executor
        swapping = ex.swapping
        return {
            "swapping": swapping.unit if swapping else None,
            "room_bytes": swapping.room() if swapping else None,
            "loaded": self.loaded_models(),
            "instances": {
                r.name: r.instances for r in sorted(ex.resident.values(), key=lambda r: r.name) if r.model is not None
            },
            "loaded_bytes": ex.loaded_size() if swapping else None,
            "reloads": ex.reloads,
            "evictions": ex.evictions,
            "switches": ex.switches,
            "mean_switch_overhead_ms": (
                round(ex.switch_overhead_ms / ex.switches_measured, 4) if ex.switches_measured else None
            ),
            **ex.timing_status(),
            **ex.worker_status(),
        }

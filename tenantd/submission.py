"""Submission: a tenant's model file becomes a served model, or a typed refusal.

The steps, in order: check the request (name, quota, device, runtime) -> store the file by its
hash -> probe it in a throwaway process, forked by the probe host where the runtime allows
(load, specs, memory, one inference on zeros) -> admission
(quotas, budget) -> load it on the device (or register it as swappable) -> write the durable
record -> install it in the catalog and on the device, retiring a model it replaces. The reply goes
out only after the record is committed, so an acknowledged model survives a kill -9. One
submission per name at a time (so the store and the served model agree) and one per tenant at a
time (so its quotas count every model it has, none in flight); at most ``MAX_CONCURRENT_PROBES``
probes run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantd.admission import AdmissionControl
from tenantd.catalog import Catalog, require_tenant
from tenantd.config import Policy
from tenantd.devicehealth import DeviceHealth
from tenantd.deviceruntimes import DeviceRuntimes
from tenantd.errors import (
    AdmissionDenied,
    BadRequest,
    DeviceMemoryFull,
    DeviceUnavailable,
    InvalidModel,
    ModelFailed,
    RuntimeUnavailable,
    Unavailable,
)
from tenantd.events import Event, EventLog
from tenantd.executor import Executor, Resident
from tenantd.lifecycle import Lifecycle
from tenantd.memory import host_memory
from tenantd.probe import ProbeResult
from tenantd.probehost import THREADED_AT_IMPORT, ProbeHost
from tenantd.probespare import SpareProbes
from tenantd.residency import Residency, seed_from_probe
from tenantd.runtimes import (
    DeviceLost,
    RuntimeFailure,
    RuntimeNotAvailable,
    available_runtimes,
)
from tenantd.runtimes import runtime_for_file as default_runtime
from tenantd.runtimes.edgetpu_compiler import CompilerLogError, figures_for
from tenantd.store import ModelRecord, Store
from tenantd.workerprobe import probe_in_worker
from tenantwire.errors import ErrorCode
from tenantwire.protocol import NAME_RE, Request
from tenantwire.tensors import TensorSpec

# Concurrent probes: each is a whole process; more than this only thrashes a small box.
MAX_CONCURRENT_PROBES = 2
# The least memory a probe is given, so that it can start (and refuse) even when the budget is full.
MIN_PROBE_MEMORY = 256 * 1024 * 1024


class ProbeSlots:
    """Who probes next when every probe slot is busy: fair across tenants, not first come.

    A tenant probes one model at a time (its submissions are serialised anyway). Among the waiting,
    a tenant whose recent probes failed (crashed, hung until the timeout, were refused) goes after
    every tenant whose did not, by the seconds of slot time those failures took (halved every
    ``FORGET_S``); then a tenant with a model probed successfully before goes first; then arrival.
    So tenants that keep submitting models that hang the runtime delay an established tenant by
    at most the probes already running, not by the whole queue they built."""

    FORGET_S = 600.0

    @dataclass
    class Turn:
        ok: bool = False

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[str, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._failed_s: dict[str, tuple[float, float]] = {}  # tenant -> (seconds, when last updated)
        self._proven: set[str] = set()

    def _penalty(self, tenant: str, now: float) -> float:
        seconds, since = self._failed_s.get(tenant, (0.0, now))
        return float(seconds * 0.5 ** ((now - since) / self.FORGET_S))

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str) -> AsyncIterator[ProbeSlots.Turn]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append((tenant, next(self._arrivals), ready))
            try:
                await ready
            except asyncio.CancelledError:
                if ready.done() and not ready.cancelled():
                    self._release()  # the slot came just as the wait was cancelled: pass it on
                else:
                    self._waiting = [w for w in self._waiting if w[2] is not ready]
                raise
        turn = ProbeSlots.Turn()
        started = time.monotonic()
        try:
            yield turn
        finally:
            now = time.monotonic()
            if turn.ok:
                self._proven.add(tenant)
            else:
                self._failed_s[tenant] = (self._penalty(tenant, now) + (now - started), now)
            self._release()

    def _release(self) -> None:
        if not self._waiting:
            self._free += 1
            return
        now = time.monotonic()
        tenant, arrival, ready = min(
            self._waiting, key=lambda w: (self._penalty(w[0], now), w[0] not in self._proven, w[1])
        )
        self._waiting.remove((tenant, arrival, ready))
        ready.set_result(None)


class Submission:
    def __init__(
        self,
        device: str,
        catalog: Catalog,
        admission: AdmissionControl,
        residency: Residency,
        store: Store,
        events: EventLog,
        health: DeviceHealth,
        lifecycle: Lifecycle,
        policy: Callable[[], Policy],
        threads: int,
    ) -> None:
        self._device = device
        self._catalog = catalog
        self._admission = admission
        self._residency = residency
        self._executor = residency.executor
        self._store = store
        self._events = events
        self._health = health
        self._lifecycle = lifecycle
        self._policy = policy
        self._threads = threads
        self._probe_slots = ProbeSlots(MAX_CONCURRENT_PROBES)
        # Runtimes that cannot be forked get spare probe processes, started ahead of their next probe.
        unforkable = [r for r in available_runtimes() if r in THREADED_AT_IMPORT]
        self.spare_probes = SpareProbes(unforkable, device, lambda: self._policy().probe_spares)
        self.probe_host = ProbeHost(available_runtimes(), self.spare_probes.probe)
        self.runtimes = DeviceRuntimes(device, self._executor)  # the daemon's, or the device worker's
        self._by_name: dict[str, asyncio.Lock] = {}
        self._by_tenant: dict[str, asyncio.Lock] = {}

    def start(self) -> None:
        """Start the probe host (in the background: probes start fresh processes until it is ready).
        Spare probe processes start with their runtime's first probe, not here: a daemon whose
        tenants never submit an ONNX or IR model never holds their ~66 MB each."""
        self.probe_host.start()

    async def close(self) -> None:
        """Stop the probe host and the spares and reap them (after the submissions in flight have ended)."""
        await self.probe_host.close()
        await self.spare_probes.close()

    def name_lock(self, name: str) -> asyncio.Lock:
        """Held while a submission of ``name`` is between admission and install (a removal waits)."""
        return self._by_name.setdefault(name, asyncio.Lock())

    async def submit(self, request: Request) -> dict[str, Any]:
        self._lifecycle.check_accepting()
        tenant = require_tenant(request)
        args = request.args
        name = args.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise BadRequest(f"args.name {name!r} is not a valid model name ({NAME_RE.pattern})")
        replace = args.get("replace", False)
        filename = args.get("filename")
        if not isinstance(replace, bool) or (filename is not None and not isinstance(filename, str)):
            raise BadRequest("args.replace must be a bool and args.filename a string")
        compiler_facts = compiler_figures(args.get("compiler_log"), filename)
        if len(request.frames) != 1 or request.tensors:
            raise BadRequest("submit_model takes exactly one buffer frame: the model file")
        data = memoryview(request.frames[0]).cast("B")
        if data.nbytes == 0:
            raise InvalidModel("the model file is empty")
        self._catalog.check_name_free(name, tenant, replace)
        self._admission.check_model_quota(name, tenant)
        self._health.check()
        runtime = args.get("runtime") or default_runtime(filename, self._device)
        if not isinstance(runtime, str):
            raise BadRequest("args.runtime must be a string")
        if compiler_facts and runtime != "edgetpu":
            raise BadRequest(f"args.compiler_log is for EdgeTPU models; this one is for runtime {runtime!r}")
        try:
            await self.runtimes.check(runtime)
        except RuntimeNotAvailable as exc:
            raise RuntimeUnavailable(str(exc)) from None
        except RuntimeFailure as exc:  # the device's worker did not answer
            raise DeviceUnavailable(f"the device worker did not say which runtimes it has: {exc}") from None

        loop = asyncio.get_running_loop()
        sha, path = await loop.run_in_executor(None, self._store.put_blob, data)
        self._events.emit(
            Event.MODEL_SUBMITTED, model=name, tenant=tenant, sha256=sha, size_bytes=data.nbytes, runtime=runtime
        )
        try:
            async with self._by_tenant.setdefault(tenant, asyncio.Lock()), self.name_lock(name):
                self._catalog.check_name_free(name, tenant, replace)
                self._admission.check_model_quota(name, tenant)
                probe, trial = await self._probe(name, tenant, runtime, path)
                if compiler_facts:  # the compiler's own figures, over the probe's estimate from the file
                    probe.details.update(compiler_facts, param_bytes=compiler_facts["edgetpu_on_chip_param_bytes"])
                previous_charge = self._admission.memory.ledger.models.get(name)
                overhead = int(probe.details.get("runtime_overhead_bytes", 0))
                try:
                    self._admission.admit(name, tenant, runtime, probe.footprint_bytes, overhead, data.nbytes)
                except BaseException:
                    if trial is not None:
                        Executor.unload(trial)
                    raise
                try:
                    resident, load_ms = await self._load(name, tenant, runtime, path, probe, trial)
                    record = ModelRecord(
                        name=name,
                        owner=tenant,
                        sha256=sha,
                        size_bytes=data.nbytes,
                        runtime=runtime,
                        filename=filename,
                        inputs=tuple(TensorSpec.from_wire(s) for s in probe.inputs),
                        outputs=tuple(TensorSpec.from_wire(s) for s in probe.outputs),
                        footprint_bytes=probe.footprint_bytes,
                        load_ms=probe.load_ms,
                        first_infer_ms=probe.first_infer_ms,
                        probe=probe.details,
                    )
                    await self._record_and_install(record, resident, replace, load_ms)
                except BaseException:
                    self._admission.memory.uncharge(name, previous_charge)
                    raise
                return {"model": model_info(record, self._residency)}
        finally:
            self._store.release_blob(sha)  # deleted here if the submission failed

    async def _probe(self, name: str, tenant: str, runtime: str, path: Path) -> tuple[ProbeResult, Resident | None]:
        """The probe's result, and the model loaded by the trial in the device's worker (None
        unless the runtime is the worker's alone: then that trial is the probe)."""
        # The probe may use what the device's budget has free (counting the model this one would
        # replace as free): a model that needs more could not be admitted, and must not get to
        # exhaust the host finding that out.
        memory = self._admission.memory
        free = memory.budget().free_bytes + memory.ledger.models.get(name, 0)
        if memory.twin is not None:  # the twin's budget is a modelled device's; the probe runs on this host
            free = host_memory()[1]
        limit = max(free, MIN_PROBE_MEMORY)
        trial = None
        async with self._probe_slots.turn(tenant) as turn:
            if self._executor.worker is None or self.runtimes.in_daemon(runtime):
                probe = await self.probe_host.probe(
                    runtime, path, self._threads, self._policy().probe_timeout_s, self._device, limit
                )
            else:  # the runtime is the worker's alone (its own Python): the trial load is the load there
                try:
                    probe, trial = await probe_in_worker(
                        self._executor, self.runtimes, name, runtime, path, limit, self._threads
                    )
                except DeviceLost as exc:
                    self._health.mark_lost(str(exc), name)
                    raise DeviceUnavailable(f"the device was lost loading the model: {exc}") from None
            turn.ok = probe.ok or probe.host_lost  # the host's death is not the tenant's doing
        if probe.host_lost:
            self._events.emit(
                Event.MODEL_REFUSED, model=name, tenant=tenant, code=ErrorCode.UNAVAILABLE.value, reason=probe.reason
            )
            raise Unavailable(f"{probe.reason}: submit it again")
        if probe.over_memory_limit:
            details = {"memory_limit_bytes": limit}
            self._events.emit(
                Event.MODEL_REFUSED,
                model=name,
                tenant=tenant,
                code=ErrorCode.ADMISSION_DENIED.value,
                reason=probe.reason,
                **details,
            )
            raise AdmissionDenied(
                f"{runtime} cannot run this model within the device's budget: {probe.reason}", details
            )
        if not probe.ok:
            self._events.emit(
                Event.MODEL_REFUSED, model=name, tenant=tenant, code=ErrorCode.INVALID_MODEL.value, reason=probe.reason
            )
            raise InvalidModel(f"{runtime} cannot use this file: {probe.reason}", probe.details)
        self._events.emit(
            Event.MODEL_PROBED,
            model=name,
            tenant=tenant,
            footprint_bytes=probe.footprint_bytes,
            load_ms=round(probe.load_ms, 3),
            first_infer_ms=round(probe.first_infer_ms, 3),
            **probe.details,
        )
        return probe, trial

    async def _load(
        self, name: str, tenant: str, runtime: str, path: Path, probe: ProbeResult, trial: Resident | None
    ) -> tuple[Resident, float]:
        if trial is not None:  # loaded and measured by the probe in the worker: serve that one
            if self._residency.swapping:
                Executor.unload(trial)  # loaded by the first request that needs it, as any swapped model
                return self._residency.swappable(name, runtime, path, probe.footprint_bytes, probe.details), 0.0
            self._admission.memory.loaded(name, probe.footprint_bytes, runtime)
            seed_from_probe(trial, probe.details)
            return trial, probe.load_ms
        try:
            if self._residency.swapping:
                # Loaded by the first request that needs it (a measured reload), not here.
                return self._residency.swappable(name, runtime, path, probe.footprint_bytes, probe.details), 0.0
            async with self._executor.measure_lock:  # one at a time, so the growth measured is this load's
                rss_before = await self._executor.rss(runtime)
                resident, load_ms = await self._executor.load(name, runtime, path)
                self._admission.memory.loaded(name, await self._executor.rss() - rss_before, runtime)
                seed_from_probe(resident, probe.details)
                return resident, load_ms
        except DeviceMemoryFull as exc:  # this model does not fit beside the loaded ones: refused, device fine
            details = {"networks_loaded": exc.networks_loaded}
            self._events.emit(
                Event.MODEL_REFUSED, model=name, tenant=tenant, code=ErrorCode.ADMISSION_DENIED.value, reason=str(exc)
            )
            raise AdmissionDenied(f"the device has no room for this model: {exc}", details) from None
        except DeviceLost as exc:
            self._health.mark_lost(str(exc), name)
            raise DeviceUnavailable(f"the device was lost loading the model: {exc}") from None
        except RuntimeFailure as exc:
            self._events.emit(
                Event.MODEL_REFUSED, model=name, tenant=tenant, code=ErrorCode.RUNTIME_ERROR.value, reason=str(exc)
            )
            raise ModelFailed(f"the probe passed but the daemon could not load it: {exc}") from None

    async def _record_and_install(self, record: ModelRecord, resident: Resident, replace: bool, load_ms: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Durable before acknowledged: the reply goes out only after this commit.
            await loop.run_in_executor(None, self._store.add_model, record, replace)
        except BaseException:
            Executor.unload(resident)
            raise
        replaced = self._catalog.models.get(record.name)
        self._catalog.models[record.name] = record
        replaced_resident = self._executor.resident.get(record.name) is not None
        self._residency.install(resident, record.owner)
        if replaced is not None and replaced.sha256 != record.sha256:
            await loop.run_in_executor(None, self._store.discard_blob_if_unreferenced, replaced.sha256)
        self._events.emit(
            Event.MODEL_LOADED,
            model=record.name,
            tenant=record.owner,
            load_ms=round(load_ms, 3),
            replaced=replaced_resident,
        )

    async def remove(self, record: ModelRecord) -> dict[str, Any]:
        """Forget ``record``: the store first (durable), then the catalog, the ledger and the device."""
        await asyncio.get_running_loop().run_in_executor(None, self._store.remove_model, record.name)
        self._catalog.models.pop(record.name, None)
        self._admission.memory.release(record.name)
        self._residency.remove(record.name)
        self._events.emit(Event.MODEL_REMOVED, model=record.name, tenant=record.owner)
        return {"removed": record.name}


def model_info(record: ModelRecord, residency: Residency) -> dict[str, Any]:
    """A model as ``list_models`` and ``submit_model`` describe it."""
    info = record.to_wire()
    info["resident"] = residency.is_loaded(record.name)  # loaded right now
    served = residency.executor.resident.get(record.name)
    info["max_batch"] = 1 if served is None else served.max_batch  # requests one call can carry
    return info


MAX_COMPILER_LOG = 1 << 20


def compiler_figures(text: object, filename: str | None) -> dict[str, Any]:
    """The EdgeTPU compiler's figures for this file from ``args.compiler_log`` (its stdout), or
    none. Raises BadRequest for a log that is not one, or names no model of this file's name."""
    if text is None:
        return {}
    if not isinstance(text, str) or len(text) > MAX_COMPILER_LOG:
        raise BadRequest(f"args.compiler_log must be a string of at most {MAX_COMPILER_LOG} characters")
    try:
        return figures_for(text, filename)
    except CompilerLogError as exc:
        raise BadRequest(f"args.compiler_log: {exc}") from None

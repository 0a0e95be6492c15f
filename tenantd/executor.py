"""The executor owns the device: the runtimes and the served models. It loads models, runs one
inference on a slot's thread and times it, and keeps a short window of warm compute times per
model so that a switch's extra cost can be stated.

Residency: without swapping, every served model stays loaded. With :class:`Swapping` (overcommit
"swap", or a cache memory model such as the EdgeTPU's), a served model may be unloaded; a request
for it reloads it from the store on the slot's thread, first unloading the least recently used
idle models until it fits (``room``). Each reload is measured. Swapping runs with one execution
slot, as the devices it models run one model at a time.

Inference is a blocking call into native code that releases the GIL; it runs on the scheduler's
slot threads. Loads at submission run on the event loop's default thread pool. A loaded model may
be given more instances (``add_instance``: one more call of it may run at once), each measured as
it is created; ``measure_lock`` keeps two measured loads from overlapping.

Twin timing (``--timing twin``, :mod:`tenantd.devices.twin`): outputs are still computed here, but a
slot is held for the emulated device's modelled time (service, plus the switch-in when the device
last ran another model, or nothing yet): after the real reload and compute, the slot sleeps the
remainder. The modelled device runs one inference at a time across all slots (first come first
served; for a Jetson, whose GPU time-slices processes, that keeps its throughput but not its
processor-sharing latencies, which ``experiments/plan.py`` models). A run whose real work took
longer than the modelled time is counted and flagged: the host, not the device model, set its time.

Dynamic batching (``run_batch``): several requests of one model, each input one row, are stacked
along the first dimension, run as one call, and each output is split back into one row per
request. A model whose outputs do not come back with one row per request (a reshape that fixed
the batch inside it) is marked ``unbatchable`` and its requests run one by one from then on.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tenantd.devices.twin import DeviceTwin, TwinModel
from tenantd.memory import rss_bytes
from tenantd.runtimes import DeviceLost, LoadedModel, Runtime, RuntimeFailure, get_runtime_class
from tenantd.worker import WorkerHost, WorkerRuntime

WARM_WINDOW = 64
log = logging.getLogger(__name__)


@dataclass
class Resident:
    """A served model: loaded (``model``) or, when swapping, unloaded until a request needs it."""

    name: str
    runtime: str
    model: LoadedModel | None
    path: Path | None = None  # where to reload it from
    size: int = 0  # what it occupies when loaded, in the swapping's unit (footprint or parameters)
    runtime_overhead: int = 0  # the runtime library's cost, charged with the first model loaded
    last_used: float = 0.0
    reopen_instances: int = 1  # instances it had when its device was lost, to have again once back
    warm_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WARM_WINDOW))
    twin: TwinModel | None = None  # what the device twin takes this model for (twin timing)
    file_bytes: int = 0  # the model file's size, for a twin that must estimate the model from it
    unbatchable: bool = False  # a batched run did not give one output row per request
    # The models compiled together with this one into one EdgeTPU parameter cache (the compiler's
    # co-compiled group, by input file name): running one of them after another is no switch.
    cache_group: frozenset[str] = frozenset()

    @property
    def max_batch(self) -> int:
        """Requests one call of this model may carry (1 while it is not loaded, or cannot batch)."""
        model = self.model
        return 1 if model is None or self.unbatchable else model.max_batch

    def warm_median_ms(self) -> float | None:
        return statistics.median(self.warm_ms) if self.warm_ms else None

    @property
    def instances(self) -> int:
        """How many calls of this model may run at once now (1 while it is not loaded)."""
        model = self.model
        return model.instances if model is not None else 1


@dataclass(frozen=True)
class Swapping:
    """How residency is bounded when models are swapped: ``room()`` is what is free now for
    loading; ``loaded``/``evicted`` tell the memory ledger; ``busy`` says a model is running."""

    unit: str  # "footprint" or "parameters"
    room: Callable[[], int]
    loaded: Callable[[Resident], None]
    evicted: Callable[[Resident], None]
    busy: Callable[[str], bool]


@dataclass(frozen=True)
class Reload:
    load_ms: float
    evicted: list[str]


@dataclass(frozen=True)
class TwinHold:
    modelled_ms: float  # the twin's service + switch-in
    switch_ms: float
    held_ms: float  # how long the slot was held, measured: >= modelled_ms unless cpu_slower
    source: str  # published | fitted | scaled | estimated
    cpu_slower: bool  # this host's reload + compute took longer than the modelled device


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    compute_ms: float
    previous: str | None  # model that ran last on this slot
    reload: Reload | None = None  # the model had to be loaded first (swapping)
    twin: TwinHold | None = None  # twin timing: what the slot was held for
    batch: int = 1  # requests in the call that computed these outputs

    def switched(self, model: str) -> bool:
        return self.previous is not None and self.previous != model

    def twin_timings(self) -> dict[str, object]:
        if self.twin is None:
            return {}
        t = self.twin
        return {
            "device_ms": round(t.held_ms, 4),
            "twin_ms": round(t.modelled_ms, 4),
            "twin_switch_ms": round(t.switch_ms, 4),
            "twin_source": t.source,
            "twin_cpu_slower": t.cpu_slower,
        }


class Executor:
    def __init__(
        self,
        device: str,
        slots: int,
        threads_per_model: int,
        twin: DeviceTwin | None = None,
        worker: WorkerHost | None = None,
    ) -> None:
        self.device = device
        # Process isolation: where the runtimes run (tenantd.worker); None: here, inline.
        self.worker = worker
        self.twin = twin
        self.twin_cpu_slower = 0  # runs on which this host took longer than the modelled device
        self._twin_device = threading.Lock()
        self._twin_last: str | None = None  # the model the twin device ran last (under the lock)
        self.threads_per_model = threads_per_model
        self._runtimes: dict[str, Runtime] = {}
        self.resident: dict[str, Resident] = {}
        # Each entry is read and written only by its own slot's thread.
        self._last_on_slot: list[str | None] = [None] * slots
        self.last_model: str | None = None  # the model the device ran last, on any slot
        self.switches = 0
        self.swapping: Swapping | None = None
        self.reloads = 0
        self.evictions = 0
        # Summed over the switches whose overhead could be stated: reloads when swapping (they are
        # what a switch costs there), every switch otherwise.
        self.switch_overhead_ms = 0.0
        self.switches_measured = 0
        # Held around every load or new instance whose memory growth is measured, so that the
        # growth measured is that one's alone.
        self.measure_lock = asyncio.Lock()

    @property
    def slots(self) -> int:
        return len(self._last_on_slot)

    def instances_of(self, name: str) -> int:
        """Calls of model ``name`` that may run at once (the scheduler asks, under its lock)."""
        resident = self.resident.get(name)
        return 1 if resident is None else resident.instances

    async def add_instance(self, resident: Resident) -> int:
        """Give ``resident`` one more instance; returns the bytes the process grew by creating it
        (never below 0). Raises RuntimeFailure."""
        model = resident.model
        if model is None:
            raise RuntimeFailure(f"model {resident.name!r} is not loaded")
        loop = asyncio.get_running_loop()
        async with self.measure_lock:
            before = await self.rss()
            await loop.run_in_executor(None, model.add_instance)
            return max(0, await self.rss() - before)

    async def rss(self, runtime: str | None = None) -> int:
        """Resident memory of the process the models live in: the worker's, or this one's inline.
        The worker is started first, off the loop, and has ``runtime``'s library imported, so that
        neither its interpreter nor the library (charged apart, as the probe measured it) is
        charged to the model whose load is measured from here."""
        if self.worker is None:
            return rss_bytes()
        loop = asyncio.get_running_loop()
        if runtime is not None:
            rt = self.runtime(runtime)
            assert isinstance(rt, WorkerRuntime)
            await loop.run_in_executor(None, rt.prepare)
        return await loop.run_in_executor(None, self.worker.rss)

    def runtime(self, name: str) -> Runtime:
        if name not in self._runtimes:
            slots = len(self._last_on_slot)
            if self.worker is not None:
                self._runtimes[name] = WorkerRuntime(self.worker, name, self.device, self.threads_per_model, slots)
            else:
                self._runtimes[name] = get_runtime_class(name)(
                    device=self.device, num_threads=self.threads_per_model, slots=slots
                )
        return self._runtimes[name]

    async def load(self, name: str, runtime: str, path: Path) -> tuple[Resident, float]:
        """Load ``path`` for model ``name`` (not yet installed); returns it and the load time in ms."""
        rt = self.runtime(runtime)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        model = await loop.run_in_executor(None, rt.load, path)
        elapsed = (time.perf_counter() - t0) * 1e3
        return Resident(name=name, runtime=runtime, model=model, file_bytes=path.stat().st_size), elapsed

    def install(self, resident: Resident) -> Resident | None:
        """Make ``resident`` the model served under its name; returns the one it replaces, which
        the caller unloads once it is not running."""
        old = self.resident.get(resident.name)
        self.resident[resident.name] = resident
        return old

    def evict(self, name: str) -> Resident | None:
        """Stop serving ``name``; returns it for the caller to unload once it is not running."""
        return self.resident.pop(name, None)

    def run(self, resident: Resident, inputs: list[np.ndarray], slot: int) -> RunResult:
        """Run one inference on the calling slot thread, reloading the model first if it was
        swapped out. Raises RuntimeFailure."""
        if self.twin is None:
            return self._run(resident, inputs, slot, None)
        # The modelled device runs one inference at a time, whatever the slots: its one queue is
        # the slots waiting here, and the switch is from the model it ran last, on any slot.
        with self._twin_device:
            return self._run(resident, inputs, slot, self.twin)

    def _run(self, resident: Resident, inputs: list[np.ndarray], slot: int, twin: DeviceTwin | None) -> RunResult:
        previous = self._last_on_slot[slot]
        held_from = time.perf_counter()
        reload = self._ensure_loaded(resident) if resident.model is None else None
        model = resident.model
        assert model is not None
        t0 = time.perf_counter()
        outputs = model.infer(inputs)
        compute_ms = (time.perf_counter() - t0) * 1e3
        hold = None
        if twin is not None:
            hold = self._hold(twin, resident, self._twin_last, held_from)
            self._twin_last = resident.name
        resident.last_used = time.monotonic()
        self._last_on_slot[slot] = resident.name
        self.last_model = resident.name
        return RunResult(outputs, compute_ms, previous, reload, hold)

    def run_batch(self, resident: Resident, inputs: list[list[np.ndarray]], slot: int) -> list[RunResult]:
        """Run several requests of one model (each input of each one row) as one call and split
        the outputs, one result per request, in order; the first carries the switch, if any.
        Raises RuntimeFailure."""
        stacked = [np.concatenate(rows) for rows in zip(*inputs, strict=True)]
        n = len(inputs)
        try:
            whole = self.run(resident, stacked, slot)
            lost = [f"an output of shape {list(o.shape)}" for o in whole.outputs if o.ndim == 0 or o.shape[0] != n]
        except DeviceLost:
            raise
        except RuntimeFailure as exc:  # the engine refused the larger first dimension (a fixed reshape)
            lost = [str(exc)]
        if lost:
            resident.unbatchable = True  # from now on the scheduler batches none of its requests
            log.warning("model %s cannot batch (%s); its requests run one by one", resident.name, lost[0])
            return [self.run(resident, one, slot) for one in inputs]
        results = []
        for i in range(n):
            outputs = [out[i : i + 1] for out in whole.outputs]  # a view: a leading row stays contiguous
            first = i == 0
            results.append(
                RunResult(
                    outputs,
                    whole.compute_ms,
                    whole.previous if first else resident.name,
                    whole.reload if first else None,
                    whole.twin if first else None,
                    batch=n,
                )
            )
        return results

    def _hold(self, twin: DeviceTwin, resident: Resident, previous: str | None, held_from: float) -> TwinHold:
        """Keep the slot until the twin's modelled time since ``held_from`` has passed."""
        if resident.twin is None:
            size = resident.file_bytes or (resident.path.stat().st_size if resident.path is not None else resident.size)
            resident.twin = twin.model(resident.name, size)
        service = twin.service(resident.twin)
        switch = twin.switch_ms(resident.twin, None) if previous != resident.name else 0.0
        modelled = service.ms + switch
        deadline = held_from + modelled / 1e3
        slower = time.perf_counter() > deadline
        if slower:
            self.twin_cpu_slower += 1
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(left)
        held = (time.perf_counter() - held_from) * 1e3
        return TwinHold(modelled, switch, held, service.source, slower)

    def _ensure_loaded(self, resident: Resident) -> Reload:
        """On the slot thread: unload least recently used idle models until ``resident`` fits,
        then load it from the store. A model that could never fit was refused at admission."""
        swapping = self.swapping
        assert swapping is not None and resident.path is not None
        evicted: list[str] = []
        while swapping.room() < resident.size:
            idle = [
                r
                for r in list(self.resident.values())
                if r.model is not None and r is not resident and not swapping.busy(r.name)
            ]
            if not idle:
                break
            victim = min(idle, key=lambda r: r.last_used)
            self.unload(victim)
            swapping.evicted(victim)
            self.evictions += 1
            evicted.append(victim.name)
        t0 = time.perf_counter()
        resident.model = self.runtime(resident.runtime).load(resident.path)
        load_ms = (time.perf_counter() - t0) * 1e3
        swapping.loaded(resident)
        self.reloads += 1
        return Reload(load_ms, evicted)

    def reopen_device(self, path_of: Callable[[str], Path]) -> list[str]:
        """After the device was lost: drop every runtime (their handles point at the old device),
        then load again, on fresh runtimes, each model that was loaded (``path_of(name)`` finds its
        file). Runs on a worker thread while no slot runs. Raises RuntimeFailure (DeviceLost while
        the device is still gone); models not reloaded stay unloaded, and the next call retries."""
        loaded = [r for r in list(self.resident.values()) if r.model is not None or r.path is None]
        for resident in loaded:
            if resident.model is not None:
                resident.reopen_instances = resident.model.instances
            try:
                self.unload(resident)
            except Exception:  # noqa: BLE001 - unloading from a vanished device may fail any way; it is gone
                resident.model = None
        for runtime in self._runtimes.values():
            try:
                runtime.release()
            except Exception:  # noqa: BLE001 - as above: the old handle is being thrown away
                pass
        self._runtimes.clear()
        for resident in loaded:
            if resident.model is None:
                instances = resident.reopen_instances
                model = self.runtime(resident.runtime).load(resident.path or path_of(resident.name))
                for _ in range(instances - 1):  # as many as it had: the ledger still charges them
                    model.add_instance()
                resident.model = model
        return [r.name for r in loaded]

    @staticmethod
    def unload(resident: Resident) -> None:
        model, resident.model = resident.model, None
        if model is not None:
            model.unload()

    def loaded_size(self) -> int:
        return sum(r.size for r in list(self.resident.values()) if r.model is not None)

    def account(self, resident: Resident, result: RunResult) -> tuple[bool, float | None, float | None]:
        """On the event loop: record a finished run; returns (switch, the model's warm median
        before this run, the switch's overhead in ms where it can be stated). A run that had to
        reload its model is a switch even on a slot that last ran the same model."""
        switch = (result.switched(resident.name) and not self.shares_cache(result.previous, resident)) or (
            result.reload is not None
        )
        if not switch:
            if result.batch == 1:  # a batch's time is not one request's warm time
                resident.warm_ms.append(result.compute_ms)
            return False, None, None
        self.switches += 1
        warm = resident.warm_median_ms()
        load_ms = result.reload.load_ms if result.reload else 0.0
        overhead = None if warm is None else load_ms + result.compute_ms - warm
        if result.twin is not None:  # the device's modelled cost, not this host's reload
            overhead = result.twin.switch_ms
        if overhead is not None and (self.swapping is None or result.reload is not None or result.twin is not None):
            self.switch_overhead_ms += overhead
            self.switches_measured += 1
        return True, warm, overhead

    def shares_cache(self, previous: str | None, resident: Resident) -> bool:
        """Whether the model ``previous`` left ``resident``'s parameters in the device's cache: it
        is ``resident`` itself, or of the same co-compiled group (one EdgeTPU cache holds a whole
        group's parameters, so alternating within it streams nothing)."""
        if previous is None or previous == resident.name:
            return True
        other = self.resident.get(previous)
        return bool(resident.cache_group) and other is not None and other.cache_group == resident.cache_group

    def timing_status(self) -> dict[str, object]:
        if self.twin is None:
            return {"timing": "cpu"}
        link = f" {self.twin.link}" if self.twin.link else ""
        return {"timing": f"twin {self.twin.profile.name}{link}", "twin_cpu_slower": self.twin_cpu_slower}

    def worker_status(self) -> dict[str, object]:
        return {"isolation": "inline"} if self.worker is None else self.worker.status()

    def close(self) -> None:
        try:
            for name in list(self.resident):
                resident = self.evict(name)
                if resident is not None:
                    self.unload(resident)
            for runtime in self._runtimes.values():
                runtime.release()
        finally:
            if self.worker is not None:
                self.worker.close()

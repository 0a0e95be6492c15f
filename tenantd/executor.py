"""The executor owns the device: the runtimes, the loaded models, and the worker threads that run
inferences. It measures each run (compute time; whether the slot switched models) and keeps a short
window of warm compute times per model so that a switch's extra cost can be stated.

Loading and inference are blocking calls into native code that release the GIL, so they run on a
thread pool with one thread per execution slot; everything else stays on the event loop.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tenantd.runtimes import LoadedModel, Runtime, get_runtime_class

WARM_WINDOW = 64


@dataclass
class Resident:
    """A model loaded on the device, with its recent warm compute times."""

    name: str
    runtime: str
    model: LoadedModel
    warm_ms: deque[float] = field(default_factory=lambda: deque(maxlen=WARM_WINDOW))

    def warm_median_ms(self) -> float | None:
        return statistics.median(self.warm_ms) if self.warm_ms else None


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    compute_ms: float
    switch: bool
    previous: str | None  # model that ran last on this slot
    warm_median_ms: float | None  # of this model, before this run


class Executor:
    def __init__(self, device: str, slots: int, threads_per_model: int) -> None:
        self.device = device
        self.threads_per_model = threads_per_model
        self._runtimes: dict[str, Runtime] = {}
        self.resident: dict[str, Resident] = {}
        self._last_on_slot: list[str | None] = [None] * slots
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="tenantd-slot")
        self.switches = 0

    def runtime(self, name: str) -> Runtime:
        if name not in self._runtimes:
            self._runtimes[name] = get_runtime_class(name)(device=self.device, num_threads=self.threads_per_model)
        return self._runtimes[name]

    async def load(self, name: str, runtime: str, path: Path) -> tuple[Resident, float]:
        """Load ``path`` for model ``name`` (not yet installed); returns it and the load time in ms."""
        rt = self.runtime(runtime)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        model = await loop.run_in_executor(self._pool, rt.load, path)
        return Resident(name=name, runtime=runtime, model=model), (time.perf_counter() - t0) * 1e3

    def install(self, resident: Resident) -> Resident | None:
        """Make ``resident`` the model served under its name; returns the one it replaces, which
        the caller unloads once it is not running."""
        old = self.resident.get(resident.name)
        self.resident[resident.name] = resident
        return old

    def evict(self, name: str) -> Resident | None:
        """Stop serving ``name``; returns it for the caller to unload once it is not running."""
        self._last_on_slot = [None if m == name else m for m in self._last_on_slot]
        return self.resident.pop(name, None)

    async def run(self, resident: Resident, inputs: list[np.ndarray], slot: int) -> RunResult:
        previous = self._last_on_slot[slot]
        switch = previous is not None and previous != resident.name
        warm_median = resident.warm_median_ms() if switch else None
        loop = asyncio.get_running_loop()
        outputs, compute_ms = await loop.run_in_executor(self._pool, _timed_infer, resident.model, inputs)
        self._last_on_slot[slot] = resident.name
        if switch:
            self.switches += 1
        else:
            resident.warm_ms.append(compute_ms)
        return RunResult(outputs, compute_ms, switch, previous, warm_median)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for name in list(self.resident):
            resident = self.evict(name)
            if resident is not None:
                resident.model.unload()
        for runtime in self._runtimes.values():
            runtime.release()


def _timed_infer(model: LoadedModel, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    t0 = time.perf_counter()
    outputs = model.infer(inputs)
    return outputs, (time.perf_counter() - t0) * 1e3

"""The executor owns the device: the runtimes and the loaded (resident) models. It loads models
off the event loop, runs one inference on a slot's thread and times it, and keeps a short window
of warm compute times per model so that a switch's extra cost can be stated.

Inference is a blocking call into native code that releases the GIL; it runs on the scheduler's
slot threads. Loading runs on the event loop's default thread pool.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
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
    previous: str | None  # model that ran last on this slot

    def switched(self, model: str) -> bool:
        return self.previous is not None and self.previous != model


class Executor:
    def __init__(self, device: str, slots: int, threads_per_model: int) -> None:
        self.device = device
        self.threads_per_model = threads_per_model
        self._runtimes: dict[str, Runtime] = {}
        self.resident: dict[str, Resident] = {}
        # Each entry is read and written only by its own slot's thread.
        self._last_on_slot: list[str | None] = [None] * slots
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
        model = await loop.run_in_executor(None, rt.load, path)
        return Resident(name=name, runtime=runtime, model=model), (time.perf_counter() - t0) * 1e3

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
        """Run one inference on the calling slot thread. Raises RuntimeFailure."""
        previous = self._last_on_slot[slot]
        t0 = time.perf_counter()
        outputs = resident.model.infer(inputs)
        compute_ms = (time.perf_counter() - t0) * 1e3
        self._last_on_slot[slot] = resident.name
        return RunResult(outputs, compute_ms, previous)

    def account(self, resident: Resident, result: RunResult) -> tuple[bool, float | None]:
        """On the event loop: record a finished run; returns (switch, the model's warm median
        before this run, on a switch)."""
        if result.switched(resident.name):
            self.switches += 1
            return True, resident.warm_median_ms()
        resident.warm_ms.append(result.compute_ms)
        return False, None

    def close(self) -> None:
        for name in list(self.resident):
            resident = self.evict(name)
            if resident is not None:
                resident.model.unload()
        for runtime in self._runtimes.values():
            runtime.release()

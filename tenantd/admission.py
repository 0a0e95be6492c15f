"""Admission: the memory ledger of one device and the decision to accept a model onto it.

The ledger charges every admitted model its measured footprint (from the probe, corrected by the
growth measured when the daemon really loads it) and charges each runtime library's own cost once,
to the daemon, not to each tenant. The budget comes from the device profile's memory model:

- ``dedicated``: capacity - reserve.
- ``shared``: capacity - reserve - what the host uses besides the ledger's models, read live with
  psutil; so a host process that grows shrinks the budget (the paper's Jetson finding).
- ``cache``: bounded by host memory like ``shared`` (the parameter cache decides residency, not
  admission).

A model is admitted when the ledger plus its footprint fits the budget. Under
``overcommit = "reject"`` it is otherwise refused with ADMISSION_DENIED naming the budget, the
current use, the footprint and the shortfall. Decide-and-charge is one step on the event loop, so
two submissions in flight can never both take the last free bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import psutil

from tenantd.devices import DeviceProfile, MemoryModel

# (total, available) bytes of host DRAM; psutil by default, injectable for tests.
MemoryReader = Callable[[], tuple[int, int]]


def host_memory() -> tuple[int, int]:
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def rss_bytes() -> int:
    """Resident memory of this process: what the probe and the daemon measure footprints with."""
    return int(psutil.Process().memory_info().rss)


@dataclass(frozen=True)
class Budget:
    memory_model: str
    capacity_bytes: int
    reserve_bytes: int
    host_other_bytes: int  # shared/cache: host use besides the ledger's models
    budget_bytes: int
    used_bytes: int  # the ledger: runtime overheads + model footprints

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "memory_model": self.memory_model,
            "capacity_bytes": self.capacity_bytes,
            "reserve_bytes": self.reserve_bytes,
            "host_other_bytes": self.host_other_bytes,
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "free_bytes": self.free_bytes,
        }


@dataclass
class MemoryLedger:
    runtime_overhead: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    # Charges decided but not yet in host memory (the load has not happened): a live reading of
    # the host cannot see them, so the shared budget must subtract them itself.
    pending_models: set[str] = field(default_factory=set)
    pending_runtimes: set[str] = field(default_factory=set)

    def total(self) -> int:
        return sum(self.runtime_overhead.values()) + sum(self.models.values())

    def pending(self) -> int:
        return sum(self.models.get(m, 0) for m in self.pending_models) + sum(
            self.runtime_overhead.get(r, 0) for r in self.pending_runtimes
        )


@dataclass(frozen=True)
class Decision:
    admitted: bool
    model: str
    footprint_bytes: int
    runtime_overhead_bytes: int  # charged now because this is the runtime's first model
    budget: Budget

    @property
    def need_bytes(self) -> int:
        return self.footprint_bytes + self.runtime_overhead_bytes

    @property
    def shortfall_bytes(self) -> int:
        return max(0, self.need_bytes - self.budget.free_bytes)

    def explain(self) -> str:
        b = self.budget
        return (
            f"model {self.model!r} needs {_mib(self.need_bytes)} ({_mib(self.footprint_bytes)} measured footprint"
            + (f" + {_mib(self.runtime_overhead_bytes)} runtime library" if self.runtime_overhead_bytes else "")
            + f") but the {b.memory_model} budget is {_mib(b.budget_bytes)} with {_mib(b.used_bytes)} in use: "
            f"{_mib(self.shortfall_bytes)} short"
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            **self.budget.to_wire(),
            "footprint_bytes": self.footprint_bytes,
            "runtime_overhead_bytes": self.runtime_overhead_bytes,
            "shortfall_bytes": self.shortfall_bytes,
        }


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


P = ParamSpec("P")
R = TypeVar("R")


def _locked(method: Callable[Concatenate[Admission, P], R]) -> Callable[Concatenate[Admission, P], R]:
    def wrapper(self: Admission, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    wrapper.__doc__ = method.__doc__
    return wrapper


class Admission:
    """The ledger and budget of one device under one profile."""

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        capacity_bytes: int | None = None,
        reserve_bytes: int | None = None,
        memory_reader: MemoryReader = host_memory,
    ) -> None:
        self.profile = profile
        self._read_memory = memory_reader
        self.ledger = MemoryLedger()
        # Slot threads (swapping) and the event loop both read and change the ledger.
        self._lock = threading.RLock()
        self.capacity_bytes = 0
        self.reserve_bytes = 0
        self.reconfigure(capacity_bytes, reserve_bytes)

    @_locked
    def budget(self) -> Budget:
        used = self.ledger.total()
        host_other = 0
        if self.profile.memory_model is not MemoryModel.DEDICATED:
            total, available = self._read_memory()
            # Loaded models are part of the host's use: count them once, in the ledger. Charges
            # still pending are not in the host's use yet, so they are not subtracted from it.
            host_other = max(0, (total - available) - (used - self.ledger.pending()))
        budget = max(0, self.capacity_bytes - self.reserve_bytes - host_other)
        return Budget(
            self.profile.memory_model.value, self.capacity_bytes, self.reserve_bytes, host_other, budget, used
        )

    @_locked
    def decide(
        self, model: str, footprint: int, runtime: str, runtime_overhead: int, swappable: bool = False
    ) -> Decision:
        """Decide, and on admission charge the ledger at once (``release`` undoes it). A model
        that replaces one of the same name is decided without the old one's charge.

        ``swappable`` (overcommit = "swap"): the model is charged only while loaded, so it is
        admitted if it could be loaded with nothing else but the runtime libraries."""
        overhead = 0 if runtime in self.ledger.runtime_overhead else max(0, runtime_overhead)
        replaced = self.ledger.models.get(model, 0)
        budget = self.budget()
        budget = Budget(**{**budget.__dict__, "used_bytes": budget.used_bytes - replaced})
        if swappable:
            runtimes = sum(self.ledger.runtime_overhead.values())
            budget = Budget(**{**budget.__dict__, "used_bytes": runtimes})
        decision = Decision(
            admitted=footprint + overhead <= budget.free_bytes,
            model=model,
            footprint_bytes=footprint,
            runtime_overhead_bytes=overhead,
            budget=budget,
        )
        # The runtime library is never pending: the daemon imports it to check the runtime exists
        # before anything is decided, so a live reading of the host already holds it.
        if decision.admitted and swappable:
            if overhead:
                self.ledger.runtime_overhead[runtime] = overhead
        elif decision.admitted:
            self.charge(model, footprint, runtime, overhead)
            self.ledger.pending_models.add(model)
        return decision

    @_locked
    def charge(self, model: str, footprint: int, runtime: str, runtime_overhead: int = 0) -> None:
        """Charge without deciding: models restored at start-up were admitted before."""
        if runtime not in self.ledger.runtime_overhead:
            self.ledger.runtime_overhead[runtime] = max(0, runtime_overhead)
        self.ledger.models[model] = max(0, footprint)

    @_locked
    def loaded(self, model: str, measured: int, runtime: str | None = None) -> None:
        """The daemon really loaded ``model`` (with ``runtime``): its charge is now in the host's
        memory, and is raised to the growth measured on that load. Never lowered: the probe's
        figure includes a first inference, which a load alone does not."""
        self.ledger.pending_models.discard(model)
        if runtime is not None:
            self.ledger.pending_runtimes.discard(runtime)
        if model in self.ledger.models:
            self.ledger.models[model] = max(self.ledger.models[model], measured)

    @_locked
    def release(self, model: str) -> None:
        self.ledger.models.pop(model, None)
        self.ledger.pending_models.discard(model)

    @_locked
    def reconfigure(self, capacity_bytes: int | None, reserve_bytes: int | None) -> None:
        """A new policy's capacity or reserve (None: the profile's)."""
        host_total, _ = self._read_memory()
        capacity = capacity_bytes or self.profile.capacity_bytes
        if self.profile.memory_model is MemoryModel.CACHE or capacity is None:
            capacity = capacity_bytes or host_total  # the cache fronts host memory
        self.capacity_bytes = capacity
        self.reserve_bytes = self.profile.default_reserve_bytes if reserve_bytes is None else reserve_bytes

    @_locked
    def unloaded(self, model: str) -> None:
        """A swapped model left host memory but stays charged (cache memory model)."""
        if model in self.ledger.models:
            self.ledger.pending_models.add(model)

    @_locked
    def uncharge(self, model: str, previous: int | None) -> None:
        """Undo ``decide`` for a model whose load or store failed: back to its previous charge."""
        if previous is None:
            self.release(model)
        else:
            self.ledger.models[model] = previous
            self.ledger.pending_models.discard(model)

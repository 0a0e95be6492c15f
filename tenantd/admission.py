"""Admission: the memory ledger of one device and the decision to accept a model onto it.

The ledger charges every admitted model its measured footprint (from the probe, corrected by the
growth measured when the daemon really loads it) and charges each runtime library's own cost once,
to the daemon, not to each tenant. The budget comes from the device profile's memory model:

- ``dedicated``: capacity - reserve.
- ``shared``: capacity - reserve - what the host uses besides the ledger's models, read live with
  psutil; so a host process that grows shrinks the budget (the paper's Jetson finding).
- ``cache``: bounded by host memory like ``shared`` (the parameter cache decides residency, not
  admission).
- ``--timing twin``: the device twin's memory model instead, so admission stops where
  ``experiments.plan`` does: each model costs the twin's footprint (runtime included) against the
  twin's fixed budget (never this host's live use, the policy's capacity and reserve, or growth
  measured here); ``status`` says which (``budget_source``).

A model's extra instances (a second interpreter of a busy model, see ``residency.py``) are charged
one by one, each what its creation was measured to cost (``reserve_instance`` then
``instance_loaded``), and only while the budget has room for them: they are never a reason to
refuse a model, only something a model goes without when memory is short.

A model is admitted when the ledger plus its footprint fits the budget. Under
``overcommit = "reject"`` it is otherwise refused with ADMISSION_DENIED naming the budget, the
current use, the footprint and the shortfall. Decide-and-charge is one step on the event loop, so
two submissions in flight can never both take the last free bytes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

from tenantd.catalog import Catalog
from tenantd.config import Policy
from tenantd.devices import DeviceProfile, MemoryModel
from tenantd.devices.twin import DeviceTwin
from tenantd.errors import AdmissionDenied
from tenantd.events import Event, EventLog
from tenantd.memory import host_memory
from tenantwire.errors import ErrorCode

log = logging.getLogger("tenantd")

# (total, available) bytes of host DRAM; psutil by default, injectable for tests.
MemoryReader = Callable[[], tuple[int, int]]


@dataclass(frozen=True)
class Budget:
    memory_model: str
    capacity_bytes: int
    reserve_bytes: int
    host_other_bytes: int  # shared/cache: host use besides the ledger's models
    budget_bytes: int
    used_bytes: int  # the ledger: runtime overheads + model footprints
    source: str = "measured"  # measured (this host's figures) | twin (the device twin's memory model)
    note: str = ""  # twin: what the budget is

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
            "budget_source": self.source,
            **({"budget_note": self.note} if self.note else {}),
        }


@dataclass
class MemoryLedger:
    runtime_overhead: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    # Charges decided but not yet in host memory (the load has not happened): a live reading of
    # the host cannot see them, so the shared budget must subtract them itself.
    pending_models: set[str] = field(default_factory=set)
    pending_runtimes: set[str] = field(default_factory=set)
    # A model's instances beyond its first (whose cost is its footprint): bytes each, as measured.
    instances: dict[str, list[int]] = field(default_factory=dict)
    pending_instance_bytes: int = 0  # reserved for instances being created, not in host memory yet

    def total(self) -> int:
        return (
            sum(self.runtime_overhead.values())
            + sum(self.models.values())
            + sum(sum(each) for each in self.instances.values())
        )

    def pending(self) -> int:
        return (
            sum(self.models.get(m, 0) for m in self.pending_models)
            + sum(self.runtime_overhead.get(r, 0) for r in self.pending_runtimes)
            + self.pending_instance_bytes
        )

    def instance_bytes(self, model: str) -> int:
        return sum(self.instances.get(model, ()))


@dataclass(frozen=True)
class Decision:
    admitted: bool
    model: str
    footprint_bytes: int
    runtime_overhead_bytes: int  # charged now because this is the runtime's first model
    budget: Budget
    footprint_note: str = ""  # twin: the footprint's parts

    @property
    def need_bytes(self) -> int:
        return self.footprint_bytes + self.runtime_overhead_bytes

    @property
    def shortfall_bytes(self) -> int:
        return max(0, self.need_bytes - self.budget.free_bytes)

    def explain(self) -> str:
        b = self.budget
        if b.source == "twin":
            return (
                f"model {self.model!r} needs {_mib(self.need_bytes)} on the device twin ({self.footprint_note}) but "
                f"the twin's {b.memory_model} budget is {_mib(b.budget_bytes)} ({b.note}) with {_mib(b.used_bytes)} "
                f"in use: {_mib(self.shortfall_bytes)} short"
            )
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
        twin: DeviceTwin | None = None,
    ) -> None:
        self.profile = profile
        self.twin = twin  # charge the twin's memory model (--timing twin), not this host's figures
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
        if self.twin is not None:
            capacity, budget, note = self.twin.memory_budget()
            return Budget(self.profile.memory_model.value, capacity, capacity - budget, 0, budget, used, "twin", note)
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

    def footprint(self, model: str, measured: int, runtime_overhead: int, file_bytes: int) -> tuple[int, int, str]:
        """(footprint, runtime overhead, its parts) to charge ``model``: as measured, or the twin's."""
        if self.twin is None:
            return measured, runtime_overhead, ""
        charge, parts = self.twin.charge(model, file_bytes)
        return charge, 0, parts

    @_locked
    def decide(
        self, model: str, footprint: int, runtime: str, runtime_overhead: int, swappable: bool = False, note: str = ""
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
            footprint_note=note,
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
        if model in self.ledger.models and self.twin is None:
            self.ledger.models[model] = max(self.ledger.models[model], measured)

    @_locked
    def release(self, model: str) -> None:
        self.ledger.models.pop(model, None)
        self.ledger.pending_models.discard(model)
        self.release_instances(model)

    @_locked
    def reserve_instance(self, model: str, estimate: int) -> bool:
        """Charge one more instance of ``model`` its ``estimate`` if the budget has room for it
        (False, charging nothing, if not, or if the model is not charged at all). Settle it with
        ``instance_loaded`` or ``instance_failed``."""
        if model not in self.ledger.models or self.budget().free_bytes < estimate:
            return False
        self.ledger.instances.setdefault(model, []).append(max(0, estimate))
        self.ledger.pending_instance_bytes += max(0, estimate)
        return True

    @_locked
    def instance_loaded(self, model: str, estimate: int, measured: int) -> None:
        """The instance reserved with ``estimate`` exists and cost ``measured`` bytes: charge that."""
        self._unreserve(model, estimate)
        self.ledger.instances.setdefault(model, []).append(max(0, measured))

    @_locked
    def instance_failed(self, model: str, estimate: int) -> None:
        """The instance reserved with ``estimate`` was not created (or is no longer the model's)."""
        self._unreserve(model, estimate)

    def _unreserve(self, model: str, estimate: int) -> None:
        self.ledger.pending_instance_bytes -= max(0, estimate)
        charged = self.ledger.instances.get(model, [])
        if max(0, estimate) in charged:
            charged.remove(max(0, estimate))

    @_locked
    def release_instances(self, model: str) -> None:
        """``model``'s extra instances are gone (or belong to a model it replaced)."""
        self.ledger.instances.pop(model, None)

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


# Budget moves smaller than this (or 5%) are noise in the host's memory use, not news.
BUDGET_NOISE_BYTES = 16 * 1024 * 1024


class AdmissionControl:
    """The operator's policy applied to submissions: the tenant's quotas, the device's budget
    (:class:`Admission`, the ledger) with the swap rule, the record of the last refusal, and the
    events that say when the models admitted stop fitting a budget that moved (and fit again)."""

    def __init__(
        self,
        memory: Admission,
        catalog: Catalog,
        events: EventLog,
        policy: Callable[[], Policy],
        device_context: Callable[[], dict[str, Any]],
    ) -> None:
        self.memory = memory  # the device's memory ledger and budget
        self._catalog = catalog
        self._events = events
        self._policy = policy
        self._context = device_context
        self.last_refusal: dict[str, Any] | None = None  # the memory bound met most recently, explained

    @property
    def profile(self) -> DeviceProfile:
        return self.memory.profile

    def swaps(self) -> bool:
        """Whether served models may be unloaded: the policy says swap. (A cache device keeps its
        models loaded: the device itself streams parameters in on a switch.)"""
        return self._policy().overcommit == "swap"

    def check_model_quota(self, name: str, tenant: str) -> None:
        limit = self._policy().tenant(tenant).max_models
        have = len(self._catalog.tenant_models(tenant, besides=name))
        if limit is not None and have >= limit:
            details = {"quota": "max_models", "limit": limit, "models": have}
            self._events.emit(Event.MODEL_REFUSED, model=name, tenant=tenant, code="ADMISSION_DENIED", **details)
            raise AdmissionDenied(f"tenant {tenant!r} may have {limit} model(s) and has {have}", details)

    def check_memory_quota(self, name: str, tenant: str, footprint: int) -> None:
        quota = self._policy().tenant(tenant).memory_quota_bytes
        if quota is None:
            return
        used = sum(r.footprint_bytes for r in self._catalog.tenant_models(tenant, besides=name))
        if used + footprint > quota:
            details = {
                "quota": "memory_quota_bytes",
                "limit": quota,
                "used_bytes": used,
                "footprint_bytes": footprint,
                "shortfall_bytes": used + footprint - quota,
            }
            self._events.emit(Event.MODEL_REFUSED, model=name, tenant=tenant, code="ADMISSION_DENIED", **details)
            raise AdmissionDenied(
                f"tenant {tenant!r} has a memory quota of {quota / 2**20:.1f} MiB with {used / 2**20:.1f} MiB "
                f"in use; this model needs {footprint / 2**20:.1f} MiB",
                details,
            )

    def admit(
        self, name: str, tenant: str, runtime: str, footprint: int, runtime_overhead: int, file_bytes: int
    ) -> None:
        """Decide, and charge the ledger on admission (undo with ``ledger.uncharge``); refuse
        with ADMISSION_DENIED naming the budget, the use, the footprint and the shortfall.
        ``footprint`` is the probe's; under a device twin the twin's is charged instead."""
        footprint, runtime_overhead, parts = self.memory.footprint(name, footprint, runtime_overhead, file_bytes)
        self.check_memory_quota(name, tenant, footprint)
        decision = self.memory.decide(
            name,
            footprint,
            runtime,
            runtime_overhead,
            # Swapped models are charged while loaded; admission asks only that each could be.
            swappable=self._policy().overcommit == "swap" and self.profile.memory_model is not MemoryModel.CACHE,
            note=parts,
        )
        context = {**self._context(), **decision.to_wire()}
        if not decision.admitted:
            reason = decision.explain()
            self._events.emit(
                Event.MODEL_REFUSED,
                model=name,
                tenant=tenant,
                code=ErrorCode.ADMISSION_DENIED.value,
                reason=reason,
                **context,
            )
            self.last_refusal = {"ts": round(time.time(), 3), "model": name, "tenant": tenant, "reason": reason}
            raise AdmissionDenied(reason, context)
        self._events.emit(Event.MODEL_ADMITTED, model=name, tenant=tenant, **context)

    def report_over_budget(self) -> Budget:
        """Say (log and event) when the models admitted do not fit the budget; nothing is dropped."""
        budget = self.memory.budget()
        if budget.free_bytes < 0:
            self._events.emit(Event.ADMISSION_OVER_BUDGET, **self._context(), **budget.to_wire())
        return budget

    async def watch_budget(self) -> None:
        """A shared budget follows the host's live use: log when it moves, and when the models
        admitted stop fitting (and fit again). Nothing is dropped either way."""
        last = self.memory.budget()
        over = last.free_bytes < 0
        while True:
            await asyncio.sleep(self._policy().budget_watch_s)
            try:
                budget = self.memory.budget()
            except Exception:  # a failed reading must not stop the watcher for good
                log.exception("reading the host's memory failed; the budget watcher tries again")
                continue
            if abs(budget.budget_bytes - last.budget_bytes) > max(BUDGET_NOISE_BYTES, last.budget_bytes // 20):
                self._events.emit(
                    Event.BUDGET_CHANGED, **self._context(), previous_budget_bytes=last.budget_bytes, **budget.to_wire()
                )
                log.info(
                    "%s budget %.1f -> %.1f MiB",
                    self.profile.name,
                    last.budget_bytes / 2**20,
                    budget.budget_bytes / 2**20,
                )
                last = budget
            if (budget.free_bytes < 0) != over:
                over = not over
                kind = Event.ADMISSION_OVER_BUDGET if over else Event.ADMISSION_WITHIN_BUDGET
                self._events.emit(kind, **self._context(), **budget.to_wire())

    def consequences(self) -> list[str]:
        """What the policy in force means for models already admitted: nothing is dropped."""
        notes = []
        budget = self.memory.budget()
        if budget.free_bytes < 0:
            note = (
                f"the {self.profile.name} budget is now {budget.budget_bytes} bytes with {budget.used_bytes} in use: "
                "admitted models stay; new models are refused until some are removed"
            )
            if self.swaps():
                note += " (swapping unloads idle models as others are needed)"
            notes.append(note)
            self._events.emit(Event.ADMISSION_OVER_BUDGET, **self._context(), **budget.to_wire())
        policy = self._policy()
        for tenant in self._catalog.tenants():
            rules = policy.tenant(tenant)
            owned = self._catalog.tenant_models(tenant)
            used = sum(r.footprint_bytes for r in owned)
            over = []
            if rules.max_models is not None and len(owned) > rules.max_models:
                over.append(f"has {len(owned)} models, over its new limit of {rules.max_models}")
            if rules.memory_quota_bytes is not None and used > rules.memory_quota_bytes:
                over.append(f"uses {used} bytes, over its new quota of {rules.memory_quota_bytes}")
            for what in over:
                note = f"tenant {tenant!r} {what}: its models stay; new ones are refused"
                notes.append(note)
                self._events.emit(Event.QUOTA_EXCEEDED, tenant=tenant, note=note)
        return notes

    def status(self) -> dict[str, Any]:
        budget = self.memory.budget()
        return {
            "profile": self.profile.name,
            "overcommit": self._policy().overcommit,
            **budget.to_wire(),
            "runtime_overhead_bytes": dict(self.memory.ledger.runtime_overhead),
            "models_admitted": len(self.memory.ledger.models),
            "instance_bytes": {m: sum(each) for m, each in sorted(self.memory.ledger.instances.items()) if each},
            "last_refusal": self.last_refusal,
        }

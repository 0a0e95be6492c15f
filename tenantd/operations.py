"""The operations: one table from operation name to handler, and who may call each.

Every control operation a front door can be asked for is one :class:`Operation` here, written
once: its handler (whose docstring is its description), and whether only the operator may call
it (always, or only where tenants are identified by keys: under ``--auth header`` anyone can name
any tenant anyway). ``infer`` is not here: it goes to the inference core
(:mod:`tenantd.inference`) or, for a pipeline's name, to :mod:`tenantd.pipelines`. Handlers
raise :class:`~tenantwire.errors.TenantdError` to refuse; the front door turns that into the reply.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from tenantd import __version__
from tenantd.admission import AdmissionControl
from tenantd.auth import AuthConfigError
from tenantd.catalog import Catalog, is_operator_acting, require_tenant
from tenantd.config import RESTART_ONLY, ConfigError, Policy, PolicyInForce, parse_policy
from tenantd.devicehealth import DeviceHealth
from tenantd.devices import MemoryModel
from tenantd.errors import BadRequest, Forbidden
from tenantd.events import Event, EventLog
from tenantd.inference import InferenceCore
from tenantd.lifecycle import Lifecycle
from tenantd.metrics import Metrics
from tenantd.pipelines import Pipelines
from tenantd.policysource import PolicySource
from tenantd.residency import Residency
from tenantd.store import Store
from tenantd.submission import Submission, model_info
from tenantwire import protocol
from tenantwire.protocol import Op, Request

MAX_EVENTS_PER_REPLY = 10_000
# An events page is cut to this many bytes (the newest events kept), so that no reply is large:
# what one peer that stops reading can make the daemon hold is this times the front door's per-peer
# queue (frontdoors/zeromq.py, PEER_SEND_HWM).
MAX_EVENTS_REPLY_BYTES = 1024 * 1024

Handler = Callable[[Request], Awaitable[dict[str, Any]]]
# Who may call an operation: anyone; only the operator; only the operator where tenants are
# identified by keys (the answer names every tenant).
Caller = Literal["anyone", "operator", "operator_under_keys"]


@dataclass(frozen=True)
class Operation:
    op: Op
    handler: Handler
    caller: Caller = "anyone"

    @property
    def description(self) -> str:
        return (self.handler.__doc__ or "").strip().splitlines()[0] if self.handler.__doc__ else ""


@dataclass(frozen=True)
class DaemonInfo:
    """What the status says about the daemon itself; fixed at start-up."""

    device: str
    profile: str
    emulated: bool
    auth: str
    slots: int
    threads_per_model: int


class Operations:
    def __init__(
        self,
        info: DaemonInfo,
        endpoint: Callable[[], str],
        policy: PolicyInForce,
        catalog: Catalog,
        core: InferenceCore,
        residency: Residency,
        admission: AdmissionControl,
        health: DeviceHealth,
        submission: Submission,
        pipelines: Pipelines,
        events: EventLog,
        store: Store,
        lifecycle: Lifecycle,
        metrics: Metrics,
        reload_keys: Callable[[], list[str]] | None,
        policy_source: PolicySource | None = None,
    ) -> None:
        self.info = info
        self._endpoint = endpoint
        self._policy = policy
        self._catalog = catalog
        self._core = core
        self._residency = residency
        self._admission = admission
        self._health = health
        self._submission = submission
        self._pipelines = pipelines
        self._events = events
        self._store = store
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._reload_keys = reload_keys  # None under --auth header: no keys
        self._policy_source = policy_source  # None: a policy set at run time lasts until a restart
        self.table: dict[str, Operation] = {
            o.op.value: o
            for o in (
                Operation(Op.PING, self.ping),
                Operation(Op.STATUS, self.status),
                Operation(Op.SUBMIT_MODEL, self._submission.submit),
                Operation(Op.LIST_MODELS, self.list_models),
                Operation(Op.REMOVE_MODEL, self.remove_model),
                Operation(Op.EVENTS, self.events, "operator_under_keys"),
                Operation(Op.POLICY_SHOW, self.policy_show, "operator_under_keys"),
                Operation(Op.POLICY_SET, self.policy_set, "operator"),
                Operation(Op.RELOAD_KEYS, self.reload_keys, "operator"),
                Operation(Op.METRICS, self.metrics, "operator_under_keys"),
                Operation(Op.PIPELINE_SET, self._pipelines.define),
                Operation(Op.PIPELINE_REMOVE, self._pipelines.remove),
                Operation(Op.LIST_PIPELINES, self.list_pipelines),
            )
        }

    @property
    def keys(self) -> bool:
        return self._reload_keys is not None

    async def run(self, operation: Operation, request: Request) -> dict[str, Any]:
        self._metrics.request(operation.op.value)
        if operation.caller == "operator" or (operation.caller == "operator_under_keys" and self.keys):
            if not request.operator:
                raise Forbidden(f"only the operator may use {request.op!r}; tenants may not")
        return await operation.handler(request)

    # ------------------------------------------------------------------ handlers

    async def ping(self, request: Request) -> dict[str, Any]:
        """Is the daemon there: its version and protocol version."""
        return {"pong": True, "version": __version__, "protocol": protocol.PROTOCOL_VERSION}

    async def status(self, request: Request) -> dict[str, Any]:
        """The device, slots, queues, models, memory, residency and counters."""
        await self._submission.runtimes.first_answer()
        status = self.status_map()
        if self.keys and not request.operator:
            # A tenant sees the device, not the other tenants.
            status["tenants"] = [request.tenant]
            status["queue_depths"] = {t: n for t, n in status["queue_depths"].items() if t == request.tenant}
            own = {name for name, r in self._catalog.models.items() if r.owner == request.tenant}
            status["resident"] = [m for m in status["resident"] if m in own]
            status["residency"]["loaded"] = [m for m in status["residency"]["loaded"] if m in own]
            status["residency"]["instances"] = {m: n for m, n in status["residency"]["instances"].items() if m in own}
            status["memory"]["instance_bytes"] = {
                m: n for m, n in status["memory"]["instance_bytes"].items() if m in own
            }
            status["models"] = len(own)
            status["damaged_models"] = [d for d in status["damaged_models"] if d["tenant"] == request.tenant]
            refusal = status["memory"]["last_refusal"]
            if refusal is not None and refusal["tenant"] != request.tenant:
                status["memory"]["last_refusal"] = None
        return status

    def status_map(self, runtimes: bool = True) -> dict[str, Any]:
        """The status; without ``runtimes`` (which runtimes are importable: slow to find out, as
        finding a vendor library may run a subprocess) for every metrics scrape."""
        scheduler = self._core.scheduler
        memory = self._admission.status()
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "device": self.info.device,
            "endpoint": self._endpoint(),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._lifecycle.started, 3),
            "state": self._lifecycle.state,
            "auth": self.info.auth,
            "slots": self.info.slots,
            "threads_per_model": self.info.threads_per_model,
            "queued": scheduler.queued,
            "running": scheduler.running,
            "queue_depths": scheduler.queue_depths(),
            "batches": {str(size): calls for size, calls in sorted(scheduler.batches.items())},
            "models": len(self._catalog.models),
            "damaged_models": self._store.damaged_models(),
            "resident": self._residency.loaded_models(),
            "tenants": self._catalog.tenants(),
            "switches": self._residency.executor.switches,
            "memory": {"profile": memory.pop("profile"), "emulated": self.info.emulated, **memory},
            "residency": self._residency.status(),
            **self._metrics.counts(),  # requests, errors, replies_dropped
            **({"runtimes": self._submission.runtimes.available()} if runtimes else {}),
            **self._health.status(),
        }

    async def list_models(self, request: Request) -> dict[str, Any]:
        """The models of every tenant, or of the one named."""
        tenant = request.tenant
        records = [r for r in self._catalog.models.values() if tenant is None or r.owner == tenant]
        return {"models": [model_info(r, self._residency) for r in records]}

    async def remove_model(self, request: Request) -> dict[str, Any]:
        """Remove a model: a tenant its own, the operator any."""
        operator = is_operator_acting(request)
        name = request.args.get("model")

        def find() -> Any:
            return self._catalog.model(name) if operator else self._catalog.owned_model(require_tenant(request), name)

        record = find()
        # Not while a submission of the same name (a replace) is between admission and install.
        async with self._submission.name_lock(record.name):
            return await self._submission.remove(find())

    async def events(self, request: Request) -> dict[str, Any]:
        """The latest events of the log, oldest first (operator only under keys: it names every tenant)."""
        limit = request.args.get("limit", 100)
        kind = request.args.get("event")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_EVENTS_PER_REPLY:
            raise BadRequest(f"args.limit must be an int in 1..{MAX_EVENTS_PER_REPLY}")
        if kind is not None and not isinstance(kind, str):
            raise BadRequest("args.event must be a string")
        if kind is not None and kind not in {e.value for e in Event}:
            # An unknown kind would match nothing: say so, with the kinds there are.
            known = sorted(e.value for e in Event)
            raise BadRequest(f"no event kind {kind!r}; the kinds are: {', '.join(known)}", {"known": known})
        return await asyncio.get_running_loop().run_in_executor(None, self._events_page, limit, kind)

    def _events_page(self, limit: int, kind: str | None) -> dict[str, Any]:
        """The newest ``limit`` events that fit MAX_EVENTS_REPLY_BYTES (on a worker thread)."""
        events = self._events.tail(limit, kind)
        first, size = len(events), 2  # the page as a JSON array: "[", "]", and ", " between events
        while first:
            size += len(json.dumps(events[first - 1], default=str)) + 2
            if size > MAX_EVENTS_REPLY_BYTES:
                break
            first -= 1
        # ``omitted``: older events that matched but did not fit; ask again with a smaller limit.
        page = [e for e in events[first:] if _carried(e)]
        return {"events": page, "omitted": len(events) - len(page)}

    async def policy_show(self, request: Request) -> dict[str, Any]:
        """The policy in force (operator only under keys: it holds every tenant's quotas)."""
        policy = self._policy().model_dump()
        return {"policy": policy, "restart_only": list(RESTART_ONLY), "source": self._policy.source}

    async def policy_set(self, request: Request) -> dict[str, Any]:
        """Apply a new policy without a restart; it is stored with the state and survives restarts
        (tenantd.policysource says when the policy file wins). Models that no longer fit are kept."""
        text = request.args.get("toml")
        if not isinstance(text, str):
            raise BadRequest("args.toml must hold the policy file's text")
        try:
            new = parse_policy(text, "the new policy")
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
        self.check_policy(new)
        source = "runtime"
        if self._policy_source is not None:
            try:  # stored before it is applied: a policy in force is one a restart keeps
                source = self._policy_source.store(text, new)
            except OSError as exc:
                raise BadRequest(f"the policy could not be stored with the state, so is not applied: {exc}") from None
        return await self.apply_policy(new, source)

    def check_policy(self, new: Policy) -> None:
        """Refuse (BadRequest) a policy the running daemon cannot take: restart-only fields changed."""
        old = self._policy()
        fixed = [f for f in RESTART_ONLY if getattr(new, f) != getattr(old, f)]
        if fixed:
            raise BadRequest(
                f"{', '.join(fixed)} cannot change while the daemon runs; restart it with the new policy",
                {"restart_only": fixed},
            )
        profile = self._admission.profile
        if profile.memory_model is MemoryModel.DEDICATED and not (profile.capacity_bytes or new.capacity_bytes):
            raise BadRequest(f"profile {profile.name!r} has no fixed capacity: keep capacity_bytes set")

    async def apply_policy(self, new: Policy, source: str) -> dict[str, Any]:
        """Put a checked policy in force in every part at once (``policy_set`` and SIGHUP)."""
        old = self._policy()
        changed = sorted(k for k, v in new.model_dump().items() if v != old.model_dump()[k])
        self._policy.current = new
        self._policy.source = source
        self._core.scheduler.reconfigure(
            new.discipline,
            new.queue_depth_per_tenant,
            new.queue_depth_total,
            new.max_pass_over,
            lambda tenant: self._policy().tenant(tenant).weight,
        )
        self._admission.memory.reconfigure(capacity_bytes=new.capacity_bytes, reserve_bytes=new.reserve_bytes)
        self._events.configure(new)
        self._residency.regrow({name: record.owner for name, record in self._catalog.models.items()})
        await self._pipelines.apply_policy()
        self._events.emit(Event.POLICY_CHANGED, changed=changed, source=source)
        return {"changed": changed, "source": source, "consequences": self._admission.consequences()}

    async def reload_keys(self, request: Request) -> dict[str, Any]:
        """Re-read the keys folder; new and removed keys apply to new requests."""
        if self._reload_keys is None:
            raise BadRequest("this daemon runs with --auth header: it has no keys")
        try:
            return {"identities": self._reload_keys()}
        except AuthConfigError as exc:
            raise BadRequest(f"keys not reloaded, the old ones stay: {exc}") from None

    async def metrics(self, request: Request) -> dict[str, Any]:
        """The metrics as Prometheus text, as /metrics serves them (operator only under keys: names every tenant)."""
        return {"text": self._metrics.text()}

    async def list_pipelines(self, request: Request) -> dict[str, Any]:
        """The pipelines of every tenant, or of the one named."""
        return self._pipelines.list(request)


def _carried(event: dict[str, Any]) -> bool:
    """Whether the wire can carry ``event`` (a line written by hand may hold, say, an integer past
    64 bits, which JSON reads and msgpack cannot pack): such an event is left out and counted."""
    try:
        msgpack.packb(event, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return False
    return True

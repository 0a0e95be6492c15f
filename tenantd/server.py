"""The daemon: a ZeroMQ ROUTER loop that owns one device and answers every message.

It receives multipart messages, validates them with :mod:`tenantd.protocol`, and dispatches them
through one table of operations. Inference requests are checked (owner, inputs) on the loop and
queued with the :class:`~tenantd.scheduler.Scheduler`; control operations (submit, remove, status,
events) run as tasks so a slow model probe never stalls other tenants. Every message gets a reply:
malformed input gets a typed error reply, and an exception inside a handler becomes an INTERNAL
reply plus a log line, never a dead loop. On SIGTERM or SIGINT the daemon stops taking new work,
answers what it accepted (within the policy's drain timeout), and only then closes its socket.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np
import zmq

from tenantd import __version__, auth, metrics, protocol
from tenantd import pipelines as pl
from tenantd.admission import Admission, rss_bytes
from tenantd.config import RESTART_ONLY, ConfigError, Policy, parse_policy, usable_cores
from tenantd.devices import MemoryModel, get_profile
from tenantd.devices.detect import DeviceNameError, check_attached, check_device_name, default_profile, detect
from tenantd.events import EventLog
from tenantd.executor import Executor, Resident, RunResult, Swapping
from tenantd.probe import ProbeResult, probe_model
from tenantd.protocol import ErrorCode, Op, ProtocolError, Request
from tenantd.runtimes import (
    DeviceLost,
    RuntimeFailure,
    RuntimeNotAvailable,
    TensorSpec,
    available_runtimes,
    check_device,
    get_runtime_class,
    runtime_for_file,
)
from tenantd.scheduler import Job, QueueFull, Scheduler
from tenantd.store import ModelRecord, Store

log = logging.getLogger("tenantd")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_EVENTS_PER_REPLY = 10_000
# Concurrent probes: each is a whole process; more than this only thrashes a small box.
MAX_CONCURRENT_PROBES = 2
# Frames this far past the policy's message cap are cut off by ZeroMQ itself (no reply).
TRANSPORT_SLACK_BYTES = 64 * 1024 * 1024
# Budget moves smaller than this (or 5%) are noise in the host's memory use, not news.
BUDGET_NOISE_BYTES = 16 * 1024 * 1024
# Messages read per wake-up before other tasks get a turn.
READ_BATCH = 64
# How long the socket may keep flushing replies after the drain, when closing.
CLOSE_LINGER_MS = 2000
# A lost device is retried after this long, the wait doubling up to the maximum: a stick being
# re-plugged is back within seconds, one that is gone for good should not be hammered.
DEVICE_RETRY_FIRST_S = 1.0
DEVICE_RETRY_MAX_S = 60.0

Envelope = list[Any]
Handler = Callable[[Request], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ServeConfig:
    device: str
    endpoint: str
    state_dir: Path
    policy: Policy
    profile: str | None = None  # overrides the policy's; default: the device's own profile
    # "keys": CurveZMQ keys say who a request is from; "header": the request says (local endpoints
    # only). Default: "header" on ipc://, "keys" on tcp://.
    auth: str | None = None


def endpoint_is_local(endpoint: str) -> bool:
    """True for ipc:// and for tcp:// bound to a loopback address: the endpoints on which a
    tenant named in the request header can be trusted, because only local users reach them."""
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientError(Exception):
    """A request was understood but cannot be served; becomes an error reply."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass
class InferPayload:
    request_id: protocol.RequestId
    envelope: Envelope
    inputs: list[np.ndarray]
    record: ModelRecord  # the model the owner and inputs were checked against
    resident: Resident  # and its loaded instance: the job runs on exactly this one or not at all
    # A pipeline's local stage: the outcome goes here instead of back to a client.
    future: asyncio.Future[tuple[pl.Tensors, dict[str, Any]]] | None = None


class Daemon:
    def __init__(self, config: ServeConfig) -> None:
        try:
            check_device_name(config.device)
            check_attached(config.device, detect())
        except DeviceNameError as exc:
            raise ConfigError(str(exc)) from None
        self.auth_mode = config.auth or ("header" if config.endpoint.startswith("ipc://") else "keys")
        if self.auth_mode not in ("header", "keys"):
            raise ConfigError(f"auth {self.auth_mode!r} is not 'keys' or 'header'")
        if self.auth_mode == "header" and not endpoint_is_local(config.endpoint):
            raise ConfigError(
                f"endpoint {config.endpoint} is reachable from other hosts, so tenants cannot name "
                "themselves in request headers there: use --auth keys (CurveZMQ), or bind ipc:// or a "
                "loopback tcp:// address"
            )
        self.keyring: auth.KeyRing | None = None
        self.authenticator: auth.Authenticator | None = None
        self.config = config
        self.policy = config.policy
        self.endpoint = config.endpoint
        self.slots = self.policy.effective_slots()
        self.threads = self.policy.effective_threads()
        try:
            own_profile = default_profile(config.device)
            self.profile = get_profile(config.profile or self.policy.profile or own_profile)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        if self.profile.memory_model is MemoryModel.DEDICATED and not (
            self.profile.capacity_bytes or self.policy.capacity_bytes
        ):
            raise ConfigError(f"profile {self.profile.name!r} has no fixed capacity: set capacity_bytes in the policy")
        # Running on one device while enforcing another's memory model, to plan for it.
        self.emulated = self.profile.name != own_profile
        self.admission = Admission(
            self.profile, capacity_bytes=self.policy.capacity_bytes, reserve_bytes=self.policy.reserve_bytes
        )
        self.swap = self.policy.overcommit == "swap" or self.profile.memory_model is MemoryModel.CACHE
        if self.swap and self.policy.slots is None:
            self.slots = 1
            if self.policy.threads_per_model is None:  # the cores go to the one slot
                self.threads = usable_cores()
        if self.swap and self.slots != 1:
            raise ConfigError(
                f"swapping models (overcommit = 'swap', or the {self.profile.name} profile's cache) runs one "
                f"model at a time, as the device does: set slots = 1 (the policy has {self.slots})"
            )
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_lock = lock_state_dir(config.state_dir)
        self.store = Store(config.state_dir)
        self.events = EventLog(config.state_dir, self.policy.event_log_max_bytes)
        self.executor = Executor(config.device, self.slots, self.threads)
        self.scheduler = Scheduler(
            self.slots,
            execute=self._execute,
            drop=self._drop_job,
            job_done=self._job_done,
            depth_per_tenant=self.policy.queue_depth_per_tenant,
            depth_total=self.policy.queue_depth_total,
            discipline=self.policy.discipline,
            weight=lambda tenant: self.policy.tenant(tenant).weight,
            in_flight_limit=lambda tenant: self.policy.tenant(tenant).max_in_flight,
            loaded=self._is_loaded,
            max_pass_over=self.policy.max_pass_over,
        )
        if self.swap:
            self.executor.swapping = self._swapping()
        self.models: dict[str, ModelRecord] = {}  # the store's rows, cached for the request path
        # Pipelines by name: (owner, spec); they share the models' namespace (infer names either).
        self.pipelines: dict[str, tuple[str, pl.PipelineSpec]] = {}
        self.uplinks = pl.Uplinks()
        self._ops: dict[str, Handler] = {
            Op.PING.value: self._op_ping,
            Op.STATUS.value: self._op_status,
            Op.SUBMIT_MODEL.value: self._op_submit_model,
            Op.LIST_MODELS.value: self._op_list_models,
            Op.REMOVE_MODEL.value: self._op_remove_model,
            Op.EVENTS.value: self._op_events,
            Op.POLICY_SHOW.value: self._op_policy_show,
            Op.POLICY_SET.value: self._op_policy_set,
            Op.RELOAD_KEYS.value: self._op_reload_keys,
            Op.METRICS.value: self._op_metrics,
            Op.PIPELINE_SET.value: self._op_pipeline_set,
            Op.PIPELINE_REMOVE.value: self._op_pipeline_remove,
            Op.LIST_PIPELINES.value: self._op_list_pipelines,
        }
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._probe_slots = asyncio.Semaphore(MAX_CONCURRENT_PROBES)
        self._load_lock = asyncio.Lock()
        self._submitting: dict[str, asyncio.Lock] = {}
        self._tenant_submitting: dict[str, asyncio.Lock] = {}
        self._stop = asyncio.Event()
        self._draining = False
        self._started = time.time()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._read_scheduled = False
        self._retired: list[Resident] = []  # removed or replaced, unloaded once idle
        self._last_refusal: dict[str, Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set while the device is gone (see _device_lost_by): inference fails fast with
        # DEVICE_UNAVAILABLE, everything else keeps working, and a task retries the device.
        self.device_lost: dict[str, Any] | None = None
        self._device_retry: asyncio.Task[None] | None = None
        self.device_retry_s = (DEVICE_RETRY_FIRST_S, DEVICE_RETRY_MAX_S)

    # ------------------------------------------------------------------ lifecycle

    async def serve(self, ready: Callable[[str], None] | None = None) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT when installed), then drain and close."""
        try:
            sock = self._bind()  # first: a bad endpoint fails before any model is loaded
        except ConfigError:
            self._close_state()
            raise
        self.events.emit(
            "start",
            device=self.config.device,
            profile=self.profile.name,
            emulated=self.emulated,
            endpoint=self.endpoint,
            pid=os.getpid(),
            version=__version__,
        )
        removed = self.store.collect_garbage()
        if removed:
            log.info("removed %d orphaned model file(s) left by an interrupted submission", len(removed))
        self._loop = asyncio.get_running_loop()
        await self._restore_models()
        self._restore_pipelines()
        budget = self.admission.budget()
        if budget.free_bytes < 0:
            log.warning(
                "restored models use %d bytes, over the %s budget of %d: nothing is dropped, new models "
                "will be refused until some are removed",
                budget.used_bytes,
                self.profile.name,
                budget.budget_bytes,
            )
            self.events.emit("admission.over_budget", **self._device_context(), **budget.to_wire())
        self._sock = sock
        self.scheduler.start()
        watcher = (
            asyncio.create_task(self._watch_budget(), name="budget-watch")
            if self.profile.memory_model is not MemoryModel.DEDICATED
            else None
        )
        if self.keyring is not None:
            log.info(
                "tenants are identified by CurveZMQ keys (%d registered in %s/keys); clients need the server key %s",
                len(self.keyring),
                self.config.state_dir,
                self.keyring.server_public_key_file,
            )
        else:
            log.info(
                "tenants are named in each request's header, not authenticated; accepted because %s is a "
                "local-only endpoint (use --auth keys for CurveZMQ)",
                self.endpoint,
            )
        budget = self.admission.budget()
        log.info(
            "device %s, profile %s%s: %s memory, budget %.1f MiB (%.1f MiB in use)",
            self.config.device,
            self.profile.name,
            " (emulated)" if self.emulated else "",
            budget.memory_model,
            budget.budget_bytes / 2**20,
            budget.used_bytes / 2**20,
        )
        log.info(
            "device %s: %d slot(s), %d runtime thread(s) per model, %d model(s) restored",
            self.config.device,
            self.slots,
            self.threads,
            len(self.executor.resident),
        )
        if ready is not None:
            ready(self.endpoint)
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._read)
        self._schedule_read()  # messages may have arrived before the reader was added
        await self._stop.wait()
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if self._device_retry is not None:
            self._device_retry.cancel()
            await asyncio.gather(self._device_retry, return_exceptions=True)
        await self._shutdown(sock)

    async def _watch_budget(self) -> None:
        """A shared budget follows the host's live use: log when it moves, and when the models
        admitted stop fitting (and fit again). Nothing is dropped either way."""
        last = self.admission.budget()
        over = last.free_bytes < 0
        while True:
            await asyncio.sleep(self.policy.budget_watch_s)
            try:
                budget = self.admission.budget()
            except Exception:  # a failed reading must not stop the watcher for good
                log.exception("reading the host's memory failed; the budget watcher tries again")
                continue
            if abs(budget.budget_bytes - last.budget_bytes) > max(BUDGET_NOISE_BYTES, last.budget_bytes // 20):
                self.events.emit(
                    "budget.changed",
                    **self._device_context(),
                    previous_budget_bytes=last.budget_bytes,
                    **budget.to_wire(),
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
                kind = "admission.over_budget" if over else "admission.within_budget"
                self.events.emit(kind, **self._device_context(), **budget.to_wire())

    def _bind(self) -> zmq.Socket[bytes]:
        if self.endpoint.startswith("ipc://") and ipc_endpoint_in_use(self.endpoint[len("ipc://") :]):
            raise ConfigError(f"{self.endpoint} is already served by another process; stop it or pick another path")
        self._ctx = zmq.Context()
        if self.auth_mode == "keys":
            self.keyring = auth.KeyRing.load(self.config.state_dir)
            self.authenticator = auth.Authenticator(self._ctx, self.keyring)
            self.authenticator.start()  # before binding: ZAP must answer the first handshake
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.keyring is not None:
            auth.configure_server(sock, self.keyring.server_keys())
        # Replies to a peer that has gone (or stopped reading) raise instead of vanishing silently.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # The policy cap is checked per message, after receipt, so that the sender gets TOO_LARGE.
        # This transport limit applies per frame (the cap plus some slack): ZeroMQ drops a
        # connection that sends a larger frame, without reading the rest or replying.
        sock.setsockopt(zmq.MAXMSGSIZE, self.policy.max_message_bytes + TRANSPORT_SLACK_BYTES)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._stop_authenticator()
            self._ctx.term()
            raise ConfigError(f"cannot bind {self.endpoint}: {exc}") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _stop_authenticator(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()  # its ZAP socket would keep the context from terminating
            self.authenticator = None

    def _close_state(self) -> None:
        self.events.close()
        self.store.close()
        self._state_lock.close()

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        """SIGHUP re-reads the keys folder: how the first operator key added after start-up counts."""
        if self.authenticator is None or self.keyring is None:
            log.info("SIGHUP: nothing to reload (--auth header)")
            return
        try:
            self.authenticator.reload()
        except auth.AuthConfigError as exc:
            log.error("SIGHUP: keys not reloaded, the old ones stay: %s", exc)
            return
        log.info("SIGHUP: keys reloaded, %d registered", len(self.keyring))
        self.events.emit("keys.reloaded", identities=[str(i) for i in self.keyring.identities()])

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: draining (up to %.0f s), then stopping", sig.name, self.policy.drain_timeout_s)
        self.stop()

    async def _shutdown(self, sock: zmq.Socket[bytes]) -> None:
        self._draining = True  # keep receiving, but answer new work with UNAVAILABLE
        deadline = time.monotonic() + self.policy.drain_timeout_s
        dropped = await self.scheduler.drain(self.policy.drain_timeout_s)
        if self._control_tasks:
            await asyncio.wait(self._control_tasks, timeout=max(0.0, deadline - time.monotonic()))
        for task in list(self._control_tasks):  # a probe still running past the drain: give up on it
            task.cancel()
        await asyncio.gather(*self._control_tasks, return_exceptions=True)
        await pl.close_quietly(self.uplinks)
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._sock = None  # a read already scheduled must find no socket
        sock.close(linger=CLOSE_LINGER_MS)
        self._stop_authenticator()
        assert self._ctx is not None
        self._ctx.term()
        self.executor.close()
        self.events.emit("stop", dropped_requests=dropped, requests=sum(self.requests.values()))
        self._close_state()
        log.info("stopped")

    def _swappable(self, name: str, runtime: str, path: Path, footprint: int, details: dict[str, Any]) -> Resident:
        """A served model that is not loaded yet; its size is counted in the swapping's unit."""
        assert self.executor.swapping is not None
        size = footprint
        if self.executor.swapping.unit == "parameters":
            size = int(details.get("param_bytes") or footprint)
        resident = Resident(
            name=name,
            runtime=runtime,
            model=None,
            path=path,
            size=size,
            runtime_overhead=int(details.get("runtime_overhead_bytes", 0)),
        )
        _seed_warm(resident, details)
        return resident

    async def _restore_models(self) -> None:
        for record in self.store.list_models():
            if (damage := self.store.model_file_problem(record)) is not None:  # never load what was not probed
                log.error("model %s of tenant %s is damaged, not loaded: %s", record.name, record.owner, damage)
                self.events.emit("model.damaged", model=record.name, tenant=record.owner, reason=damage)
                self.models[record.name] = record
                continue
            if self.executor.swapping is not None:
                path = self.store.blob_path(record.sha256)
                self.executor.install(
                    self._swappable(record.name, record.runtime, path, record.footprint_bytes, record.probe)
                )
                self.models[record.name] = record
                if self.profile.memory_model is MemoryModel.CACHE:  # admitted against host memory
                    overhead = int(record.probe.get("runtime_overhead_bytes", 0))
                    self.admission.charge(record.name, record.footprint_bytes, record.runtime, overhead)
                    self.admission.unloaded(record.name)  # charged, but not in host memory until loaded
                continue
            try:
                resident, load_ms = await self.executor.load(
                    record.name, record.runtime, self.store.blob_path(record.sha256)
                )
            except (RuntimeFailure, RuntimeNotAvailable, OSError) as exc:
                # Keep the record: the tenant's model is not lost, and requests say why it cannot run.
                log.error("model %s of tenant %s could not be loaded: %s", record.name, record.owner, exc)
                self.events.emit("model.load_failed", model=record.name, tenant=record.owner, reason=str(exc))
                self.models[record.name] = record
                continue
            _seed_warm(resident, record.probe)
            self.executor.install(resident)
            self.models[record.name] = record
            # Acknowledged models come back even if the budget shrank; over_budget says so.
            self.admission.charge(
                record.name, record.footprint_bytes, record.runtime, record.probe.get("runtime_overhead_bytes", 0)
            )
            self.events.emit(
                "model.loaded", model=record.name, tenant=record.owner, load_ms=round(load_ms, 3), restored=True
            )

    def _restore_pipelines(self) -> None:
        for name, owner, spec in self.store.list_pipelines():
            try:
                self.pipelines[name] = (owner, pl.parse_spec(spec))
            except ValueError as exc:  # written by an older tenantd whose spec this one reads differently
                log.error("pipeline %r of tenant %r is not restored: %s", name, owner, exc)
                self.events.emit("pipeline.not_restored", pipeline=name, tenant=owner, reason=str(exc))

    # ------------------------------------------------------------------ receiving and replying

    # The socket is a plain (blocking-API) ZeroMQ socket read from the event loop: its FD is
    # edge-triggered, so every wake-up reads until no message is left, and every send re-checks
    # for input (a send can consume the edge). This costs less per message than zmq.asyncio.

    def _read(self) -> None:
        self._read_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(READ_BATCH):
            if not _has_input(sock):
                return
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            try:
                self._handle(frames)
            except Exception:  # never let one message kill the loop
                log.exception("unhandled error handling a message")
        self._schedule_read()  # more waiting: let slots and control tasks run first

    def _schedule_read(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._read)

    def _handle(self, frames: Sequence[zmq.Frame]) -> None:
        # ROUTER prepends the peer identity; REQ peers add an empty delimiter, which we echo back.
        split = 2 if len(frames) > 1 and len(frames[1]) == 0 else 1
        envelope: Envelope = list(frames[:split])
        body = frames[split:]
        size = sum(len(f) for f in body)
        if size > self.policy.max_message_bytes:
            rid = protocol.peek_request_id(body[0]) if body else None
            self._reply_error(
                envelope,
                rid,
                ErrorCode.TOO_LARGE,
                f"message is {size} bytes; this daemon accepts at most {self.policy.max_message_bytes}",
                {"limit_bytes": self.policy.max_message_bytes, "size_bytes": size},
            )
            return
        try:
            request = protocol.decode_request(body, self.policy.max_message_bytes)
        except ProtocolError as exc:
            self._reply_error(envelope, exc.request_id, exc.code, exc.message, exc.details)
            return
        try:
            self._identify(request, frames[0])
        except ClientError as exc:
            self._reply_error(envelope, request.id, exc.code, exc.message, exc.details, request)
            return
        model = request.args.get("model")
        if request.op == Op.INFER.value and isinstance(model, str) and model in self.pipelines:
            self.requests["pipeline_infer"] += 1
            task = asyncio.create_task(self._run_pipeline(request, envelope))
            self._control_tasks.add(task)  # the drain waits for it like any control operation
            task.add_done_callback(self._control_tasks.discard)
            return
        if request.op == Op.INFER.value:
            self.requests[request.op] += 1
            try:
                self._enqueue_infer(request, envelope)
            except ClientError as exc:
                self._reply_error(envelope, request.id, exc.code, exc.message, exc.details, request)
            return
        handler = self._ops.get(request.op)
        if handler is None:
            self._reply_error(
                envelope,
                request.id,
                ErrorCode.UNKNOWN_OP,
                f"unknown operation {request.op!r}",
                {"ops": sorted([*self._ops, Op.INFER.value])},
                request,
            )
            return
        self.requests[request.op] += 1
        task = asyncio.create_task(self._run_control(handler, request, envelope))
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _run_control(self, handler: Handler, request: Request, envelope: Envelope) -> None:
        try:
            result = await handler(request)
        except ClientError as exc:
            self._reply_error(envelope, request.id, exc.code, exc.message, exc.details, request)
            return
        except Exception as exc:
            log.exception("operation %s failed", request.op)
            self._reply_error(
                envelope, request.id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", None, request
            )
            return
        self._send(envelope, protocol.encode_reply(request.id, result))

    def _send(self, envelope: Envelope, frames: list[Any]) -> None:
        sock = self._sock
        assert sock is not None
        try:
            sock.send_multipart([*envelope, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the client disconnected; EAGAIN: it stopped reading its replies.
            log.warning("dropping a reply the client cannot take: %s", exc)
        if _has_input(sock):
            self._schedule_read()

    def _reply_error(
        self,
        envelope: Envelope,
        request_id: protocol.RequestId | None,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None = None,
        request: Request | None = None,
    ) -> None:
        self.errors[code.value] += 1
        self.events.emit(
            "request.error",
            id=request_id,
            op=request.op if request else None,
            tenant=request.tenant if request else None,
            code=code.value,
            message=message,
        )
        self._send(envelope, protocol.encode_error(request_id, code, message, details))

    # ------------------------------------------------------------------ inference

    def _identify(self, request: Request, frame: zmq.Frame) -> None:
        """Who sent ``request``: its key under --auth keys, its header otherwise."""
        if self.keyring is None:
            request.operator = request.tenant is None  # header mode: tenantctl without --tenant
            return
        identity = auth.identity_of(frame)
        key = auth.key_of(frame)
        # The key must still belong to that identity: withdrawn or replaced keys lose their open
        # connections here, request by request.
        if identity is None or key is None or self.keyring.identity_for(key) != identity:
            raise ClientError(ErrorCode.FORBIDDEN, "this connection's key is not registered (or no longer)")
        if identity.is_operator:
            request.operator = True  # may name a tenant in the header to act for it
        elif request.tenant not in (None, identity.name):
            raise ClientError(
                ErrorCode.FORBIDDEN, f"this key belongs to tenant {identity.name!r}, not {request.tenant!r}"
            )
        else:
            request.tenant = identity.name

    def _check_tenant(self, request: Request) -> str:
        tenant = request.tenant
        if tenant is None:
            raise ClientError(ErrorCode.FORBIDDEN, f"operation {request.op!r} needs a tenant in the header")
        if not NAME_RE.fullmatch(tenant):
            raise ClientError(ErrorCode.BAD_REQUEST, f"tenant name {tenant!r} is not valid ({NAME_RE.pattern})")
        return tenant

    def _named_model(self, request: Request) -> ModelRecord:
        name = request.args.get("model")
        if not isinstance(name, str) or not name:
            raise ClientError(ErrorCode.BAD_REQUEST, "args.model must name a model")
        record = self.models.get(name)
        if record is None:
            raise ClientError(ErrorCode.UNKNOWN_MODEL, f"no model named {name!r}")
        return record

    def _owned_model(self, request: Request) -> ModelRecord:
        tenant = self._check_tenant(request)
        record = self._named_model(request)
        name = record.name
        if record.owner != tenant:
            raise ClientError(ErrorCode.FORBIDDEN, f"model {name!r} belongs to another tenant")
        return record

    def _enqueue_infer(self, request: Request, envelope: Envelope) -> None:
        if self._draining:
            raise ClientError(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
        record = self._owned_model(request)
        inputs = match_inputs(record.inputs, request.tensors)
        self._check_device()
        resident = self.executor.resident.get(record.name)
        if resident is None:
            raise ClientError(ErrorCode.RUNTIME_ERROR, f"model {record.name!r} could not be loaded (see events)")
        deadline_ms = request.deadline_ms if request.deadline_ms is not None else self.policy.default_deadline_ms
        deadline = None if deadline_ms is None else time.monotonic() + deadline_ms / 1e3
        job = Job(
            tenant=record.owner,
            model=record.name,
            payload=InferPayload(request.id, envelope, inputs, record, resident),
            deadline=deadline,
        )
        try:
            self.scheduler.submit(job)
        except QueueFull as exc:
            raise ClientError(ErrorCode.QUEUE_FULL, str(exc), {"scope": exc.scope, "limit": exc.limit}) from None

    def _execute(self, job: Job, slot: int) -> None:
        """On a slot thread: run the job, then hand the result to the event loop to answer."""
        payload: InferPayload = job.payload
        loop = self._loop
        assert loop is not None
        if self.executor.resident.get(job.model) is not payload.resident:
            # Removed (and perhaps re-created by someone else) or replaced while this waited: the
            # owner and input checks no longer hold, so it must not run.
            loop.call_soon_threadsafe(
                self._drop_job,
                job,
                ErrorCode.UNKNOWN_MODEL,
                f"model {job.model!r} was removed or replaced while this request waited",
            )
            return
        if self.device_lost is not None:  # queued before the device went: do not touch it
            loop.call_soon_threadsafe(self._drop_job, job, ErrorCode.DEVICE_UNAVAILABLE, self._device_message())
            return
        try:
            result = self.executor.run(payload.resident, payload.inputs, slot)
        except DeviceLost as exc:
            loop.call_soon_threadsafe(self._device_lost_by, job, str(exc))
            return
        except RuntimeFailure as exc:
            loop.call_soon_threadsafe(self._drop_job, job, ErrorCode.RUNTIME_ERROR, f"model {job.model!r}: {exc}")
            return
        loop.call_soon_threadsafe(self._answer_infer, job, slot, result)

    def _answer_infer(self, job: Job, slot: int, result: RunResult) -> None:
        payload: InferPayload = job.payload
        self._unload_retired()
        if not self.scheduler.settle(job):
            return
        switch, warm_median, overhead = self.executor.account(payload.resident, result)
        timings: dict[str, Any] = {
            "queue_ms": round((job.started - job.enqueued) * 1e3, 4),
            "compute_ms": round(result.compute_ms, 4),
            "total_ms": round((time.monotonic() - job.enqueued) * 1e3, 4),
            "switch": switch,
            "slot": slot,
        }
        if switch:
            timings["switched_from"] = result.previous
            reload = result.reload
            if reload is not None:
                timings["load_ms"] = round(reload.load_ms, 4)
            self.events.emit(
                "switch",
                slot=slot,
                **{"from": result.previous, "to": job.model},
                reload=reload is not None,
                load_ms=None if reload is None else round(reload.load_ms, 4),
                evicted=[] if reload is None else reload.evicted,
                compute_ms=round(result.compute_ms, 4),
                warm_median_ms=None if warm_median is None else round(warm_median, 4),
                # load (if any) + this first inference - the model's warm median
                overhead_ms=None if overhead is None else round(overhead, 4),
            )
        names = [spec.name for spec in payload.record.outputs]
        if payload.future is not None:
            if not payload.future.done():
                payload.future.set_result((list(zip(names, result.outputs, strict=True)), timings))
            return
        self._send(
            payload.envelope,
            protocol.encode_reply(
                payload.request_id, tensors=list(zip(names, result.outputs, strict=True)), timings=timings
            ),
        )

    def _job_done(self, job: Job) -> None:
        """On a slot thread, once the job's model is idle: a retired model may be unloadable now."""
        if self._retired and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._unload_retired)
            except RuntimeError:  # the loop is closed: the process is exiting anyway
                pass

    def _retire(self, resident: Resident | None) -> None:
        """A model was removed or replaced: unload it once no slot is running it."""
        if resident is None:
            return
        swapping = self.executor.swapping
        if swapping is not None and resident.model is not None:
            # Its memory is no longer the served model's: the ledger stops charging it now (a
            # replacement is charged when it is loaded).
            swapping.evicted(resident)
        self._retired.append(resident)
        self._unload_retired()

    def _unload_retired(self) -> None:
        if self._retired:
            busy = [r for r in self._retired if self.scheduler.is_busy(r.name)]
            for resident in self._retired:
                if resident not in busy:
                    Executor.unload(resident)
            self._retired = busy

    # ------------------------------------------------------------------ a lost device

    def _device_message(self) -> str:
        lost = self.device_lost or {}
        return (
            f"device {self.config.device} is unavailable since {lost.get('since_iso', '?')} "
            f"({lost.get('reason', 'lost')}); the daemon is retrying it"
        )

    def _check_device(self) -> None:
        if self.device_lost is not None:
            details = {k: self.device_lost[k] for k in ("device", "since", "reason", "retries")}
            raise ClientError(ErrorCode.DEVICE_UNAVAILABLE, self._device_message(), details)

    def _mark_device_lost(self, reason: str, model: str | None) -> None:
        """On the loop: the runtime reported the device gone. Mark it, say so once, start retrying."""
        if self.device_lost is not None:
            return
        now = time.time()
        self.device_lost = {
            "device": self.config.device,
            "since": now,
            "since_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "reason": reason,
            "retries": 0,
        }
        log.warning("device %s lost (%s): inference fails until it is back; retrying", self.config.device, reason)
        self.events.emit("device.lost", device=self.config.device, model=model, reason=reason)
        self._device_retry = asyncio.create_task(self._retry_device(), name="device-retry")

    def _device_lost_by(self, job: Job, reason: str) -> None:
        """On the loop: a job's run found the device gone."""
        self._mark_device_lost(reason, job.model)
        self._drop_job(job, ErrorCode.DEVICE_UNAVAILABLE, f"model {job.model!r}: {reason}")

    async def _retry_device(self) -> None:
        """Reload every loaded model on a fresh runtime, on a backoff, until it works; then serve again."""
        loop = asyncio.get_running_loop()
        delay, longest = self.device_retry_s
        while self.device_lost is not None and not self._draining:
            await asyncio.sleep(delay)
            if self.scheduler.running:  # let in-flight runs fail or finish before the runtime is replaced
                continue
            lost = self.device_lost
            lost["retries"] += 1
            try:
                reloaded = await loop.run_in_executor(None, self.executor.reopen_device, self._model_path)
            except (RuntimeFailure, RuntimeNotAvailable, OSError) as exc:
                self.events.emit(
                    "device.retry_failed", device=self.config.device, attempt=lost["retries"], reason=str(exc)
                )
                delay = min(delay * 2, longest)
                continue
            down_s = round(time.time() - lost["since"], 3)
            self.device_lost = None
            log.info("device %s is back after %.1f s; %d model(s) reloaded", self.config.device, down_s, len(reloaded))
            self.events.emit(
                "device.recovered",
                device=self.config.device,
                down_s=down_s,
                attempts=lost["retries"],
                reloaded=reloaded,
            )

    def _model_path(self, name: str) -> Path:
        return self.store.blob_path(self.models[name].sha256)

    def _drop_job(self, job: Job, code: ErrorCode, message: str) -> None:
        self._unload_retired()
        if not self.scheduler.settle(job):
            return  # already answered (the drain gave up on it)
        payload: InferPayload = job.payload
        if payload.future is not None:
            if not payload.future.done():
                payload.future.set_exception(ClientError(code, message, {"tenant": job.tenant}))
            return
        self._reply_error(payload.envelope, payload.request_id, code, message, {"tenant": job.tenant})

    # ------------------------------------------------------------------ control operations

    async def _op_ping(self, request: Request) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "protocol": protocol.PROTOCOL_VERSION}

    async def _op_status(self, request: Request) -> dict[str, Any]:
        status = self._status()
        if self.keyring is not None and not request.operator:
            # A tenant sees the device, not the other tenants.
            status["tenants"] = [request.tenant]
            status["queue_depths"] = {t: n for t, n in status["queue_depths"].items() if t == request.tenant}
            own = {name for name, r in self.models.items() if r.owner == request.tenant}
            status["resident"] = [m for m in status["resident"] if m in own]
            status["residency"]["loaded"] = [m for m in status["residency"]["loaded"] if m in own]
            status["models"] = len(own)
            status["damaged_models"] = [d for d in status["damaged_models"] if d["tenant"] == request.tenant]
            refusal = status["memory"]["last_refusal"]
            if refusal is not None and refusal["tenant"] != request.tenant:
                status["memory"]["last_refusal"] = None
        return status

    def _status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "device": self.config.device,
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started, 3),
            "state": "draining" if self._draining else "serving",
            "auth": self.auth_mode,
            "slots": self.slots,
            "threads_per_model": self.threads,
            "queued": self.scheduler.queued,
            "running": self.scheduler.running,
            "queue_depths": self.scheduler.queue_depths(),
            "models": len(self.models),
            "damaged_models": self.store.damaged_models(),
            "resident": self._loaded_models(),
            "tenants": sorted({r.owner for r in self.models.values()}),
            "switches": self.executor.switches,
            "memory": self._memory_status(),
            "residency": self._residency_status(),
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "runtimes": available_runtimes(),
            "device_state": "lost" if self.device_lost is not None else "available",
            "device_lost": None
            if self.device_lost is None
            else {k: self.device_lost[k] for k in ("since", "reason", "retries")},
        }

    def _is_loaded(self, model: str) -> bool:
        served = self.executor.resident.get(model)
        return served is not None and served.model is not None

    def _loaded_models(self) -> list[str]:
        return sorted(r.name for r in list(self.executor.resident.values()) if r.model is not None)

    def _residency_status(self) -> dict[str, Any]:
        ex = self.executor
        swapping = ex.swapping
        return {
            "swapping": swapping.unit if swapping else None,
            "room_bytes": swapping.room() if swapping else None,
            "loaded": self._loaded_models(),
            "loaded_bytes": ex.loaded_size() if swapping else None,
            "reloads": ex.reloads,
            "evictions": ex.evictions,
            "switches": ex.switches,
            "mean_switch_overhead_ms": (
                round(ex.switch_overhead_ms / ex.switches_measured, 4) if ex.switches_measured else None
            ),
        }

    def _memory_status(self) -> dict[str, Any]:
        budget = self.admission.budget()
        return {
            "profile": self.profile.name,
            "emulated": self.emulated,
            "overcommit": self.policy.overcommit,
            **budget.to_wire(),
            "runtime_overhead_bytes": dict(self.admission.ledger.runtime_overhead),
            "models_admitted": len(self.admission.ledger.models),
            "last_refusal": self._last_refusal,  # the memory bound met most recently, explained
        }

    def _check_operator(self, request: Request) -> None:
        if not request.operator:
            raise ClientError(ErrorCode.FORBIDDEN, f"only the operator may use {request.op!r}; tenants may not")

    async def _op_policy_show(self, request: Request) -> dict[str, Any]:
        if self.keyring is not None:
            self._check_operator(request)  # it holds every tenant's quotas
        return {"policy": self.policy.model_dump(), "restart_only": list(RESTART_ONLY)}

    async def _op_policy_set(self, request: Request) -> dict[str, Any]:
        """Apply a new policy without a restart. Models that no longer fit are kept and said so."""
        self._check_operator(request)
        text = request.args.get("toml")
        if not isinstance(text, str):
            raise ClientError(ErrorCode.BAD_REQUEST, "args.toml must hold the policy file's text")
        try:
            new = parse_policy(text, "the new policy")
        except ConfigError as exc:
            raise ClientError(ErrorCode.BAD_REQUEST, str(exc)) from None
        old = self.policy
        fixed = [f for f in RESTART_ONLY if getattr(new, f) != getattr(old, f)]
        if fixed:
            raise ClientError(
                ErrorCode.BAD_REQUEST,
                f"{', '.join(fixed)} cannot change while the daemon runs; restart it with the new policy",
                {"restart_only": fixed},
            )
        if self.profile.memory_model is MemoryModel.DEDICATED and not (
            self.profile.capacity_bytes or new.capacity_bytes
        ):
            raise ClientError(
                ErrorCode.BAD_REQUEST, f"profile {self.profile.name!r} has no fixed capacity: keep capacity_bytes set"
            )
        changed = sorted(k for k, v in new.model_dump().items() if v != old.model_dump()[k])
        self.policy = new
        self.scheduler.reconfigure(
            new.discipline,
            new.queue_depth_per_tenant,
            new.queue_depth_total,
            new.max_pass_over,
            lambda tenant: self.policy.tenant(tenant).weight,
        )
        self.admission.reconfigure(capacity_bytes=new.capacity_bytes, reserve_bytes=new.reserve_bytes)
        self.events.max_bytes = new.event_log_max_bytes
        await self.uplinks.keep_only(new.uplinks.values())  # a withdrawn uplink's connection goes
        self.events.emit("policy.changed", changed=changed)
        return {"changed": changed, "consequences": self._policy_consequences()}

    def _policy_consequences(self) -> list[str]:
        """What the current policy means for models already admitted: nothing is dropped."""
        notes = []
        budget = self.admission.budget()
        if budget.free_bytes < 0:
            note = (
                f"the {self.profile.name} budget is now {budget.budget_bytes} bytes with {budget.used_bytes} in use: "
                "admitted models stay; new models are refused until some are removed"
            )
            if self.executor.swapping is not None:
                note += " (swapping unloads idle models as others are needed)"
            notes.append(note)
            self.events.emit("admission.over_budget", **self._device_context(), **budget.to_wire())
        for tenant in sorted({r.owner for r in self.models.values()}):
            rules = self.policy.tenant(tenant)
            owned = self._tenant_models(tenant, besides="")
            used = sum(r.footprint_bytes for r in owned)
            over = []
            if rules.max_models is not None and len(owned) > rules.max_models:
                over.append(f"has {len(owned)} models, over its new limit of {rules.max_models}")
            if rules.memory_quota_bytes is not None and used > rules.memory_quota_bytes:
                over.append(f"uses {used} bytes, over its new quota of {rules.memory_quota_bytes}")
            for what in over:
                note = f"tenant {tenant!r} {what}: its models stay; new ones are refused"
                notes.append(note)
                self.events.emit("quota.exceeded", tenant=tenant, note=note)
        return notes

    async def _op_list_models(self, request: Request) -> dict[str, Any]:
        tenant = request.tenant
        records = [r for r in self.models.values() if tenant is None or r.owner == tenant]
        return {"models": [self._model_info(r) for r in records]}

    def _model_info(self, record: ModelRecord) -> dict[str, Any]:
        info = record.to_wire()
        served = self.executor.resident.get(record.name)
        info["resident"] = served is not None and served.model is not None  # loaded right now
        return info

    async def _op_metrics(self, request: Request) -> dict[str, Any]:
        """The status as Prometheus text (operator only under keys: it names every tenant)."""
        if self.keyring is not None:
            self._check_operator(request)
        return {"text": metrics.render(self._status())}

    async def _op_reload_keys(self, request: Request) -> dict[str, Any]:
        """Operator: re-read the keys folder; new and removed keys apply to new requests."""
        self._check_operator(request)
        if self.authenticator is None or self.keyring is None:
            raise ClientError(ErrorCode.BAD_REQUEST, "this daemon runs with --auth header: it has no keys")
        try:
            self.authenticator.reload()
        except auth.AuthConfigError as exc:
            raise ClientError(ErrorCode.BAD_REQUEST, f"keys not reloaded, the old ones stay: {exc}") from None
        identities = [str(i) for i in self.keyring.identities()]
        self.events.emit("keys.reloaded", identities=identities)
        return {"identities": identities}

    async def _op_events(self, request: Request) -> dict[str, Any]:
        if self.keyring is not None:
            self._check_operator(request)  # the log names every tenant
        limit = request.args.get("limit", 100)
        kind = request.args.get("event")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_EVENTS_PER_REPLY:
            raise ClientError(ErrorCode.BAD_REQUEST, f"args.limit must be an int in 1..{MAX_EVENTS_PER_REPLY}")
        if kind is not None and not isinstance(kind, str):
            raise ClientError(ErrorCode.BAD_REQUEST, "args.event must be a string")
        loop = asyncio.get_running_loop()
        events = await loop.run_in_executor(None, self.events.tail, limit, kind)
        return {"events": events}

    async def _op_remove_model(self, request: Request) -> dict[str, Any]:
        # The operator may remove any model; a tenant only its own.
        operator = request.operator and request.tenant is None
        record = self._named_model(request) if operator else self._owned_model(request)
        # Not while a submission of the same name (a replace) is between admission and install.
        async with self._submitting.setdefault(record.name, asyncio.Lock()):
            record = self._named_model(request) if operator else self._owned_model(request)
            return await self._remove(record)

    async def _remove(self, record: ModelRecord) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.store.remove_model, record.name)
        self.models.pop(record.name, None)
        self.admission.release(record.name)
        self._retire(self.executor.evict(record.name))
        self.events.emit("model.removed", model=record.name, tenant=record.owner)
        return {"removed": record.name}

    # ------------------------------------------------------------------ pipelines

    async def _op_pipeline_set(self, request: Request) -> dict[str, Any]:
        """A tenant defines (or with ``replace``, redefines) a pipeline: its edge model here,
        chained through an operator's uplink to a model on another daemon (tenantd/pipelines.py)."""
        tenant = self._check_tenant(request)
        name = request.args.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ClientError(ErrorCode.BAD_REQUEST, f"args.name must be a valid name ({NAME_RE.pattern})")
        spec_args = request.args.get("spec")
        if not isinstance(spec_args, dict):
            raise ClientError(ErrorCode.BAD_REQUEST, "args.spec must be a map (docs/protocol.md, pipeline_set)")
        try:
            spec = pl.parse_spec(spec_args)
        except ValueError as exc:
            raise ClientError(ErrorCode.BAD_REQUEST, str(exc)) from None
        if spec.uplink in self.policy.uplinks and not self.policy.uplinks[spec.uplink].allows(tenant):
            raise ClientError(
                ErrorCode.FORBIDDEN, f"the operator has not given tenant {tenant!r} uplink {spec.uplink!r}"
            )
        if spec.uplink not in self.policy.uplinks:
            raise ClientError(
                ErrorCode.BAD_REQUEST,
                f"no uplink named {spec.uplink!r}; configured: {sorted(self.policy.uplinks) or 'none'}",
            )
        edge = self.models.get(spec.edge_model)
        if edge is None:
            raise ClientError(ErrorCode.UNKNOWN_MODEL, f"no model named {spec.edge_model!r} (the edge model)")
        if edge.owner != tenant:
            raise ClientError(ErrorCode.FORBIDDEN, f"model {spec.edge_model!r} belongs to another tenant")
        if spec.kind == "cascade" and spec.confidence_output is not None:
            if spec.confidence_output not in [o.name for o in edge.outputs]:
                raise ClientError(
                    ErrorCode.BAD_REQUEST,
                    f"{spec.edge_model!r} has no output {spec.confidence_output!r} "
                    f"(outputs: {[o.name for o in edge.outputs]})",
                )
        replace = bool(request.args.get("replace", False))
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, self.store.put_pipeline, name, tenant, spec.model_dump(exclude_defaults=True), replace
            )
        except PermissionError:
            raise ClientError(ErrorCode.FORBIDDEN, f"pipeline {name!r} belongs to another tenant") from None
        except KeyError:
            what = "a model" if name in self.models else "a pipeline"
            raise ClientError(
                ErrorCode.ALREADY_EXISTS,
                f"{what} named {name!r} exists" + ("; pass replace to redefine it" if what == "a pipeline" else ""),
            ) from None
        self.pipelines[name] = (tenant, spec)
        self.events.emit("pipeline.set", pipeline=name, tenant=tenant, **spec.model_dump())
        return {"pipeline": self._pipeline_info(name)}

    async def _op_pipeline_remove(self, request: Request) -> dict[str, Any]:
        operator = request.operator and request.tenant is None
        tenant = None if operator else self._check_tenant(request)
        name = request.args.get("name")
        entry = self.pipelines.get(name) if isinstance(name, str) else None
        if entry is None or not isinstance(name, str):
            raise ClientError(ErrorCode.UNKNOWN_MODEL, f"no pipeline named {name!r}")
        if tenant is not None and entry[0] != tenant:
            raise ClientError(ErrorCode.FORBIDDEN, f"pipeline {name!r} belongs to another tenant")
        await asyncio.get_running_loop().run_in_executor(None, self.store.remove_pipeline, name)
        self.pipelines.pop(name, None)
        self.events.emit("pipeline.removed", pipeline=name, tenant=entry[0])
        return {"removed": name}

    async def _op_list_pipelines(self, request: Request) -> dict[str, Any]:
        tenant = request.tenant
        names = [n for n, (owner, _) in self.pipelines.items() if tenant is None or owner == tenant]
        return {"pipelines": [self._pipeline_info(n) for n in names]}

    def _pipeline_info(self, name: str) -> dict[str, Any]:
        owner, spec = self.pipelines[name]
        return {"name": name, "owner": owner, **spec.model_dump()}

    async def _run_pipeline(self, request: Request, envelope: Envelope) -> None:
        """``infer`` on a pipeline's name: the edge stage through this daemon's own scheduler
        (same queues, quotas and deadlines as any request), then the cloud stage."""
        try:
            if self._draining:
                raise ClientError(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
            tenant = self._check_tenant(request)
            name = cast(str, request.args["model"])
            owner, spec = self.pipelines[name]
            if owner != tenant:
                raise ClientError(ErrorCode.FORBIDDEN, f"pipeline {name!r} belongs to another tenant")
            uplink = self.policy.uplinks.get(spec.uplink)
            if uplink is None or not uplink.allows(tenant):  # the operator withdrew it by a policy reload
                raise ClientError(ErrorCode.UPSTREAM_ERROR, f"uplink {spec.uplink!r} is no longer configured for you")
            edge = self.models.get(spec.edge_model)
            if edge is None or edge.owner != tenant:
                raise ClientError(ErrorCode.UNKNOWN_MODEL, f"the edge model {spec.edge_model!r} is gone")
            inputs = match_inputs(edge.inputs, request.tensors)

            async def run_local(model: str, tensors: Sequence[np.ndarray]) -> tuple[pl.Tensors, dict[str, Any]]:
                return await self._infer_local(request, model, list(tensors))

            result = await pl.run_pipeline(
                name, spec, uplink, self.uplinks, inputs, [s.name for s in edge.inputs], run_local
            )
        except ClientError as exc:
            self._reply_error(envelope, request.id, exc.code, exc.message, exc.details, request)
            return
        except pl.PipelineError as exc:
            self.events.emit("pipeline.failed", pipeline=request.args.get("model"), code=exc.code.value, **exc.details)
            self._reply_error(envelope, request.id, exc.code, exc.message, exc.details, request)
            return
        except asyncio.CancelledError:
            # The drain ran out while this waited for the cloud: say so, as for a dropped request.
            self._reply_error(
                envelope,
                request.id,
                ErrorCode.UNAVAILABLE,
                "the daemon shut down while this pipeline ran",
                None,
                request,
            )
            raise
        except Exception as exc:
            log.exception("pipeline request failed")
            self._reply_error(
                envelope, request.id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", None, request
            )
            return
        if result.timings.get("cloud_failed"):
            self.events.emit(
                "pipeline.cloud_failed", pipeline=name, cause=result.timings["cloud_failed"], answered_by="edge"
            )
        self._send(envelope, protocol.encode_reply(request.id, tensors=result.outputs, timings=result.timings))

    async def _infer_local(
        self, request: Request, model: str, inputs: list[np.ndarray]
    ) -> tuple[pl.Tensors, dict[str, Any]]:
        """Run ``model`` through the scheduler and wait for its outputs (a pipeline's local stage)."""
        record = self.models.get(model)
        resident = self.executor.resident.get(model)
        if record is None or resident is None:
            raise ClientError(ErrorCode.UNKNOWN_MODEL, f"model {model!r} is not served here")
        deadline_ms = request.deadline_ms if request.deadline_ms is not None else self.policy.default_deadline_ms
        future: asyncio.Future[tuple[pl.Tensors, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        job = Job(
            tenant=record.owner,
            model=record.name,
            payload=InferPayload(request.id, [], inputs, record, resident, future),
            deadline=None if deadline_ms is None else time.monotonic() + deadline_ms / 1e3,
        )
        try:
            self.scheduler.submit(job)
        except QueueFull as exc:
            raise ClientError(ErrorCode.QUEUE_FULL, str(exc), {"scope": exc.scope, "limit": exc.limit}) from None
        return await future

    async def _op_submit_model(self, request: Request) -> dict[str, Any]:
        if self._draining:
            raise ClientError(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
        tenant = self._check_tenant(request)
        args = request.args
        name = args.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ClientError(
                ErrorCode.BAD_REQUEST, f"args.name {name!r} is not a valid model name ({NAME_RE.pattern})"
            )
        if name in self.pipelines:
            raise ClientError(
                ErrorCode.ALREADY_EXISTS, f"a pipeline named {name!r} exists (models and pipelines share names)"
            )
        replace = args.get("replace", False)
        filename = args.get("filename")
        if not isinstance(replace, bool) or (filename is not None and not isinstance(filename, str)):
            raise ClientError(ErrorCode.BAD_REQUEST, "args.replace must be a bool and args.filename a string")
        if len(request.frames) != 1 or request.tensors:
            raise ClientError(ErrorCode.BAD_REQUEST, "submit_model takes exactly one buffer frame: the model file")
        data = memoryview(request.frames[0]).cast("B")
        if data.nbytes == 0:
            raise ClientError(ErrorCode.INVALID_MODEL, "the model file is empty")
        self._check_name_free(name, tenant, replace)
        self._check_model_quota(name, tenant)
        self._check_device()
        runtime = args.get("runtime") or runtime_for_file(filename, self.config.device)
        if not isinstance(runtime, str):
            raise ClientError(ErrorCode.BAD_REQUEST, "args.runtime must be a string")
        try:
            check_device(get_runtime_class(runtime), self.config.device)
        except RuntimeNotAvailable as exc:
            raise ClientError(ErrorCode.RUNTIME_NOT_AVAILABLE, str(exc)) from None

        loop = asyncio.get_running_loop()
        sha, path = await loop.run_in_executor(None, self.store.put_blob, data)
        self.events.emit(
            "model.submitted", model=name, tenant=tenant, sha256=sha, size_bytes=data.nbytes, runtime=runtime
        )
        try:
            # One submission per name at a time, so the store and the served model agree; one per
            # tenant at a time, so its quotas count every model it has (none in flight).
            async with self._tenant_submitting.setdefault(tenant, asyncio.Lock()):
                async with self._submitting.setdefault(name, asyncio.Lock()):
                    self._check_name_free(name, tenant, replace)
                    self._check_model_quota(name, tenant)
                    return await self._admit(name, tenant, runtime, filename, sha, path, data.nbytes, replace)
        finally:
            self.store.release_blob(sha)  # deleted here if the submission failed

    def _tenant_models(self, tenant: str, besides: str) -> list[ModelRecord]:
        return [r for r in self.models.values() if r.owner == tenant and r.name != besides]

    def _check_model_quota(self, name: str, tenant: str) -> None:
        limit = self.policy.tenant(tenant).max_models
        have = len(self._tenant_models(tenant, besides=name))
        if limit is not None and have >= limit:
            details = {"quota": "max_models", "limit": limit, "models": have}
            self.events.emit("model.refused", model=name, tenant=tenant, code="ADMISSION_DENIED", **details)
            raise ClientError(
                ErrorCode.ADMISSION_DENIED, f"tenant {tenant!r} may have {limit} model(s) and has {have}", details
            )

    def _check_memory_quota(self, name: str, tenant: str, footprint: int) -> None:
        quota = self.policy.tenant(tenant).memory_quota_bytes
        if quota is None:
            return
        used = sum(r.footprint_bytes for r in self._tenant_models(tenant, besides=name))
        if used + footprint > quota:
            details = {
                "quota": "memory_quota_bytes",
                "limit": quota,
                "used_bytes": used,
                "footprint_bytes": footprint,
                "shortfall_bytes": used + footprint - quota,
            }
            self.events.emit("model.refused", model=name, tenant=tenant, code="ADMISSION_DENIED", **details)
            raise ClientError(
                ErrorCode.ADMISSION_DENIED,
                f"tenant {tenant!r} has a memory quota of {quota / 2**20:.1f} MiB with {used / 2**20:.1f} MiB "
                f"in use; this model needs {footprint / 2**20:.1f} MiB",
                details,
            )

    def _check_name_free(self, name: str, tenant: str, replace: bool) -> None:
        existing = self.models.get(name)
        if existing is not None and existing.owner != tenant:
            raise ClientError(ErrorCode.FORBIDDEN, f"model name {name!r} belongs to another tenant")
        if existing is not None and not replace:
            raise ClientError(ErrorCode.ALREADY_EXISTS, f"you already have a model named {name!r}; pass replace=True")

    async def _admit(
        self, name: str, tenant: str, runtime: str, filename: str | None, sha: str, path: Path, size: int, replace: bool
    ) -> dict[str, Any]:
        async with self._probe_slots:
            probe = await probe_model(runtime, path, self.threads, self.policy.probe_timeout_s, self.config.device)
        if not probe.ok:
            self.events.emit(
                "model.refused", model=name, tenant=tenant, code=ErrorCode.INVALID_MODEL.value, reason=probe.reason
            )
            raise ClientError(ErrorCode.INVALID_MODEL, f"{runtime} cannot use this file: {probe.reason}", probe.details)
        self.events.emit(
            "model.probed",
            model=name,
            tenant=tenant,
            footprint_bytes=probe.footprint_bytes,
            load_ms=round(probe.load_ms, 3),
            first_infer_ms=round(probe.first_infer_ms, 3),
            **probe.details,
        )
        self._check_memory_quota(name, tenant, probe.footprint_bytes)
        previous_charge = self.admission.ledger.models.get(name)
        decision = self.admission.decide(
            name,
            probe.footprint_bytes,
            runtime,
            int(probe.details.get("runtime_overhead_bytes", 0)),
            # Swapped models are charged while loaded; admission asks only that each could be.
            swappable=self.policy.overcommit == "swap" and self.profile.memory_model is not MemoryModel.CACHE,
        )
        context = {**self._device_context(), **decision.to_wire()}
        if not decision.admitted:
            self.events.emit(
                "model.refused",
                model=name,
                tenant=tenant,
                code=ErrorCode.ADMISSION_DENIED.value,
                reason=decision.explain(),
                **context,
            )
            self._last_refusal = {
                "ts": round(time.time(), 3),
                "model": name,
                "tenant": tenant,
                "reason": decision.explain(),
            }
            raise ClientError(ErrorCode.ADMISSION_DENIED, decision.explain(), context)
        self.events.emit("model.admitted", model=name, tenant=tenant, **context)
        try:
            return await self._load_and_store(name, tenant, runtime, filename, sha, path, size, replace, probe)
        except BaseException:
            self.admission.uncharge(name, previous_charge)
            raise

    def _swapping(self) -> Swapping:
        if self.profile.memory_model is MemoryModel.CACHE:
            # Residency in the on-chip cache, counted in parameter bytes; host memory (the
            # admission ledger) holds every admitted model either way.
            cache = self.profile.cache_bytes or 0
            return Swapping(
                unit="parameters",
                room=lambda: cache - self.executor.loaded_size(),
                loaded=lambda r: self.admission.loaded(r.name, 0, r.runtime),
                evicted=lambda r: self.admission.unloaded(r.name),
                busy=self.scheduler.is_busy,
            )

        # overcommit = "swap": the ledger holds the loaded models only.
        def loaded(resident: Resident) -> None:
            if self.executor.resident.get(resident.name) is not resident:
                return  # removed or replaced while it loaded: not charged; unloaded once idle
            self.admission.charge(resident.name, resident.size, resident.runtime, resident.runtime_overhead)
            self.admission.loaded(resident.name, 0, resident.runtime)

        return Swapping(
            unit="footprint",
            room=lambda: self.admission.budget().free_bytes,
            loaded=loaded,
            evicted=lambda r: self.admission.release(r.name),
            busy=self.scheduler.is_busy,
        )

    def _device_context(self) -> dict[str, Any]:
        return {
            "device": self.config.device,
            "profile": self.profile.name,
            "emulated": self.emulated,
            "models_resident": len(self._loaded_models()),
        }

    async def _load_and_store(
        self,
        name: str,
        tenant: str,
        runtime: str,
        filename: str | None,
        sha: str,
        path: Path,
        size: int,
        replace: bool,
        probe: ProbeResult,
    ) -> dict[str, Any]:
        try:
            if self.executor.swapping is not None:
                # Loaded by the first request that needs it (a measured reload), not here.
                resident, load_ms = self._swappable(name, runtime, path, probe.footprint_bytes, probe.details), 0.0
            else:
                async with self._load_lock:  # one load at a time, so the growth measured is this one's
                    rss_before = rss_bytes()
                    resident, load_ms = await self.executor.load(name, runtime, path)
                    self.admission.loaded(name, rss_bytes() - rss_before, runtime)
                    _seed_warm(resident, probe.details)
        except DeviceLost as exc:
            self._mark_device_lost(str(exc), name)
            raise ClientError(ErrorCode.DEVICE_UNAVAILABLE, f"the device was lost loading the model: {exc}") from None
        except RuntimeFailure as exc:
            self.events.emit(
                "model.refused", model=name, tenant=tenant, code=ErrorCode.RUNTIME_ERROR.value, reason=str(exc)
            )
            raise ClientError(
                ErrorCode.RUNTIME_ERROR, f"the probe passed but the daemon could not load it: {exc}"
            ) from None
        record = ModelRecord(
            name=name,
            owner=tenant,
            sha256=sha,
            size_bytes=size,
            runtime=runtime,
            filename=filename,
            inputs=tuple(TensorSpec.from_wire(s) for s in probe.inputs),
            outputs=tuple(TensorSpec.from_wire(s) for s in probe.outputs),
            footprint_bytes=probe.footprint_bytes,
            load_ms=probe.load_ms,
            first_infer_ms=probe.first_infer_ms,
            probe=probe.details,
        )
        loop = asyncio.get_running_loop()
        try:
            # Durable before acknowledged: the reply goes out only after this commit.
            await loop.run_in_executor(None, self.store.add_model, record, replace)
        except PermissionError:
            Executor.unload(resident)
            raise ClientError(ErrorCode.FORBIDDEN, f"model name {name!r} belongs to another tenant") from None
        except KeyError:
            Executor.unload(resident)
            raise ClientError(ErrorCode.ALREADY_EXISTS, f"you already have a model named {name!r}") from None
        replaced = self.models.get(name)
        self.models[name] = record
        old = self.executor.install(resident)
        self._retire(old)
        if replaced is not None and replaced.sha256 != sha:
            await loop.run_in_executor(None, self.store.discard_blob_if_unreferenced, replaced.sha256)
        self.events.emit("model.loaded", model=name, tenant=tenant, load_ms=round(load_ms, 3), replaced=old is not None)
        return {"model": self._model_info(record)}


def lock_state_dir(state_dir: Path) -> TextIO:
    """Hold an exclusive lock on the state directory for the daemon's lifetime: two daemons
    writing one store and one event log would corrupt each other's view."""
    handle = (state_dir / "lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"state directory {state_dir} is in use by another tenantd (pid {owner})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def ipc_endpoint_in_use(path: str) -> bool:
    """True if a process accepts connections on the Unix socket ``path`` (binding would steal it)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False  # absent, or a stale file left by a dead daemon: safe to bind over
    finally:
        probe.close()
    return True


def _seed_warm(resident: Resident, probe: dict[str, Any]) -> None:
    """Start a model's warm window with the probe's second (warm) inference, so that even its
    first switch has an overhead to state."""
    warm = probe.get("warm_infer_ms")
    if isinstance(warm, (int, float)) and warm > 0 and not resident.warm_ms:
        resident.warm_ms.append(float(warm))


def _has_input(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


def match_inputs(specs: Sequence[TensorSpec], tensors: Sequence[tuple[str | None, np.ndarray]]) -> list[np.ndarray]:
    """Order ``tensors`` as the model's inputs and check each against its spec.

    A single unnamed tensor feeds a single-input model; otherwise every tensor is named and every
    input given exactly once."""

    def mismatch(message: str) -> ClientError:
        return ClientError(ErrorCode.INPUT_MISMATCH, message, {"inputs": [s.to_wire() for s in specs]})

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

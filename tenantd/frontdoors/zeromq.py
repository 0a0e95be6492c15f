"""The ZeroMQ front door: tenantd's own protocol on a ROUTER socket, every message answered.

It binds the endpoint (with CurveZMQ and the ZAP handler under ``--auth keys``), reads multipart
messages, decodes them with :mod:`tenantwire.protocol`, says who sent each (its key, or the header
on a local endpoint), and dispatches: ``infer`` to the inference core (or, on a pipeline's name,
to :mod:`tenantd.pipelines`), every other operation through the operations table as a task, so a
slow model probe never stalls other tenants. Every message gets exactly one reply; malformed
input gets a typed error, and an unexpected exception inside a handler becomes an INTERNAL reply
plus a log line, never a dead loop. :meth:`ZmqFrontDoor.reply_error` is the one place where a
refusal becomes an error reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import zmq

from tenantd import auth
from tenantd.catalog import Catalog, require_tenant
from tenantd.config import ConfigError, PolicyInForce
from tenantd.errors import Forbidden
from tenantd.events import Event, EventLog, Sampler
from tenantd.inference import Answer, InferenceCore, Outcome
from tenantd.metrics import Metrics
from tenantd.operations import Operation, Operations
from tenantd.pipelines import Pipelines
from tenantwire import curve, protocol
from tenantwire.errors import ErrorCode, ProtocolError, RequestId, TenantdError
from tenantwire.protocol import Op, Request

log = logging.getLogger("tenantd")

# Frames this far past the policy's message cap are cut off by ZeroMQ itself (no reply).
TRANSPORT_SLACK_BYTES = 64 * 1024 * 1024
# Messages read per wake-up before other tasks get a turn.
READ_BATCH = 64
# How long the socket may keep flushing replies after the drain, when closing.
CLOSE_LINGER_MS = 2000
# Replies queued for one peer that does not read them, beyond what its connection's kernel buffers
# hold; past this a reply to that peer is dropped (and counted). With every reply bounded in size
# (an events page by MAX_EVENTS_REPLY_BYTES, an inference by its model's outputs), this bounds the
# memory one peer can make the daemon hold. A reading client never comes near it.
PEER_SEND_HWM = 64

Envelope = list[Any]


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


def check_auth_mode(mode: str, endpoint: str) -> None:
    if mode not in ("header", "keys"):
        raise ConfigError(f"auth {mode!r} is not 'keys' or 'header'")
    if mode == "header" and not endpoint_is_local(endpoint):
        raise ConfigError(
            f"endpoint {endpoint} is reachable from other hosts, so tenants cannot name "
            "themselves in request headers there: use --auth keys (CurveZMQ), or bind ipc:// or a "
            "loopback tcp:// address"
        )


# pyzmq's constants are enum members, whose operators run in Python (about 1 us per use); the
# per-message path uses them as plain ints.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


def _has_input(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


class ZmqFrontDoor:
    def __init__(
        self,
        endpoint: str,
        auth_mode: str,
        state_dir: Path,
        policy: PolicyInForce,
        catalog: Catalog,
        core: InferenceCore,
        pipelines: Pipelines,
        events: EventLog,
        metrics: Metrics,
    ) -> None:
        check_auth_mode(auth_mode, endpoint)
        self.endpoint = endpoint
        self.auth_mode = auth_mode
        self._state_dir = state_dir
        self._policy = policy
        self._catalog = catalog
        self._core = core
        self._pipelines = pipelines
        self._events = events
        self._metrics = metrics
        self.operations: Operations | None = None  # set by the daemon before start()
        self.keyring: auth.KeyRing | None = None
        self.authenticator: auth.Authenticator | None = None
        self.tasks: set[asyncio.Task[None]] = set()  # control operations and pipelines in flight
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._read_scheduled = False
        self._error_events = Sampler()  # request.error lines, per code
        self._drop_logs = Sampler(burst=1)  # dropped-reply log lines, per reason

    # ------------------------------------------------------------------ lifecycle

    def bind(self) -> None:
        """Bind the endpoint; a bad one raises ConfigError before any model is loaded."""
        if self.endpoint.startswith("ipc://") and ipc_endpoint_in_use(self.endpoint[len("ipc://") :]):
            raise ConfigError(f"{self.endpoint} is already served by another process; stop it or pick another path")
        self._ctx = zmq.Context()
        if self.auth_mode == "keys":
            self.keyring = auth.KeyRing.load(self._state_dir)
            self.authenticator = auth.Authenticator(self._ctx, self.keyring)
            self.authenticator.start()  # before binding: ZAP must answer the first handshake
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, PEER_SEND_HWM)
        if self.keyring is not None:
            curve.configure_server(sock, self.keyring.server_keys())
        # Replies to a peer that has gone (or stopped reading) raise instead of vanishing silently.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # The policy cap is checked per message, after receipt, so that the sender gets TOO_LARGE.
        # This transport limit applies per frame (the cap plus some slack): ZeroMQ drops a
        # connection that sends a larger frame, without reading the rest or replying.
        sock.setsockopt(zmq.MAXMSGSIZE, self._policy().max_message_bytes + TRANSPORT_SLACK_BYTES)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._stop_authenticator()
            self._ctx.term()
            raise ConfigError(f"cannot bind {self.endpoint}: {exc}") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock

    def start(self) -> None:
        """Start answering (the daemon is ready)."""
        assert self._sock is not None
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)
        self._schedule_read()  # messages may have arrived before the reader was added

    def reload_keys(self) -> list[str]:
        """Re-read the keys folder (SIGHUP or reload_keys); raises AuthConfigError, keeping the old keys."""
        assert self.authenticator is not None and self.keyring is not None
        self.authenticator.reload()
        identities = [str(i) for i in self.keyring.identities()]
        self._events.emit(Event.KEYS_RELOADED, identities=identities)
        return identities

    async def cancel_tasks(self, timeout: float) -> None:
        """Wait up to ``timeout`` for operations in flight, then give up on the rest."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=max(0.0, timeout))
        for task in list(self.tasks):  # a probe still running past the drain: give up on it
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            self._sock = None  # a read already scheduled must find no socket
            sock.close(linger=CLOSE_LINGER_MS)
        self._stop_authenticator()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _stop_authenticator(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()  # its ZAP socket would keep the context from terminating
            self.authenticator = None

    # ------------------------------------------------------------------ receiving

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
            frames = sock.recv_multipart(_NOBLOCK, copy=False)
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
        try:
            self._dispatch(envelope, frames[split:], frames[0])
        except Exception as exc:  # noqa: BLE001 - a bug (logged there): the sender still gets its one reply
            self.reply_error(envelope, exc)

    def _dispatch(self, envelope: Envelope, body: Sequence[zmq.Frame], routing: zmq.Frame) -> None:
        size = sum(len(f) for f in body)
        limit = self._policy().max_message_bytes
        if size > limit:
            rid = protocol.peek_request_id(body[0]) if body else None
            message = f"message is {size} bytes; this daemon accepts at most {limit}"
            error = TenantdError(ErrorCode.TOO_LARGE, message, {"limit_bytes": limit, "size_bytes": size}, rid)
            self.reply_error(envelope, error)
            return
        try:
            request = protocol.decode_request(body, limit)
        except ProtocolError as exc:
            self.reply_error(envelope, exc)
            return
        try:
            self._identify(request, routing)
        except TenantdError as exc:
            self.reply_error(envelope, exc, request)
            return
        if request.op == Op.INFER.value:
            self._infer(request, envelope)
            return
        operation = self.operations.table.get(request.op) if self.operations else None
        if operation is None:
            known = sorted([*(self.operations.table if self.operations else ()), Op.INFER.value])
            error = TenantdError(ErrorCode.UNKNOWN_OP, f"unknown operation {request.op!r}", {"ops": known})
            self.reply_error(envelope, error, request)
            return
        self._spawn(self._run_operation(operation, request, envelope))

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
            raise Forbidden("this connection's key is not registered (or no longer)")
        if identity.is_operator:
            request.operator = True  # may name a tenant in the header to act for it
        elif request.tenant not in (None, identity.name):
            raise Forbidden(f"this key belongs to tenant {identity.name!r}, not {request.tenant!r}")
        else:
            request.tenant = identity.name

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)  # the drain waits for it
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ dispatching

    def _infer(self, request: Request, envelope: Envelope) -> None:
        model = request.args.get("model")
        if isinstance(model, str) and model in self._catalog.pipelines:
            self._spawn(self._run_pipeline(request, envelope))
            return
        try:
            tenant = require_tenant(request)
            self._core.submit(
                tenant, model, request.tensors, request.deadline_ms, partial(self._answer, envelope, request)
            )
        except TenantdError as exc:
            self.reply_error(envelope, exc, request)

    def _answer(self, envelope: Envelope, request: Request, outcome: Outcome) -> None:
        if isinstance(outcome, Answer):
            try:  # outputs of a dtype the wire cannot carry, say
                reply = protocol.encode_reply(request.id, tensors=outcome.outputs, timings=outcome.timings)
            except Exception as exc:  # noqa: BLE001 - answered as INTERNAL, and logged there
                self.reply_error(envelope, exc, request)
                return
            self._send(envelope, reply)
        else:
            self.reply_error(envelope, outcome, request)

    async def _run_operation(self, operation: Operation, request: Request, envelope: Envelope) -> None:
        assert self.operations is not None
        try:
            result = await self.operations.run(operation, request)
            reply = protocol.encode_reply(request.id, result)  # a result the wire cannot carry is a bug too
        except Exception as exc:  # noqa: BLE001 - a refusal, or a bug (logged there): either way it is answered
            self.reply_error(envelope, exc, request)
            return
        self._send(envelope, reply)

    async def _run_pipeline(self, request: Request, envelope: Envelope) -> None:
        try:
            answer = await self._pipelines.infer(request)
        except asyncio.CancelledError:
            # The drain ran out while this waited for the cloud: say so, as for a dropped request.
            error = TenantdError(ErrorCode.UNAVAILABLE, "the daemon shut down while this pipeline ran")
            self.reply_error(envelope, error, request)
            raise
        except Exception as exc:  # noqa: BLE001 - a refusal, or a bug (logged there): either way it is answered
            self.reply_error(envelope, exc, request)
            return
        self._answer(envelope, request, answer)

    # ------------------------------------------------------------------ replying

    def reply_error(self, envelope: Envelope, exc: BaseException, request: Request | None = None) -> None:
        """The one place a refusal (or an unexpected exception: INTERNAL) becomes an error reply."""
        if isinstance(exc, TenantdError):
            error = exc
        else:
            log.exception("%s failed", request.op if request else "a request", exc_info=exc)
            error = TenantdError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        request_id: RequestId | None = request.id if request is not None else error.request_id
        self._metrics.error_reply(error.code.value)
        # Every error is counted (status, metrics); the log gets a sample of each code.
        write, held_back = self._error_events.take(error.code.value)
        if write:
            self._events.emit(
                Event.REQUEST_ERROR,
                id=request_id,
                op=request.op if request else None,
                tenant=request.tenant if request else None,
                code=error.code.value,
                message=error.message,
                **({"not_logged_before": held_back} if held_back else {}),
            )
        self._send(envelope, protocol.encode_error(request_id, error.code, error.message, error.details))

    def _send(self, envelope: Envelope, frames: list[Any]) -> None:
        sock = self._sock
        if sock is None:
            return  # closed: the drain gave up on this reply
        try:
            # Frame by frame (send_multipart checks every part's type in Python first): a message
            # is all or nothing all the same, since ZeroMQ queues its parts until the last.
            for part in envelope:
                sock.send(part, _SEND_MORE, copy=False)
            last = len(frames) - 1
            for i, part in enumerate(frames):
                sock.send(part, _NOBLOCK if i == last else _SEND_MORE, copy=False)
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the client disconnected; EAGAIN: it stopped reading its replies.
            reason = "gone" if exc.errno == zmq.EHOSTUNREACH else "not reading"
            self._metrics.reply_dropped(reason)
            write, held_back = self._drop_logs.take(reason)
            if write:
                log.warning(
                    "dropping a reply the client cannot take (%s: %s); %d more dropped since the last such line",
                    reason,
                    exc,
                    held_back,
                )
        if _has_input(sock):
            self._schedule_read()

"""Tenant clients for tenantd: an asyncio client and a synchronous one sharing everything but I/O.

What each operation sends and how its reply becomes a return value is written once, in
:mod:`tenantclient.operations`; each client supplies only ``call`` (send one request, wait for its
reply) and a one-line method per operation.

One DEALER socket per client; every request carries a fresh id and its reply is matched back to
the waiting call by that id, so many requests may be in flight on one client at once. A reply that
arrives after its call gave up (timeout) is dropped, never mistaken for another call's answer.

    with TenantClient("ipc:///run/tenantd.sock", tenant="alice") as client:
        client.submit_model("mobilenet_v2.tflite", name="mnv2")
        probs = client.infer("mnv2", image)["probs"]
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message, recv_monitor_message

from tenantclient import operations
from tenantclient.errors import ClientClosed, KeyRefused, RequestTimeout, TenantError, error_for
from tenantclient.operations import (
    DEFAULT_SUBMIT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Call,
    InferResult,
    Inputs,
    ModelInfo,
)
from tenantclient.retry import RetryPolicy, as_policy
from tenantwire import curve, protocol
from tenantwire.errors import ProtocolError, RequestId
from tenantwire.protocol import Reply
from tenantwire.tensors import TensorEncoding

__all__ = [
    "DEFAULT_SUBMIT_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "AsyncTenantClient",
    "InferResult",
    "Inputs",
    "ModelInfo",
    "RetryPolicy",
    "TenantClient",
]

T = TypeVar("T")


def _curve_settings(
    key_file: str | os.PathLike[str] | None, server_key: bytes | str | os.PathLike[str] | None
) -> tuple[Path, bytes] | None:
    """(client certificate, server public key) for a CurveZMQ connection, or None for none."""
    if key_file is None and server_key is None:
        return None
    if key_file is None or server_key is None:
        raise ValueError("a CurveZMQ connection needs both key_file and server_key")
    if isinstance(server_key, bytes):
        return Path(key_file), server_key
    return Path(key_file), curve.load_public_key(Path(server_key))


class _Handshake:
    """What a CurveZMQ client's socket monitor says of its handshakes, as a refusal once it is
    certain. The daemon's ZAP handler refusing the client's key shows at once as
    ``HANDSHAKE_FAILED_AUTH``; a wrong server key (or a daemon without keys) shows only as a
    handshake that fails without detail (the daemon cannot read the client's greeting and hangs up),
    so that counts after twice in a row: a daemon stopping mid-handshake is not mistaken for it."""

    EVENTS = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_SUCCEEDED
    )
    FAILURES_IN_A_ROW = 2

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.refusal: KeyRefused | None = None
        self._failed_in_a_row = 0

    def see(self, event: int) -> KeyRefused | None:
        """Take one monitor event; the refusal, once there is one (it stays)."""
        if self.refusal is not None:
            return self.refusal
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._failed_in_a_row = 0
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.refusal = KeyRefused(
                f"the handshake failed: {self.endpoint} refused this client's key (unknown to the daemon, "
                "or withdrawn); once it is registered, use a new client"
            )
        elif event & (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self._failed_in_a_row += 1
            if self._failed_in_a_row >= self.FAILURES_IN_A_ROW:
                self.refusal = KeyRefused(
                    f"the handshake with {self.endpoint} failed: the server key is not this daemon's "
                    "(or the daemon does not use keys)"
                )
        return self.refusal


def _retrying(policy: RetryPolicy | None, call: Call[Any], error: TenantError, retry: int) -> bool:
    """Whether ``error``, the answer to try ``retry + 1`` of ``call``, is retried (see
    :mod:`tenantclient.retry`); if not, it leaves with ``attempts`` saying how many tries it took."""
    if policy is not None and policy.should_retry(call.op.value, error.code, retry):
        return True
    error.attempts = retry + 1
    return False


# pyzmq's constants are enum members, whose operators run in Python; the per-call path of the
# synchronous client uses them as plain ints.
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
_SEND_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


def _send_now(sock: zmq.Socket[bytes], frames: list[Any]) -> bool:
    """Send a request's frames without waiting; False if the socket cannot take them now (no
    live peer, or its queue is full), in which case none was sent: ZeroMQ refuses a message at its
    first part (a later part fails only if the connection breaks mid-message, and raises)."""
    last = len(frames) - 1
    try:
        sock.send(frames[0], _NOBLOCK if last == 0 else _SEND_MORE, copy=False)
    except zmq.Again:
        return False
    for i in range(1, last + 1):
        sock.send(frames[i], _NOBLOCK if i == last else _SEND_MORE, copy=False)
    return True


class _Requests:
    """What both clients share: request ids, encoding, and turning an error reply into its
    typed exception. Ids are unique per client; the pid prefix keeps forked clients apart."""

    def __init__(self, tenant: str | None) -> None:
        self.tenant = tenant
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"

    def encode(
        self,
        op: str,
        args: Mapping[str, Any] | None,
        tensors: list[tuple[str | None, np.ndarray]] | None,
        blobs: list[Any] | None,
        deadline_ms: float | None,
        encoding: TensorEncoding | None = None,
    ) -> tuple[str, list[Any]]:
        request_id = f"{self._prefix}-{next(self._ids)}"
        frames = protocol.encode_request(
            op,
            request_id,
            tenant=self.tenant,
            args=args,
            tensors=tensors or (),
            blobs=blobs or (),
            deadline_ms=deadline_ms,
            encoding=encoding,
        )
        return request_id, frames

    @staticmethod
    def check(reply: Reply) -> Reply:
        if not reply.ok:
            raise error_for(reply.error_code, reply.error_message, reply.error_details, reply.id)
        return reply


class AsyncTenantClient:
    """asyncio client for one tenant on one daemon. Use ``async with`` or call :meth:`close`.

    Against a daemon with ``--auth keys``, pass ``key_file`` (the secret certificate the operator
    issued, NAME.key_secret) and ``server_key`` (the daemon's public key file keys/server.key, or
    the z85 key): the key says who you are, and ``tenant`` may be left out.

    ``retry`` (a :class:`~tenantclient.retry.RetryPolicy`, or a number of retries) retries inference
    and reads refused with ``QUEUE_FULL`` or ``UNAVAILABLE``, with jittered exponential backoff;
    changes (submit, remove, policy, pipelines) are never retried. Off by default."""

    def __init__(
        self,
        endpoint: str,
        tenant: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        context: zmq.asyncio.Context | None = None,
        key_file: str | os.PathLike[str] | None = None,
        server_key: bytes | str | os.PathLike[str] | None = None,
        retry: RetryPolicy | int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.tenant = tenant
        self.timeout = timeout
        self.retry = as_policy(retry)
        self._curve = _curve_settings(key_file, server_key)
        self._context = context or zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._pending: dict[RequestId, asyncio.Future[Reply]] = {}
        self._requests = _Requests(tenant)
        self._watcher: asyncio.Task[None] | None = None
        self._handshake = _Handshake(endpoint)

    async def __aenter__(self) -> AsyncTenantClient:
        self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connect(self) -> zmq.asyncio.Socket:
        if self._socket is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            loop = asyncio.get_running_loop()
            if self._curve is not None:
                curve.configure_client(sock, *self._curve)
                # A refused key is otherwise just silence: watch the handshake.
                monitor = sock.get_monitor_socket(_Handshake.EVENTS)
                self._watcher = loop.create_task(self._watch_handshake(monitor))
            sock.connect(self.endpoint)
            self._socket = sock
            self._receiver = loop.create_task(self._receive_loop(sock))
        return self._socket

    async def _watch_handshake(self, monitor: zmq.asyncio.Socket) -> None:
        try:
            while self._handshake.refusal is None:
                refusal = self._handshake.see(parse_monitor_message(await monitor.recv_multipart())["event"])
                if refusal is not None:
                    for future in self._pending.values():
                        if not future.done():
                            future.set_exception(refusal)
        finally:
            monitor.close(linger=0)

    async def close(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
            self._receiver = None
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()

    async def _receive_loop(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                reply = protocol.decode_reply(frames)
            except ProtocolError:
                continue  # nothing to match it to; the caller's timeout reports the loss
            future = self._pending.pop(reply.id, None) if reply.id is not None else None
            if future is not None and not future.done():
                future.set_result(reply)
            # else: a stale reply to a call that already timed out

    async def call(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        *,
        tensors: list[tuple[str | None, np.ndarray]] | None = None,
        blobs: list[Any] | None = None,
        deadline_ms: float | None = None,
        timeout: float | None = None,
        encoding: TensorEncoding | None = None,
    ) -> Reply:
        """Send one request and wait for its reply; raise the typed error if it failed.
        ``encoding`` packs the tensors for a slow link (docs/protocol.md, tensor encodings)."""
        sock = self._connect()
        if self._handshake.refusal is not None:
            raise self._handshake.refusal
        request_id, frames = self._requests.encode(op, args, tensors, blobs, deadline_ms, encoding)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        limit = self.timeout if timeout is None else timeout

        async def exchange() -> Reply:
            # The send is inside the timeout too: a DEALER with no live peer (e.g. its key was
            # refused at the handshake) waits to send forever. The handshake watcher fails the
            # future meanwhile, so wait for whichever comes first.
            send: asyncio.Future[Any] = asyncio.ensure_future(sock.send_multipart(frames, copy=False))
            either: set[asyncio.Future[Any]] = {send, future}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not send.done():
                    return future.result()  # failed before it could be sent: raises KeyRefused
                await send
                return await future
            finally:
                if not send.done():
                    send.cancel()

        try:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives just as
            # the reply does, so a cancelled caller went on to its next call (seen with fast probes).
            async with asyncio.timeout(limit):
                reply = await exchange()
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {op} from {self.endpoint} within {limit:g} s (is the daemon running?)",
                request_id=request_id,
            ) from None
        finally:
            self._pending.pop(request_id, None)
        reply.request_bytes = protocol.frames_bytes(frames)
        return self._requests.check(reply)

    async def _run(self, call: Call[T]) -> T:
        retry = 0
        while True:
            try:
                reply = await self.call(
                    call.op.value,
                    call.args,
                    tensors=call.tensors,
                    blobs=call.blobs,
                    deadline_ms=call.deadline_ms,
                    timeout=call.timeout,
                )
                return call.parse(reply)
            except TenantError as exc:
                if not _retrying(self.retry, call, exc, retry):
                    raise
                await asyncio.sleep(self.retry.delay(retry) if self.retry else 0.0)
                retry += 1

    # ------------------------------------------------------------------ operations

    async def ping(self) -> dict[str, Any]:
        return await self._run(operations.ping())

    async def status(self) -> dict[str, Any]:
        return await self._run(operations.status())

    async def submit_model(
        self,
        model: str | os.PathLike[str] | bytes,
        name: str,
        *,
        runtime: str | None = None,
        replace: bool = False,
        timeout: float = DEFAULT_SUBMIT_TIMEOUT_S,
        compiler_log: str | None = None,
    ) -> ModelInfo:
        """Upload a model file (a path or its bytes) under ``name``; returns it once stored,
        probed and loaded. ``compiler_log``: for an EdgeTPU model, the standard output
        ``edgetpu_compiler`` printed for it (its on-chip and streamed parameter bytes; for a
        co-compiled group, the file's own block is picked by its name). Raises InvalidModel,
        AlreadyExists, Forbidden, AdmissionDenied..."""
        return await self._run(operations.submit_model(model, name, runtime, replace, timeout, compiler_log))

    async def list_models(self) -> list[ModelInfo]:
        """The tenant's models (every model when the client has no tenant)."""
        return await self._run(operations.list_models())

    async def remove_model(self, name: str) -> None:
        return await self._run(operations.remove_model(name))

    async def set_pipeline(self, name: str, spec: Mapping[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Define a pipeline across tiers (``spec``: kind, edge_model, uplink, cloud_model, and
        encoding, threshold, confidence_output, on_cloud_failure, timeout_ms; docs/protocol.md).
        Then ``infer(name, ...)`` runs it; ``infer_detailed`` shows its stages in ``timings``."""
        return await self._run(operations.set_pipeline(name, spec, replace))

    async def remove_pipeline(self, name: str) -> None:
        return await self._run(operations.remove_pipeline(name))

    async def list_pipelines(self) -> list[dict[str, Any]]:
        return await self._run(operations.list_pipelines())

    async def policy_show(self) -> dict[str, Any]:
        """The daemon's policy in force, and which fields only a restart can change."""
        return await self._run(operations.policy_show())

    async def policy_set(self, toml_text: str) -> dict[str, Any]:
        """Operator only: apply a new policy (TOML text) without a restart; returns the changed
        fields and what they mean for models already admitted."""
        return await self._run(operations.policy_set(toml_text))

    async def metrics(self) -> str:
        """The daemon's status in the Prometheus text format."""
        return await self._run(operations.metrics())

    async def reload_keys(self) -> list[str]:
        """Operator only: make the daemon re-read its keys folder; returns who is registered."""
        return await self._run(operations.reload_keys())

    async def events(self, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        return await self._run(operations.events(limit, event))

    async def infer_detailed(
        self, name: str, inputs: Inputs, *, deadline_ms: float | None = None, timeout: float | None = None
    ) -> InferResult:
        """Run ``name`` on ``inputs``; outputs by name plus the daemon's timings. ``deadline_ms``
        bounds how long the request may wait in the queue before it starts."""
        return await self._run(operations.infer_detailed(name, inputs, deadline_ms, timeout))

    async def infer(
        self, name: str, inputs: Inputs, *, deadline_ms: float | None = None, timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``name`` on ``inputs`` (one array, or a dict by input name); outputs by name."""
        return await self._run(operations.infer(name, inputs, deadline_ms, timeout))


class TenantClient:
    """Synchronous client: the same requests, reply checks and typed errors as
    :class:`AsyncTenantClient` (shared code), with its I/O on a blocking socket.

    Driving the asyncio client from a private event loop cost about 0.2 ms per call here, 40% of
    the latency budget for a 150 KiB request, so this client polls its own DEALER socket instead.
    One instance belongs to one thread; use one client per thread (or the async client with
    ``asyncio.gather``) for concurrent requests."""

    def __init__(
        self,
        endpoint: str,
        tenant: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        key_file: str | os.PathLike[str] | None = None,
        server_key: bytes | str | os.PathLike[str] | None = None,
        retry: RetryPolicy | int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.tenant = tenant
        self.timeout = timeout
        self.retry = as_policy(retry)
        self._requests = _Requests(tenant)
        settings = _curve_settings(key_file, server_key)
        self._socket: zmq.Socket[bytes] | None = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # With keys, watch the handshake: a refused key is otherwise just silence.
        self._monitor: zmq.Socket[bytes] | None = None
        self._handshake = _Handshake(endpoint)
        if settings is not None:
            curve.configure_client(self._socket, *settings)
            self._monitor = self._socket.get_monitor_socket(_Handshake.EVENTS)
        self._socket.connect(endpoint)

    def __enter__(self) -> TenantClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            if self._monitor is not None:
                self._socket.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._socket.close(linger=0)
            self._socket = None

    def _check_refused(self) -> None:
        """Raise KeyRefused if the daemon has refused this client's key at a handshake."""
        monitor = self._monitor
        while monitor is not None and self._handshake.refusal is None and monitor.poll(0):
            self._handshake.see(recv_monitor_message(monitor)["event"])
        if self._handshake.refusal is not None:
            raise self._handshake.refusal

    def call(
        self,
        op: str,
        args: Mapping[str, Any] | None = None,
        *,
        tensors: list[tuple[str | None, np.ndarray]] | None = None,
        blobs: list[Any] | None = None,
        deadline_ms: float | None = None,
        timeout: float | None = None,
        encoding: TensorEncoding | None = None,
    ) -> Reply:
        """Send one request and wait for its reply; raise the typed error if it failed."""
        sock = self._socket
        if sock is None:
            raise ClientClosed("this client is closed")
        self._check_refused()
        request_id, frames = self._requests.encode(op, args, tensors, blobs, deadline_ms, encoding)
        limit = self.timeout if timeout is None else timeout
        give_up = time.monotonic() + limit
        # A DEALER with no live peer (e.g. its key was refused at the handshake) cannot send:
        # wait for that within the timeout too, rather than blocking in send forever. With a live
        # peer the first try goes through, so the wait (a poll) is only paid when it did not.
        while not _send_now(sock, frames):
            if not self._wait(sock, _POLLOUT, (give_up - time.monotonic()) * 1e3):
                raise RequestTimeout(
                    f"cannot send {op} to {self.endpoint} within {limit:g} s (daemon down, or key refused?)",
                    request_id=request_id,
                )
        while True:
            remaining_ms = (give_up - time.monotonic()) * 1e3
            if remaining_ms <= 0 or not self._wait(sock, _POLLIN, remaining_ms):
                raise RequestTimeout(
                    f"no reply to {op} from {self.endpoint} within {limit:g} s (is the daemon running?)",
                    request_id=request_id,
                )
            try:
                reply = protocol.decode_reply(sock.recv_multipart(_NOBLOCK, copy=False))
            except ProtocolError:
                continue  # unreadable: the timeout reports the loss if it was ours
            if reply.id == request_id:
                reply.request_bytes = protocol.frames_bytes(frames)
                return self._requests.check(reply)
            # else: a stale reply to a call that already timed out

    def _wait(self, sock: zmq.Socket[bytes], flag: int, timeout_ms: float) -> bool:
        """Wait until ``sock`` can send (POLLOUT) or has a reply (POLLIN); False at the timeout.
        Raises KeyRefused as soon as the handshake is known to have failed."""
        if self._monitor is None:
            return bool(zmq.zmq_poll([(sock, flag)], max(1, int(timeout_ms))))
        give_up = time.monotonic() + timeout_ms / 1e3
        poller = zmq.Poller()
        poller.register(sock, flag)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            remaining_ms = (give_up - time.monotonic()) * 1e3
            ready = dict(poller.poll(max(1, int(remaining_ms))))
            if self._monitor in ready:
                self._check_refused()  # raises once the handshake failed; else it was another event
            if sock in ready:
                return True
            if remaining_ms <= 0 or time.monotonic() >= give_up:
                return False

    def _run(self, call: Call[T]) -> T:
        retry = 0
        while True:
            try:
                reply = self.call(
                    call.op.value,
                    call.args,
                    tensors=call.tensors,
                    blobs=call.blobs,
                    deadline_ms=call.deadline_ms,
                    timeout=call.timeout,
                )
                return call.parse(reply)
            except TenantError as exc:
                if not _retrying(self.retry, call, exc, retry):
                    raise
                time.sleep(self.retry.delay(retry) if self.retry else 0.0)
                retry += 1

    # ------------------------------------------------------------------ operations

    def ping(self) -> dict[str, Any]:
        return self._run(operations.ping())

    def status(self) -> dict[str, Any]:
        return self._run(operations.status())

    def submit_model(
        self,
        model: str | os.PathLike[str] | bytes,
        name: str,
        *,
        runtime: str | None = None,
        replace: bool = False,
        timeout: float = DEFAULT_SUBMIT_TIMEOUT_S,
        compiler_log: str | None = None,
    ) -> ModelInfo:
        """Upload a model file (a path or its bytes) under ``name``; see :meth:`AsyncTenantClient.submit_model`."""
        return self._run(operations.submit_model(model, name, runtime, replace, timeout, compiler_log))

    def list_models(self) -> list[ModelInfo]:
        return self._run(operations.list_models())

    def remove_model(self, name: str) -> None:
        return self._run(operations.remove_model(name))

    def set_pipeline(self, name: str, spec: Mapping[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """See :meth:`AsyncTenantClient.set_pipeline`."""
        return self._run(operations.set_pipeline(name, spec, replace))

    def remove_pipeline(self, name: str) -> None:
        return self._run(operations.remove_pipeline(name))

    def list_pipelines(self) -> list[dict[str, Any]]:
        return self._run(operations.list_pipelines())

    def policy_show(self) -> dict[str, Any]:
        return self._run(operations.policy_show())

    def policy_set(self, toml_text: str) -> dict[str, Any]:
        """Operator only: see :meth:`AsyncTenantClient.policy_set`."""
        return self._run(operations.policy_set(toml_text))

    def metrics(self) -> str:
        """The daemon's status in the Prometheus text format."""
        return self._run(operations.metrics())

    def reload_keys(self) -> list[str]:
        """Operator only: make the daemon re-read its keys folder; returns who is registered."""
        return self._run(operations.reload_keys())

    def events(self, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        return self._run(operations.events(limit, event))

    def infer_detailed(
        self, name: str, inputs: Inputs, *, deadline_ms: float | None = None, timeout: float | None = None
    ) -> InferResult:
        return self._run(operations.infer_detailed(name, inputs, deadline_ms, timeout))

    def infer(
        self, name: str, inputs: Inputs, *, deadline_ms: float | None = None, timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``name`` on ``inputs`` (one array, or a dict by input name); outputs by name."""
        return self._run(operations.infer(name, inputs, deadline_ms, timeout))

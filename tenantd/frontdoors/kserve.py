"""What the two KServe v2 (Open Inference Protocol) front doors share: HTTP/REST and gRPC.

This module owns the protocol's words in tenantd's terms and nothing about either transport:
KServe datatypes <-> numpy dtypes and the checks that turn a datatype, a shape and some bytes (or a
list of numbers) into an array; :data:`STATUS`, the one table from each tenantd
:class:`~tenantwire.errors.ErrorCode` to its HTTP status and gRPC status code; who a request is
from (:meth:`KServe.identify`: a bearer token under ``--auth keys``, the ``tenantd-tenant`` header
under ``--auth header``, with exactly the ZeroMQ front door's semantics); model metadata from the
catalog's specs; and :class:`KServe`, the calls each front door makes: inference through
:meth:`InferenceCore.infer <tenantd.inference.InferenceCore.infer>` (a pipeline's name through
:meth:`Pipelines.infer <tenantd.pipelines.Pipelines.infer>`), model load/unload and the repository
index through the :class:`~tenantd.operations.Operations` table. The front doors decode their own
protocol and call these; none of them checks ownership or inputs itself: the core does.
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tenantd import __version__
from tenantd.catalog import Catalog, require_tenant
from tenantd.config import ConfigError, Policy
from tenantd.errors import BadRequest, Forbidden
from tenantd.events import Event, EventLog, Sampler
from tenantd.frontdoors.zeromq import endpoint_is_local
from tenantd.inference import Answer, InferenceCore, Tensors
from tenantd.lifecycle import Lifecycle
from tenantd.operations import Operations
from tenantd.pipelines import Pipelines
from tenantd.store import ModelRecord
from tenantd.tokens import TokenRing
from tenantwire.errors import ErrorCode, TenantdError
from tenantwire.protocol import NAME_RE, Op, Request

log = logging.getLogger("tenantd.kserve")

SERVER_NAME = "tenantd"
# What the server metadata announces: Triton's names for the extensions tenantd speaks.
EXTENSIONS = ("binary_tensor_data", "model_repository")
# tenantd keeps one version of each model; KServe clients may name it.
MODEL_VERSION = "1"
TENANT_HEADER = "tenantd-tenant"
AUTHORIZATION_HEADER = "authorization"

# KServe datatype -> numpy dtype name (the wire dtypes tenantd carries; BYTES is not one).
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
DTYPE_TO_DATATYPE = {v: k for k, v in DATATYPES.items()}

# What a refused KServe call is called in the event log: tenantd's operation where it is one.
OPERATION_NAMES = {"load": Op.SUBMIT_MODEL.value, "unload": Op.REMOVE_MODEL.value, "index": Op.LIST_MODELS.value}

# What a KServe client sees for each runtime as the model's platform.
PLATFORMS = {"litert": "tensorflow_lite", "ort": "onnxruntime_onnx", "openvino": "openvino", "edgetpu": "edgetpu"}


@dataclass(frozen=True)
class Status:
    http: int
    grpc: str  # the name of a grpc.StatusCode member (this module does not import grpc)
    retry_after_s: int | None = None


# The one table from a refusal's code to each front door's status.
STATUS: dict[ErrorCode, Status] = {
    ErrorCode.BAD_REQUEST: Status(400, "INVALID_ARGUMENT"),
    ErrorCode.UNSUPPORTED_VERSION: Status(400, "INVALID_ARGUMENT"),
    ErrorCode.UNKNOWN_OP: Status(404, "UNIMPLEMENTED"),
    ErrorCode.TOO_LARGE: Status(413, "RESOURCE_EXHAUSTED"),
    ErrorCode.UNKNOWN_MODEL: Status(404, "NOT_FOUND"),
    ErrorCode.FORBIDDEN: Status(403, "PERMISSION_DENIED"),
    ErrorCode.ALREADY_EXISTS: Status(409, "ALREADY_EXISTS"),
    ErrorCode.INVALID_MODEL: Status(422, "INVALID_ARGUMENT"),
    ErrorCode.RUNTIME_NOT_AVAILABLE: Status(501, "UNIMPLEMENTED"),
    ErrorCode.INPUT_MISMATCH: Status(400, "INVALID_ARGUMENT"),
    ErrorCode.ADMISSION_DENIED: Status(409, "RESOURCE_EXHAUSTED"),
    ErrorCode.QUEUE_FULL: Status(429, "RESOURCE_EXHAUSTED", retry_after_s=1),
    ErrorCode.DEADLINE_EXCEEDED: Status(504, "DEADLINE_EXCEEDED"),
    ErrorCode.UNAVAILABLE: Status(503, "UNAVAILABLE", retry_after_s=5),
    ErrorCode.RUNTIME_ERROR: Status(500, "INTERNAL"),
    ErrorCode.INTERNAL: Status(500, "INTERNAL"),
    ErrorCode.UPSTREAM_ERROR: Status(502, "UNAVAILABLE"),
    ErrorCode.DEVICE_UNAVAILABLE: Status(503, "UNAVAILABLE", retry_after_s=5),
    ErrorCode.STORAGE_FULL: Status(507, "RESOURCE_EXHAUSTED"),
}
# Not a tenantd code: no credentials, or credentials nobody issued (HTTP 401, gRPC UNAUTHENTICATED).
UNAUTHENTICATED = Status(401, "UNAUTHENTICATED")


class Unauthenticated(Forbidden):
    """No bearer token, or one that is not (or no longer) issued: FORBIDDEN on tenantd's wire,
    401 / UNAUTHENTICATED on a KServe front door."""


class BodyStalled(BadRequest):
    """An HTTP body that stopped arriving: BAD_REQUEST on tenantd's wire, 408 on HTTP."""


BODY_STALLED = Status(408, "DEADLINE_EXCEEDED")


def status_of(error: TenantdError) -> Status:
    if isinstance(error, Unauthenticated):
        return UNAUTHENTICATED
    return BODY_STALLED if isinstance(error, BodyStalled) else STATUS[error.code]


def as_refusal(exc: BaseException, what: str) -> TenantdError:
    """A refusal as it is; anything else is a bug: logged, and answered INTERNAL."""
    if isinstance(exc, TenantdError):
        return exc
    log.error("%s failed", what, exc_info=exc)
    return TenantdError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------- tensors


def numpy_dtype(datatype: Any, where: str) -> np.dtype[Any]:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise BadRequest(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    return np.dtype(DATATYPES[datatype]).newbyteorder("<")


def datatype_of(array: np.ndarray) -> str:
    try:
        return DTYPE_TO_DATATYPE[array.dtype.name]
    except KeyError:
        raise TenantdError(ErrorCode.INTERNAL, f"an output of dtype {array.dtype} has no KServe datatype") from None


def check_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or len(shape) > 8:
        raise BadRequest(f"{where}: shape must be a list of at most 8 dimensions")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
        raise BadRequest(f"{where}: shape {list(shape)!r} must hold non-negative integers")
    return tuple(shape)


def tensor_from_bytes(data: bytes | memoryview, datatype: Any, shape: Any, where: str) -> np.ndarray:
    """An input given as raw bytes (binary extension, gRPC raw contents): sizes must agree."""
    dtype = numpy_dtype(datatype, where)
    dims = check_shape(shape, where)
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) != count * dtype.itemsize:
        raise BadRequest(
            f"{where}: {len(data)} bytes do not hold shape {list(dims)} of {datatype} ({count * dtype.itemsize} bytes)"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def tensor_from_list(data: Any, datatype: Any, shape: Any, where: str) -> np.ndarray:
    """An input given as numbers (JSON ``data``, gRPC typed contents), flat or nested row-major."""
    dtype = numpy_dtype(datatype, where)
    dims = check_shape(shape, where)
    if not isinstance(data, list | tuple):
        raise BadRequest(f"{where}: data must be a list of numbers")
    values = _flatten(data, where)
    # JSON's types must be the datatype's: true/false for BOOL, integers for integer types, numbers
    # for floats (numpy alone would take "1.5" or true as a float).
    allowed: tuple[type, ...] = (bool,) if dtype.kind == "b" else (int,) if dtype.kind in "iu" else (int, float)
    if not all(isinstance(v, allowed) and (dtype.kind == "b" or not isinstance(v, bool)) for v in values):
        raise BadRequest(f"{where}: data holds values that are not {datatype}")
    try:
        flat = np.asarray(values, dtype=dtype.newbyteorder("="))
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"{where}: data is not a list of {datatype} values: {exc}") from None
    count = int(np.prod(dims, dtype=np.int64))
    if flat.size != count:
        raise BadRequest(f"{where}: {flat.size} values do not fill shape {list(dims)} ({count} values)")
    return flat.reshape(dims)


def _flatten(data: list[Any] | tuple[Any, ...], where: str) -> list[Any]:
    """Row-major values of a flat or nested list (iteratively: nesting cannot exhaust the stack)."""
    out: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list | tuple):
                if len(stack) > 8:
                    raise BadRequest(f"{where}: data is nested deeper than a tensor's rank")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def select_outputs(outputs: Tensors, wanted: list[str] | None) -> list[tuple[str, np.ndarray]]:
    """The outputs asked for, in the order asked (all, in the model's order, when none are)."""
    named = [(name or f"output_{i}", array) for i, (name, array) in enumerate(outputs)]
    if not wanted:
        return named
    by_name = dict(named)
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise BadRequest(f"the model has no output(s) {unknown}; it has {list(by_name)}")
    return [(w, by_name[w]) for w in wanted]


def timeout_ms(parameters: Mapping[str, Any]) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) as tenantd's deadline."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadRequest("parameters.timeout must be a positive integer of microseconds")
    return value / 1e3


def tensor_metadata(specs: Any) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "datatype": DTYPE_TO_DATATYPE.get(s.dtype, s.dtype.upper()), "shape": list(s.shape)}
        for s in specs
    ]


def model_metadata(record: ModelRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORMS.get(record.runtime, record.runtime),
        "inputs": tensor_metadata(record.inputs),
        "outputs": tensor_metadata(record.outputs),
    }


def check_version(version: str | None) -> None:
    if version not in (None, "", MODEL_VERSION):
        raise TenantdError(ErrorCode.UNKNOWN_MODEL, f"tenantd keeps one version of a model, {MODEL_VERSION!r}")


# ---------------------------------------------------------------------------------- configuration


def parse_listen(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too; PORT 0 picks a free one) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} {text!r} must be HOST:PORT, e.g. 127.0.0.1:8000")
    return host, int(port)


def check_listen(auth_mode: str, listen: str, flag: str) -> None:
    """Under ``--auth header`` a request names its own tenant: only on a loopback address."""
    host = parse_listen(listen, flag)[0]
    if auth_mode == "header" and not endpoint_is_local(f"tcp://{host}:0"):
        raise ConfigError(
            f"{flag} {listen} is reachable from other hosts, so tenants cannot name themselves in a "
            "tenantd-tenant header there: use --auth keys (bearer tokens), or a loopback address"
        )


def tls_files(policy: Policy) -> tuple[bytes, bytes] | None:
    """(key, certificate) PEM bytes for TLS on the KServe front doors, or None without TLS."""
    if (policy.tls_cert_file is None) != (policy.tls_key_file is None):
        raise ConfigError("set both tls_cert_file and tls_key_file in the policy, or neither")
    if policy.tls_cert_file is None or policy.tls_key_file is None:
        return None
    try:
        return Path(policy.tls_key_file).read_bytes(), Path(policy.tls_cert_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {exc.filename}: {exc.strerror}") from None


def ssl_context(files: tuple[bytes, bytes] | None, policy: Policy) -> ssl.SSLContext | None:
    """The HTTP front door's server context for :func:`tls_files` (None without TLS)."""
    if files is None or policy.tls_cert_file is None or policy.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(policy.tls_cert_file, policy.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the policy's TLS certificate and key cannot be used: {exc}") from None
    return context


# ---------------------------------------------------------------------------------- identity and calls


@dataclass(frozen=True)
class Caller:
    """Who a request is from, as :class:`~tenantwire.protocol.Request` says it to the daemon."""

    tenant: str | None
    operator: bool


class KServe:
    """The calls a KServe front door makes, and who makes them."""

    def __init__(
        self,
        auth_mode: str,
        tokens: TokenRing | None,
        catalog: Catalog,
        core: InferenceCore,
        pipelines: Pipelines,
        operations: Operations,
        lifecycle: Lifecycle,
        events: EventLog,
    ) -> None:
        self.auth_mode = auth_mode
        self._events = events
        self._error_events = Sampler()  # request.error lines, per code, as on ZeroMQ
        self._tokens = tokens
        self._catalog = catalog
        self._core = core
        self._pipelines = pipelines
        self._operations = operations
        self._lifecycle = lifecycle
        self._ids = itertools.count(1)

    def identify(self, header: Callable[[str], str | None]) -> Caller:
        """Who sent a request whose headers (or gRPC metadata) ``header`` reads, lower-case names.

        ``--auth header``: the ``tenantd-tenant`` header names the tenant; none is the operator.
        ``--auth keys``: ``Authorization: Bearer TOKEN``; an operator's token may name a tenant to
        act for it, a tenant's token may name only its own tenant (as CurveZMQ keys on ZeroMQ)."""
        named = header(TENANT_HEADER)
        if named is not None and not NAME_RE.fullmatch(named):
            raise BadRequest(f"tenant name {named!r} is not valid ({NAME_RE.pattern})")
        if self._tokens is None:
            return Caller(named, named is None)
        credentials = header(AUTHORIZATION_HEADER)
        if credentials is None:
            raise Unauthenticated("this daemon needs 'Authorization: Bearer TOKEN' (issued by 'tenantd keys add')")
        scheme, _, token = credentials.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization must be 'Bearer TOKEN'")
        identity = self._tokens.identity_for(token.strip())
        if identity is None:
            raise Unauthenticated("this token is not registered (or no longer)")
        if identity.is_operator:
            return Caller(named, True)
        if named not in (None, identity.name):
            raise Forbidden(f"this token belongs to tenant {identity.name!r}, not {named!r}")
        return Caller(identity.name, False)

    def refusal(self, exc: BaseException, frontdoor: str, action: str, caller: Caller | None) -> TenantdError:
        """What a failed call answers (a bug: INTERNAL, logged): counted as an error reply, and written
        to the event log as ``request.error`` (a sample per code), as the ZeroMQ door does its own."""
        op = OPERATION_NAMES.get(action, action)
        error = as_refusal(exc, f"{frontdoor} {op}")
        self._core.metrics.error_reply(error.code.value)  # requests are counted by the core and Operations
        write, held_back = self._error_events.take(error.code.value)
        if write:
            self._events.emit(
                Event.REQUEST_ERROR,
                id=None,
                op=op,
                tenant=caller.tenant if caller else None,
                code=error.code.value,
                message=error.message,
                frontdoor=frontdoor,
                **({"not_logged_before": held_back} if held_back else {}),
            )
        return error

    def request(self, caller: Caller, op: Op, **fields: Any) -> Request:
        return Request(id=next(self._ids), op=op.value, tenant=caller.tenant, operator=caller.operator, **fields)

    @property
    def ready(self) -> bool:
        return not self._lifecycle.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def visible_model(self, caller: Caller, name: str, version: str | None = None) -> ModelRecord:
        """A model the caller may see: its own; any, for the operator acting for no tenant. Another
        tenant's is FORBIDDEN and an unknown one UNKNOWN_MODEL, as on ZeroMQ."""
        check_version(version)
        if caller.operator and caller.tenant is None:
            return self._catalog.model(name)
        request = self.request(caller, Op.INFER, args={"model": name})
        return self._catalog.owned_model(require_tenant(request), name)

    def model_ready(self, caller: Caller, name: str, version: str | None = None) -> bool:
        if name in self._catalog.pipelines:
            self._catalog.pipeline(name, None if caller.operator and caller.tenant is None else caller.tenant)
            return self.ready
        self.visible_model(caller, name, version)
        return self.ready  # a swappable model not loaded now is loaded on demand: ready too

    async def infer(self, caller: Caller, model: str, tensors: Tensors, deadline_ms: float | None) -> Answer:
        request = self.request(caller, Op.INFER, args={"model": model}, tensors=tensors, deadline_ms=deadline_ms)
        if model in self._catalog.pipelines:
            return await self._pipelines.infer(request)
        return await self._core.infer(require_tenant(request), model, tensors, deadline_ms)

    async def load(
        self,
        caller: Caller,
        name: str,
        data: bytes | memoryview,
        *,
        filename: str | None,
        runtime: str | None,
        replace: bool,
    ) -> dict[str, Any]:
        """Triton's repository load in tenantd's terms: the caller submits a model file."""
        args: dict[str, Any] = {"name": name, "replace": replace}
        if filename is not None:
            args["filename"] = filename
        if runtime is not None:
            args["runtime"] = runtime
        return await self._run(self.request(caller, Op.SUBMIT_MODEL, args=args, frames=[data]))

    async def unload(self, caller: Caller, name: str) -> dict[str, Any]:
        """Triton's repository unload in tenantd's terms: the model is removed."""
        return await self._run(self.request(caller, Op.REMOVE_MODEL, args={"model": name}))

    async def index(self, caller: Caller) -> list[dict[str, Any]]:
        """Triton's repository index: the caller's models (every model, for the operator)."""
        result = await self._run(self.request(caller, Op.LIST_MODELS))
        return [
            {"name": m["name"], "version": MODEL_VERSION, "state": "READY" if self.ready else "UNAVAILABLE"}
            for m in result["models"]
        ]

    async def _run(self, request: Request) -> dict[str, Any]:
        operation = self._operations.table[request.op]
        return await self._operations.run(operation, request)

"""The error family shared by the daemon and its clients: stable codes and one base exception.

Every refusal tenantd sends is an error reply carrying a code from :class:`ErrorCode`, a message for
people and a map of details for programs. :class:`TenantdError` is that triple as an exception: the
daemon raises it (or one of its domain subclasses in :mod:`tenantd.errors`) wherever a request cannot
be served, and exactly one place in the daemon turns it into an error reply. ``docs/protocol.md``
documents the table below; ``tests/unit/test_protocol.py`` checks that it does.
"""

from enum import Enum
from typing import Any, Dict, Mapping, Optional, Union

# Written at the Python 3.6 language level: a device worker imports this module (through
# tensors.py) under the device's own Python (README, "Device workers").

RequestId = Union[str, int]


class ErrorCode(str, Enum):
    """Stable error codes carried on the wire. Never renumber or rename; only add.

    A ``str`` whose value is its name: equal to the plain string, encoded by msgpack and json as
    that string, and ``str()``/``format()`` give it too (what 3.11's ``StrEnum`` does; written so
    for Python 3.6)."""

    BAD_REQUEST = "BAD_REQUEST"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    UNKNOWN_OP = "UNKNOWN_OP"
    TOO_LARGE = "TOO_LARGE"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    FORBIDDEN = "FORBIDDEN"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    INVALID_MODEL = "INVALID_MODEL"
    RUNTIME_NOT_AVAILABLE = "RUNTIME_NOT_AVAILABLE"
    INPUT_MISMATCH = "INPUT_MISMATCH"
    ADMISSION_DENIED = "ADMISSION_DENIED"
    QUEUE_FULL = "QUEUE_FULL"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    RUNTIME_ERROR = "RUNTIME_ERROR"
    INTERNAL = "INTERNAL"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    DEVICE_UNAVAILABLE = "DEVICE_UNAVAILABLE"
    STORAGE_FULL = "STORAGE_FULL"

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, format_spec: str) -> str:
        return format(str(self.value), format_spec)


# One line per code: what it means and whether retrying the same request can help.
ERROR_TABLE: Dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "The message is malformed: bad msgpack, missing or mistyped header field, "
    "tensor frames that do not match their description. Do not retry unchanged.",
    ErrorCode.UNSUPPORTED_VERSION: "The header's protocol version `v` is not one the daemon speaks; "
    "`details.supported` lists those it does.",
    ErrorCode.UNKNOWN_OP: "The operation `op` is not known; `details.ops` lists the known ones.",
    ErrorCode.TOO_LARGE: "The message is larger than the daemon's configured cap "
    "(`details.limit_bytes`), or its header frame is over 64 KiB.",
    ErrorCode.UNKNOWN_MODEL: "No model of that name exists (or it was removed).",
    ErrorCode.FORBIDDEN: "The model belongs to another tenant; or the operation needs a tenant and "
    "none was named; or it is for the operator only; or (keys) the header names another tenant than "
    "the key's, or the key was withdrawn.",
    ErrorCode.ALREADY_EXISTS: "The tenant already has a model of that name; pass `replace: true` to replace it.",
    ErrorCode.INVALID_MODEL: "The submitted file is not a model the runtime can load and run; the "
    "probe's reason is in the message. Nothing was stored.",
    ErrorCode.RUNTIME_NOT_AVAILABLE: "The requested runtime is unknown or its package is not "
    "installed on the daemon's host; the message names the package.",
    ErrorCode.INPUT_MISMATCH: "Input tensors do not match the model's inputs in count, name, "
    "dtype or shape; `details` names the expected spec.",
    ErrorCode.ADMISSION_DENIED: "The device cannot take the model under the operator's policy: its "
    "memory budget (`details` states the budget, the current use, the footprint and the shortfall) "
    "or the tenant's quota (`details.quota`: max_models or memory_quota_bytes, with the limit).",
    ErrorCode.QUEUE_FULL: "The tenant's queue, its in-flight quota, or the device's queue is full "
    "(`details.scope`, `details.limit`). Retry later, with backoff.",
    ErrorCode.DEADLINE_EXCEEDED: "The request could not start before its deadline and was dropped without running.",
    ErrorCode.UNAVAILABLE: "The daemon is shutting down and takes no new work. Retry elsewhere or later.",
    ErrorCode.RUNTIME_ERROR: "The runtime failed while running this request; the model and the "
    "daemon are still serving.",
    ErrorCode.INTERNAL: "A bug in the daemon; the request may or may not have run. Please report "
    "it with the event log.",
    ErrorCode.UPSTREAM_ERROR: "A pipeline's cloud stage failed: the other daemon was unreachable, "
    "too slow (the pipeline's timeout) or refused the request; `details.cause` says which.",
    ErrorCode.DEVICE_UNAVAILABLE: "The daemon's device is gone (unplugged, or the runtime reported it "
    "lost); the daemon retries it and keeps serving other operations. `details` says since when.",
    ErrorCode.STORAGE_FULL: "The disk holding the daemon's state is full: nothing of this request was "
    "stored and everything stored before is intact. Retry once the operator has freed space.",
}


class TenantdError(Exception):
    """A request cannot be served: ``code`` goes back on the wire, with ``message`` and ``details``.
    ``request_id`` is set where the failure is found before the request is decoded."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: Optional[Mapping[str, Any]] = None,
        request_id: Optional[RequestId] = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.details: Dict[str, Any] = dict(details or {})
        self.request_id = request_id


class ProtocolError(TenantdError):
    """The message itself is malformed (or, on a client, the reply is): the codec's refusal."""

"""Client-side exceptions: one class per wire error code, plus the client's own failures.

The daemon's stable codes (``tenantwire.errors.ErrorCode``) come back as instances of these classes,
so callers can ``except QueueFull`` rather than compare strings. Every exception carries ``code``,
``message``, ``details`` and the ``request_id`` it answers.
"""

from __future__ import annotations

from typing import Any

from tenantwire.errors import ErrorCode, RequestId


class TenantError(Exception):
    """Base class of every error the client raises."""

    code: str | None = None
    # Tries the request took, retries included (tenantclient.retry); 1 without retries.
    attempts: int = 1

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, request_id: RequestId | None = None
    ) -> None:
        super().__init__(f"{self.code}: {message}" if self.code else message)
        self.message = message
        self.details = details or {}
        self.request_id = request_id


class BadRequest(TenantError):
    code = ErrorCode.BAD_REQUEST.value


class UnsupportedVersion(TenantError):
    code = ErrorCode.UNSUPPORTED_VERSION.value


class UnknownOp(TenantError):
    code = ErrorCode.UNKNOWN_OP.value


class TooLarge(TenantError):
    code = ErrorCode.TOO_LARGE.value


class UnknownModel(TenantError):
    code = ErrorCode.UNKNOWN_MODEL.value


class Forbidden(TenantError):
    code = ErrorCode.FORBIDDEN.value


class AlreadyExists(TenantError):
    code = ErrorCode.ALREADY_EXISTS.value


class InvalidModel(TenantError):
    code = ErrorCode.INVALID_MODEL.value


class RuntimeNotAvailable(TenantError):
    code = ErrorCode.RUNTIME_NOT_AVAILABLE.value


class InputMismatch(TenantError):
    code = ErrorCode.INPUT_MISMATCH.value


class AdmissionDenied(TenantError):
    code = ErrorCode.ADMISSION_DENIED.value


class QueueFull(TenantError):
    code = ErrorCode.QUEUE_FULL.value


class DeadlineExceeded(TenantError):
    code = ErrorCode.DEADLINE_EXCEEDED.value


class Unavailable(TenantError):
    code = ErrorCode.UNAVAILABLE.value


class RuntimeFailed(TenantError):
    """The runtime failed on this request (wire code RUNTIME_ERROR)."""

    code = ErrorCode.RUNTIME_ERROR.value


class InternalError(TenantError):
    code = ErrorCode.INTERNAL.value


class UpstreamError(TenantError):
    """A pipeline's cloud stage failed (``details.uplink``, ``details.cause``)."""

    code = ErrorCode.UPSTREAM_ERROR.value


class DeviceUnavailable(TenantError):
    """The daemon's device is gone for now (unplugged, or lost by its runtime); the daemon retries
    it (``details.since``, ``details.reason``). Retry later."""

    code = ErrorCode.DEVICE_UNAVAILABLE.value


class StorageFull(TenantError):
    """The daemon's state disk is full; nothing of this request was stored. Retry once the operator
    has freed space."""

    code = ErrorCode.STORAGE_FULL.value


class RequestTimeout(TenantError, TimeoutError):
    """No reply came within the call's timeout. The request may still run on the daemon."""


class KeyRefused(TenantError):
    """The daemon refused this client's CurveZMQ key at the handshake (unknown, withdrawn, or the
    wrong server key). Nothing was sent; a new client is needed once the key is registered."""


class ClientClosed(TenantError):
    """The client was used after :meth:`close`."""


_BY_CODE: dict[str, type[TenantError]] = {cls.code: cls for cls in TenantError.__subclasses__() if cls.code is not None}
# Every wire code has its class; a daemon newer than this client may add codes (-> TenantError).
assert set(_BY_CODE) == {c.value for c in ErrorCode}, "tenantclient.errors is missing a class for a wire code"


def error_for(code: str | None, message: str, details: dict[str, Any], request_id: RequestId | None) -> TenantError:
    cls = _BY_CODE.get(code or "", TenantError)
    error = cls(message, details, request_id)
    if cls is TenantError:
        error.code = code
    return error

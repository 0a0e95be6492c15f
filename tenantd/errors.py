"""The daemon's errors, in two families.

A refusal (:class:`Refusal`, one subclass per thing that can go wrong with a request, each with
its stable code; all are the wire's :class:`~tenantwire.errors.TenantdError`) means *this request
cannot be served*: anything in the daemon raises it, and exactly one place, the front door that
received the request, turns it into an error reply. :class:`RuntimeFailure` and
:class:`DeviceLost` (at the end) mean *a backend is broken*: the inference core turns them into
RUNTIME_ERROR / DEVICE_UNAVAILABLE refusals and, for a lost device, starts
:mod:`tenantd.devicehealth`'s recovery. Written at the Python 3.6 language level: a device worker
imports it with the runtime adapters (README, "Device workers").
"""

from typing import Any, ClassVar, Mapping, Optional

from tenantwire.errors import ErrorCode, TenantdError


class Refusal(TenantdError):
    """A TenantdError whose code is fixed by its class."""

    CODE: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, details: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(self.CODE, message, details)


class BadRequest(Refusal):
    CODE = ErrorCode.BAD_REQUEST


class Forbidden(Refusal):
    CODE = ErrorCode.FORBIDDEN


class NotOwner(Forbidden):
    """The name belongs to another tenant."""


class UnknownModel(Refusal):
    CODE = ErrorCode.UNKNOWN_MODEL


class NameTaken(Refusal):
    """The tenant already has a model (or pipeline) of that name."""

    CODE = ErrorCode.ALREADY_EXISTS


class InvalidModel(Refusal):
    CODE = ErrorCode.INVALID_MODEL


class RuntimeUnavailable(Refusal):
    CODE = ErrorCode.RUNTIME_NOT_AVAILABLE


class InputMismatch(Refusal):
    CODE = ErrorCode.INPUT_MISMATCH


class AdmissionDenied(Refusal):
    CODE = ErrorCode.ADMISSION_DENIED


class QueueFull(Refusal):
    """A queue or in-flight quota is full; ``scope`` says whose, ``limit`` how many it holds."""

    CODE = ErrorCode.QUEUE_FULL

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} queue is full ({limit} requests waiting)", {"scope": scope, "limit": limit})
        self.scope = scope
        self.limit = limit


class Unavailable(Refusal):
    CODE = ErrorCode.UNAVAILABLE


class ModelFailed(Refusal):
    """The runtime failed on this request (or the model could not be loaded); the daemon serves on."""

    CODE = ErrorCode.RUNTIME_ERROR


class UpstreamFailed(Refusal):
    CODE = ErrorCode.UPSTREAM_ERROR


class DeviceUnavailable(Refusal):
    CODE = ErrorCode.DEVICE_UNAVAILABLE


class StorageFull(Refusal):
    """The state disk is full: nothing of this request was stored; retry after space is freed."""

    CODE = ErrorCode.STORAGE_FULL


class PipelineFailed(TenantdError):
    """A pipeline's own stage failed (the cloud, or reading the edge's answer): ``code`` says how."""


# ---------------------------------------------------------------- the other family: a broken backend


class RuntimeFailure(Exception):
    """The runtime could not load or run a model; the message says why."""


class DeviceLost(RuntimeFailure):
    """The vendor's runtime reports that the device itself is gone (a USB stick unplugged, a GPU
    fallen off the bus), not that this model or this input failed. The daemon answers it
    differently: the device is marked unavailable and retried, rather than the request alone failing."""


class DeviceMemoryFull(RuntimeFailure):
    """The device is there but has no room for one more model (an NCS2 whose 512 MB hold the
    networks already loaded: MYRIAD reports ``NC_OUT_OF_MEMORY`` or fails to init the device).
    Admission's answer for this model, not a lost device for everyone: ``networks_loaded`` says
    how many the device holds."""

    def __init__(self, message: str, networks_loaded: int) -> None:
        super().__init__(message)
        self.networks_loaded = networks_loaded


class WorkerCrashed(RuntimeFailure):
    """The device's worker process died (or was killed by its watchdog) while this call was on it.
    The request gets DEVICE_UNAVAILABLE; the worker is restarted (:mod:`tenantd.worker`)."""


class ModelQuarantined(RuntimeFailure):
    """The model crashed the device's worker too often; it is neither loaded nor run again."""

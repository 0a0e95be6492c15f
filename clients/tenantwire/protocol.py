"""The tenantd wire format: one versioned message shape for requests and replies.

A message is a list of ZeroMQ frames: one msgpack *header* frame followed by zero or more raw
*buffer* frames, the tensors (:mod:`tenantwire.tensors`). Nothing is ever pickled. This module knows
nothing about sockets: it turns Python values into frames and frames back into values, and raises
:class:`~tenantwire.errors.ProtocolError` with a stable code for anything malformed.
``docs/protocol.md`` is the human-readable form of this package; keep them in step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import msgpack
import numpy as np

from tenantwire.errors import ErrorCode, ProtocolError, RequestId
from tenantwire.tensors import MAX_DECODED_BYTES, BytesLike, TensorEncoding, decode_tensors, encode_tensors, expect

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# A header is small metadata; anything bigger is a client bug or an attack.
MAX_HEADER_BYTES = 64 * 1024
MAX_ID_LENGTH = 128
# Names of tenants, models and pipelines (a key file's stem is its tenant's name).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class Op(StrEnum):
    """Operations a client may ask for. The server's dispatch table has one handler per member."""

    PING = "ping"
    STATUS = "status"
    SUBMIT_MODEL = "submit_model"
    LIST_MODELS = "list_models"
    REMOVE_MODEL = "remove_model"
    INFER = "infer"
    EVENTS = "events"
    POLICY_SHOW = "policy_show"
    POLICY_SET = "policy_set"
    RELOAD_KEYS = "reload_keys"
    METRICS = "metrics"
    PIPELINE_SET = "pipeline_set"
    PIPELINE_REMOVE = "pipeline_remove"
    LIST_PIPELINES = "list_pipelines"


@dataclass
class Request:
    """A decoded request. ``tensors`` are zero-copy, read-only views on the received frames."""

    id: RequestId
    op: str
    tenant: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    tensors: list[tuple[str | None, np.ndarray]] = field(default_factory=list)
    deadline_ms: float | None = None
    frames: list[BytesLike] = field(default_factory=list)
    # Set by the daemon from who sent the request (never read from the wire): the operator may
    # change the policy and act on any tenant's models.
    operator: bool = False


@dataclass
class Reply:
    """A decoded reply: either ``ok`` with ``result`` (and tensors), or an ``error``."""

    id: RequestId | None
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    tensors: list[tuple[str | None, np.ndarray]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str = ""
    error_details: dict[str, Any] = field(default_factory=dict)
    # Bytes of this reply's frames, and (set by the client that sent it) of its request's frames:
    # what crossed the wire each way, encodings included.
    wire_bytes: int = 0
    request_bytes: int = 0


# --------------------------------------------------------------------------- headers


def _pack(header: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(header, use_bin_type=True)
    return packed


def _unpack_header(raw: BytesLike, limit: int | None = MAX_HEADER_BYTES) -> dict[str, Any]:
    view = memoryview(raw).cast("B")
    if limit is not None and view.nbytes > limit:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header frame is {view.nbytes} bytes; the limit is {limit}")
    try:
        header = msgpack.unpackb(view, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage input
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header frame is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "header frame must be a msgpack map")
    return header


def encode_request(
    op: str,
    request_id: RequestId,
    *,
    tenant: str | None = None,
    args: Mapping[str, Any] | None = None,
    tensors: Sequence[tuple[str | None, np.ndarray]] = (),
    blobs: Sequence[BytesLike] = (),
    deadline_ms: float | None = None,
    encoding: TensorEncoding | None = None,
) -> list[BytesLike]:
    """Frames for one request. ``blobs`` (e.g. a model file) come first, tensors after them."""
    metas, buffers = encode_tensors(tensors, first_frame=len(blobs), encoding=encoding)
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "op": op}
    if tenant is not None:
        header["tenant"] = tenant
    if args:
        header["args"] = dict(args)
    if metas:
        header["tensors"] = metas
    if deadline_ms is not None:
        header["deadline_ms"] = float(deadline_ms)
    return [_pack(header), *blobs, *buffers]


def peek_request_id(raw_header: BytesLike) -> RequestId | None:
    """Best effort: the id of a request whose header could not be fully validated."""
    try:
        header = _unpack_header(raw_header)
    except ProtocolError:
        return None
    rid = header.get("id")
    return rid if _valid_id(rid) else None


def _valid_id(rid: Any) -> bool:
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(2**63) <= rid < 2**64
    return isinstance(rid, str) and 0 < len(rid) <= MAX_ID_LENGTH


def decode_request(frames: Sequence[BytesLike], max_decoded_bytes: int = MAX_DECODED_BYTES) -> Request:
    """Validate and decode a request (header frame first). Raises :class:`ProtocolError`."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message: a header frame is required")
    header = _unpack_header(frames[0])
    rid = header.get("id")
    if not _valid_id(rid):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"header 'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters or an int",
        )
    version = header.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "header 'v' (protocol version) must be an int", request_id=rid)
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported",
            {"supported": list(SUPPORTED_VERSIONS)},
            request_id=rid,
        )
    op = header.get("op")
    expect(isinstance(op, str) and op != "", "header 'op' must be a non-empty string", rid)
    tenant = header.get("tenant")
    expect(tenant is None or isinstance(tenant, str), "header 'tenant' must be a string", rid)
    args = header.get("args", {})
    expect(isinstance(args, dict), "header 'args' must be a map", rid)
    deadline_ms = header.get("deadline_ms")
    expect(
        deadline_ms is None
        or (isinstance(deadline_ms, (int, float)) and not isinstance(deadline_ms, bool) and deadline_ms >= 0),
        "header 'deadline_ms' must be a non-negative number of milliseconds",
        rid,
    )
    buffers = list(frames[1:])
    tensors = decode_tensors(header.get("tensors", []), buffers, rid, max_decoded_bytes)
    return Request(
        id=cast(RequestId, rid),
        op=cast(str, op),
        tenant=tenant,
        args=args,
        tensors=tensors,
        deadline_ms=None if deadline_ms is None else float(deadline_ms),
        frames=buffers,
    )


def encode_reply(
    request_id: RequestId | None,
    result: Mapping[str, Any] | None = None,
    *,
    tensors: Sequence[tuple[str | None, np.ndarray]] = (),
    timings: Mapping[str, Any] | None = None,
) -> list[BytesLike]:
    metas, buffers = encode_tensors(tensors)
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "ok": True}
    if result:
        header["result"] = dict(result)
    if metas:
        header["tensors"] = metas
    if timings:
        header["timings"] = dict(timings)
    return [_pack(header), *buffers]


def encode_error(
    request_id: RequestId | None,
    code: ErrorCode,
    message: str,
    details: Mapping[str, Any] | None = None,
) -> list[BytesLike]:
    header = {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code.value, "message": message, "details": dict(details or {})},
    }
    return [_pack(header)]


def frames_bytes(frames: Sequence[BytesLike]) -> int:
    """Total size of a message's frames (``zmq.Frame``, bytes or any buffer)."""
    return sum(memoryview(f.buffer if hasattr(f, "buffer") else f).nbytes for f in frames)


def decode_reply(frames: Sequence[BytesLike]) -> Reply:
    """Decode a reply (header frame first). Raises :class:`ProtocolError` if it is malformed."""
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty reply")
    # Replies are trusted (they come from the daemon) and may be large: a long event list.
    header = _unpack_header(frames[0], limit=None)
    rid = header.get("id")
    version = header.get("v")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"reply has protocol version {header.get('v')!r}", request_id=rid
        )
    if header.get("ok") is True:
        return Reply(
            id=rid,
            ok=True,
            wire_bytes=frames_bytes(frames),
            result=header.get("result", {}),
            tensors=decode_tensors(header.get("tensors", []), list(frames[1:]), rid),
            timings=header.get("timings", {}),
        )
    error = header.get("error")
    if not isinstance(error, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "error reply without an 'error' map", request_id=rid)
    return Reply(
        id=rid,
        ok=False,
        error_code=str(error.get("code", ErrorCode.INTERNAL.value)),
        error_message=str(error.get("message", "")),
        error_details=dict(error.get("details") or {}),
    )

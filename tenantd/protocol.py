"""The tenantd wire format: one versioned message shape, the error-code table, and the tensor codec.

A message is a list of ZeroMQ frames: one msgpack *header* frame followed by zero or more raw
*buffer* frames. Tensors travel as raw little-endian bytes in their own frames (sent and received
without copying); the header describes each one by name, dtype, shape and frame index. Nothing is
ever pickled. This module knows nothing about sockets: it turns Python values into frames and
frames back into values, and raises :class:`ProtocolError` with a stable :class:`ErrorCode` for
anything malformed. ``docs/protocol.md`` is the human-readable form of this file; keep them in
step (``tests/unit/test_protocol.py`` checks the error table is documented).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias, cast

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# A header is small metadata; anything bigger is a client bug or an attack.
MAX_HEADER_BYTES = 64 * 1024
MAX_ID_LENGTH = 128
MAX_TENSORS = 64
MAX_RANK = 8
# What packed tensors of one message may unpack to, in all (the daemon passes its own
# max_message_bytes): compressed frames are small, what they declare is not.
MAX_DECODED_BYTES = 256 * 1024 * 1024

RequestId: TypeAlias = str | int
BytesLike: TypeAlias = bytes | bytearray | memoryview | Any  # anything exposing the buffer protocol


class ErrorCode(StrEnum):
    """Stable error codes carried on the wire. Never renumber or rename; only add."""

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


# One line per code: what it means and whether retrying the same request can help.
ERROR_TABLE: dict[ErrorCode, str] = {
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
}


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


# Wire dtypes are numpy dtype names; multi-byte types are little-endian on the wire.
WIRE_DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)


class ProtocolError(Exception):
    """A message could not be accepted; ``code`` is what goes back on the wire."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: Mapping[str, Any] | None = None,
        request_id: RequestId | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.request_id = request_id


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


# --------------------------------------------------------------------------- tensor codec


def _wire_array(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.name not in WIRE_DTYPES:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"dtype {a.dtype} cannot be sent; supported: {sorted(WIRE_DTYPES)}",
        )
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    # ascontiguousarray alone would turn a 0-d array into shape [1].
    return a if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(a.shape)


LOSSY_ENCODINGS = ("float16", "int8")
LOSSLESS_CODECS = ("zlib", "lz4")
_FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


@dataclass(frozen=True)
class TensorEncoding:
    """How tensors are packed for a slow link (edge to cloud). ``lossy`` first: ``float16``
    casts floats to half precision; ``int8`` quantizes each float tensor affinely to 8 bits
    with its own scale and zero point. Then ``codec`` compresses the bytes losslessly. The
    receiver decodes back to the tensor's declared dtype, so a model sees what it expects.
    Non-float tensors are only compressed, never made lossy."""

    lossy: str | None = None
    codec: str | None = None
    level: int = 1

    def __post_init__(self) -> None:
        if self.lossy not in (None, *LOSSY_ENCODINGS):
            raise ValueError(f"lossy encoding {self.lossy!r} is not one of {LOSSY_ENCODINGS}")
        if self.codec not in (None, *LOSSLESS_CODECS):
            raise ValueError(f"codec {self.codec!r} is not one of {LOSSLESS_CODECS}")
        if not 0 <= self.level <= 9:
            raise ValueError("level must be 0-9")

    @classmethod
    def parse(cls, text: str | None) -> TensorEncoding | None:
        """``"none"``, ``"zlib"``, ``"int8"``, ``"float16+lz4"``, ... (``None`` for none)."""
        if text is None or text.strip().lower() in {"", "none", "raw"}:
            return None
        lossy = codec = None
        for part in text.strip().lower().split("+"):
            if part in LOSSY_ENCODINGS and lossy is None:
                lossy = part
            elif part in LOSSLESS_CODECS and codec is None:
                codec = part
            else:
                raise ValueError(
                    f"cannot read encoding {text!r}: use none, or a lossy step {LOSSY_ENCODINGS} and/or "
                    f"a codec {LOSSLESS_CODECS} joined by '+'"
                )
        return cls(lossy, codec)

    @property
    def label(self) -> str:
        return "+".join(p for p in (self.lossy, self.codec) if p) or "none"


def _lz4_block() -> Any:
    try:
        import lz4.block
    except ImportError as exc:  # a runtime dependency, but say what to do if it is missing
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the lz4 codec needs the lz4 package (pip install lz4)") from exc
    return lz4.block


def _encode_one(a: np.ndarray, encoding: TensorEncoding) -> tuple[bytes, dict[str, Any]]:
    meta: dict[str, Any] = {}
    stored = a
    if encoding.lossy is not None and a.dtype.name in _FLOAT_DTYPES:
        if encoding.lossy == "float16":
            stored = a.astype("<f2")
            meta["lossy"] = "float16"
        else:
            finite = a[np.isfinite(a)] if a.size else a
            low = float(min(0.0, finite.min())) if finite.size else 0.0
            high = float(max(0.0, finite.max())) if finite.size else 0.0
            scale = (high - low) / 255.0 or 1.0
            zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
            q = np.clip(np.rint(a / scale) + zero_point, -128, 127)
            stored = np.nan_to_num(q, nan=zero_point).astype(np.int8)
            meta.update(lossy="int8", scale=scale, zero_point=zero_point)
    raw = stored.tobytes()
    if encoding.codec == "zlib":
        raw = zlib.compress(raw, encoding.level)
        meta["codec"] = "zlib"
    elif encoding.codec == "lz4":
        raw = _lz4_block().compress(raw, store_size=False)
        meta["codec"] = "lz4"
    return raw, meta


def encode_tensors(
    tensors: Sequence[tuple[str | None, np.ndarray]], first_frame: int = 0, encoding: TensorEncoding | None = None
) -> tuple[list[dict[str, Any]], list[BytesLike]]:
    """Describe ``tensors`` for the header and return their raw buffers, without copying
    arrays that are already C-contiguous and little-endian (unless ``encoding`` packs them)."""
    metas: list[dict[str, Any]] = []
    buffers: list[BytesLike] = []
    for index, (name, array) in enumerate(tensors):
        a = _wire_array(array)
        meta: dict[str, Any] = {
            "name": name,
            "dtype": a.dtype.name,
            "shape": list(a.shape),
            "frame": first_frame + index,
        }
        if encoding is not None:
            data, packed = _encode_one(a, encoding)
            if packed:
                meta["encoding"] = packed
            buffers.append(data)
        else:
            # A 0-d or empty array still needs a (possibly empty) byte view.
            buffers.append(a.reshape(-1).data.cast("B") if a.size else memoryview(b""))
        metas.append(meta)
    return metas, buffers


def _decode_one(
    view: memoryview,
    dtype: np.dtype[Any],
    shape: list[int],
    packed: Any,
    where: str,
    rid: RequestId | None,
    budget: list[int],
) -> np.ndarray:
    """Undo :func:`_encode_one`; never inflates past the size the declared tensor needs, nor
    past what is left of the message's ``budget`` (a one-element list, decremented)."""
    _expect(isinstance(packed, dict), f"{where}.encoding must be a map", rid)
    lossy, codec = packed.get("lossy"), packed.get("codec")
    _expect(lossy in (None, *LOSSY_ENCODINGS), f"{where}.encoding.lossy {lossy!r} is not known", rid)
    _expect(codec in (None, *LOSSLESS_CODECS), f"{where}.encoding.codec {codec!r} is not known", rid)
    _expect(lossy is None or dtype.name in _FLOAT_DTYPES, f"{where}: a lossy encoding needs a float dtype", rid)
    stored_dtype = {None: dtype, "float16": np.dtype("<f2"), "int8": np.dtype(np.int8)}[lossy]
    expected = math.prod(shape) * stored_dtype.itemsize
    decoded = math.prod(shape) * dtype.itemsize
    _expect(
        max(expected, decoded) <= budget[0],
        f"{where} would unpack to {max(expected, decoded)} bytes; a message may unpack to at most {budget[0]} more",
        rid,
    )
    budget[0] -= max(expected, decoded)
    data: bytes | memoryview = view
    if codec == "zlib":
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(view, expected + 1)
        except zlib.error as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{where}: bad zlib data: {exc}", request_id=rid) from None
        _expect(not inflater.unconsumed_tail, f"{where}: zlib data inflates past {expected} bytes", rid)
    elif codec == "lz4":
        block = _lz4_block()
        try:
            data = block.decompress(bytes(view), uncompressed_size=expected)
        except block.LZ4BlockError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{where}: bad lz4 data: {exc}", request_id=rid) from None
    _expect(
        len(data) == expected,
        f"{where} holds {len(data)} bytes once decoded; {stored_dtype}{shape} needs {expected}",
        rid,
    )
    stored = np.frombuffer(data, dtype=stored_dtype).reshape(shape)
    if lossy == "int8":
        scale, zero_point = packed.get("scale"), packed.get("zero_point")
        _expect(
            isinstance(scale, float) and math.isfinite(scale) and scale > 0,
            f"{where}.encoding.scale must be a positive float",
            rid,
        )
        _expect(
            isinstance(zero_point, int) and not isinstance(zero_point, bool) and -128 <= zero_point <= 127,
            f"{where}.encoding.zero_point must be an int in [-128, 127]",
            rid,
        )
        return cast(np.ndarray, ((stored.astype(np.float32) - zero_point) * scale).astype(dtype))
    return stored.astype(dtype) if stored_dtype != dtype else stored.copy()


def _expect(condition: bool, message: str, request_id: RequestId | None = None) -> None:
    if not condition:
        raise ProtocolError(ErrorCode.BAD_REQUEST, message, request_id=request_id)


def decode_tensors(
    metas: Any,
    frames: Sequence[BytesLike],
    request_id: RequestId | None = None,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
) -> list[tuple[str | None, np.ndarray]]:
    """Turn header tensor descriptions plus frames into read-only numpy views (no copy)."""
    _expect(isinstance(metas, list), "'tensors' must be a list", request_id)
    _expect(len(metas) <= MAX_TENSORS, f"at most {MAX_TENSORS} tensors per message", request_id)
    used: set[int] = set()
    budget = [max_decoded_bytes]
    out: list[tuple[str | None, np.ndarray]] = []
    for i, meta in enumerate(metas):
        where = f"tensors[{i}]"
        _expect(isinstance(meta, dict), f"{where} must be a map", request_id)
        name = meta.get("name")
        dtype = meta.get("dtype")
        shape = meta.get("shape")
        frame = meta.get("frame")
        _expect(name is None or isinstance(name, str), f"{where}.name must be a string", request_id)
        _expect(
            isinstance(dtype, str) and dtype in WIRE_DTYPES,
            f"{where}.dtype {dtype!r} is not one of {sorted(WIRE_DTYPES)}",
            request_id,
        )
        _expect(
            isinstance(shape, list)
            and len(shape) <= MAX_RANK
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape),
            f"{where}.shape must be a list of at most {MAX_RANK} non-negative ints",
            request_id,
        )
        _expect(
            isinstance(frame, int) and not isinstance(frame, bool) and 0 <= frame < len(frames),
            f"{where}.frame {frame!r} does not name one of the {len(frames)} buffer frames",
            request_id,
        )
        _expect(frame not in used, f"{where}.frame {frame} is used by two tensors", request_id)
        used.add(frame)
        np_dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
        view = memoryview(frames[frame]).cast("B")
        if "encoding" in meta:
            try:
                decoded = _decode_one(view, np_dtype, shape, meta["encoding"], where, request_id, budget)
            except (OverflowError, ValueError, MemoryError) as exc:  # numpy or lz4 on absurd sizes
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"{where} cannot be unpacked: {exc}", request_id=request_id
                ) from None
            decoded.flags.writeable = False
            out.append((name, decoded))
            continue
        expected = math.prod(shape) * np_dtype.itemsize
        _expect(
            view.nbytes == expected,
            f"{where} is {dtype}{shape}, which needs {expected} bytes, but frame {frame} holds {view.nbytes}",
            request_id,
        )
        array = np.frombuffer(view, dtype=np_dtype).reshape(shape)
        array.flags.writeable = False
        out.append((name, array))
    return out


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
    _expect(isinstance(op, str) and op != "", "header 'op' must be a non-empty string", rid)
    tenant = header.get("tenant")
    _expect(tenant is None or isinstance(tenant, str), "header 'tenant' must be a string", rid)
    args = header.get("args", {})
    _expect(isinstance(args, dict), "header 'args' must be a map", rid)
    deadline_ms = header.get("deadline_ms")
    _expect(
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

"""Tensors on the wire: their specs, the dtypes that may travel, and the codec.

A tensor travels as raw little-endian bytes in a frame of its own (sent and received without
copying), described in the message header by name, dtype, shape and frame index; optionally packed
for a slow link (:class:`TensorEncoding`). :class:`TensorSpec` is what a model declares for each
input and output, as the daemon reports it and the client reads it.
"""

import math
import zlib
from functools import reduce
from operator import mul
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union, cast

import numpy as np

from tenantwire.errors import ErrorCode, ProtocolError, RequestId

# Written at the Python 3.6 language level (typing's generics, no dataclasses): a device worker
# imports this module under the device's own Python (README, "Device workers").

BytesLike = Union[bytes, bytearray, memoryview, Any]  # anything exposing the buffer protocol

MAX_TENSORS = 64
MAX_RANK = 8
# What packed tensors of one message may unpack to, in all (the daemon passes its own
# max_message_bytes): compressed frames are small, what they declare is not.
MAX_DECODED_BYTES = 256 * 1024 * 1024


# Wire dtypes are numpy dtype names; multi-byte types are little-endian on the wire.
WIRE_DTYPES: FrozenSet[str] = frozenset(
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

# numpy works out ``dtype.name`` in Python on every access (about 2 us); the codec needs it for every
# tensor of every message, so the wire dtypes' names and little-endian dtypes are looked up instead.
_WIRE_NAMES: Dict[Any, str] = {np.dtype(name): name for name in WIRE_DTYPES}
_LITTLE_ENDIAN: Dict[str, Any] = {
    name: np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name) for name in WIRE_DTYPES
}


def dtype_name(dtype: Any) -> str:
    """``dtype.name``, looked up for the wire dtypes."""
    name = _WIRE_NAMES.get(dtype)
    return str(dtype.name) if name is None else name


class _Record:
    """What ``@dataclass(frozen=True)`` gave the classes below, at the Python 3.6 level: fields
    named in ``__slots__`` and set once in ``__init__``; equality (same class only), hashing and
    ``repr`` by field, in order; assigning a field raises AttributeError; copy and pickle by value."""

    __slots__: Tuple[str, ...] = ()

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return (type(self), self._values())


class TensorSpec(_Record):
    """One model input or output. ``shape`` uses -1 for a dimension the model lets vary."""

    __slots__ = ("name", "dtype", "shape", "quantization")  # noqa: RUF023 - the fields' order: repr, ==, pickle
    name: str
    dtype: str
    shape: Tuple[int, ...]
    # Affine quantisation (scale, zero point) where the tensor is quantised, else None.
    quantization: Optional[Tuple[float, int]]

    def __init__(
        self, name: str, dtype: str, shape: Tuple[int, ...], quantization: Optional[Tuple[float, int]] = None
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "quantization", quantization)

    def to_wire(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "quantization": list(self.quantization) if self.quantization else None,
        }

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> "TensorSpec":
        q = data.get("quantization")
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(int(d) for d in data["shape"]),
            quantization=(float(q[0]), int(q[1])) if q else None,
        )

    def accepts(self, array: np.ndarray) -> Optional[str]:
        """None if ``array`` fits this input, else a sentence saying why not."""
        if dtype_name(array.dtype) != self.dtype:
            return f"input {self.name!r} needs dtype {self.dtype}, got {array.dtype.name}"
        # zip() sees two shapes of one length: the rank is compared first.
        if len(array.shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, array.shape)
        ):
            return f"input {self.name!r} needs shape {list(self.shape)}, got {list(array.shape)}"
        return None


# --------------------------------------------------------------------------- tensor codec


def _wire_array(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype not in _WIRE_NAMES and a.dtype.name not in WIRE_DTYPES:  # big-endian: named, not looked up
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


class TensorEncoding(_Record):
    """How tensors are packed for a slow link (edge to cloud). ``lossy`` first: ``float16``
    casts floats to half precision; ``int8`` quantizes each float tensor affinely to 8 bits
    with its own scale and zero point. Then ``codec`` compresses the bytes losslessly. The
    receiver decodes back to the tensor's declared dtype, so a model sees what it expects.
    Non-float tensors are only compressed, never made lossy."""

    __slots__ = ("lossy", "codec", "level")  # noqa: RUF023 - the fields' order: repr, ==, pickle
    lossy: Optional[str]
    codec: Optional[str]
    level: int

    def __init__(self, lossy: Optional[str] = None, codec: Optional[str] = None, level: int = 1) -> None:
        if lossy not in (None, *LOSSY_ENCODINGS):
            raise ValueError(f"lossy encoding {lossy!r} is not one of {LOSSY_ENCODINGS}")
        if codec not in (None, *LOSSLESS_CODECS):
            raise ValueError(f"codec {codec!r} is not one of {LOSSLESS_CODECS}")
        if not 0 <= level <= 9:
            raise ValueError("level must be 0-9")
        object.__setattr__(self, "lossy", lossy)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "level", level)

    @classmethod
    def parse(cls, text: Optional[str]) -> Optional["TensorEncoding"]:
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


def _encode_one(a: np.ndarray, encoding: TensorEncoding) -> Tuple[bytes, Dict[str, Any]]:
    meta: Dict[str, Any] = {}
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
            stored = np.where(np.isnan(q), zero_point, q).astype(np.int8)  # nan_to_num(nan=) is numpy 1.17
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
    tensors: Sequence[Tuple[Optional[str], np.ndarray]], first_frame: int = 0, encoding: Optional[TensorEncoding] = None
) -> Tuple[List[Dict[str, Any]], List[BytesLike]]:
    """Describe ``tensors`` for the header and return their raw buffers, without copying
    arrays that are already C-contiguous and little-endian (unless ``encoding`` packs them)."""
    metas: List[Dict[str, Any]] = []
    buffers: List[BytesLike] = []
    for index, (name, array) in enumerate(tensors):
        a = _wire_array(array)
        meta: Dict[str, Any] = {
            "name": name,
            "dtype": dtype_name(a.dtype),
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
    dtype: "np.dtype[Any]",
    shape: List[int],
    packed: Any,
    where: str,
    rid: Optional[RequestId],
    budget: List[int],
) -> np.ndarray:
    """Undo :func:`_encode_one`; never inflates past the size the declared tensor needs, nor
    past what is left of the message's ``budget`` (a one-element list, decremented)."""
    expect(isinstance(packed, dict), f"{where}.encoding must be a map", rid)
    lossy, codec = packed.get("lossy"), packed.get("codec")
    expect(lossy in (None, *LOSSY_ENCODINGS), f"{where}.encoding.lossy {lossy!r} is not known", rid)
    expect(codec in (None, *LOSSLESS_CODECS), f"{where}.encoding.codec {codec!r} is not known", rid)
    expect(lossy is None or dtype.name in _FLOAT_DTYPES, f"{where}: a lossy encoding needs a float dtype", rid)
    stored_dtype = {None: dtype, "float16": np.dtype("<f2"), "int8": np.dtype(np.int8)}[lossy]
    expected = _count(shape) * stored_dtype.itemsize
    decoded = _count(shape) * dtype.itemsize
    expect(
        max(expected, decoded) <= budget[0],
        f"{where} would unpack to {max(expected, decoded)} bytes; a message may unpack to at most {budget[0]} more",
        rid,
    )
    budget[0] -= max(expected, decoded)
    data: Union[bytes, memoryview] = view
    if codec == "zlib":
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(view, expected + 1)
        except zlib.error as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{where}: bad zlib data: {exc}", request_id=rid) from None
        expect(not inflater.unconsumed_tail, f"{where}: zlib data inflates past {expected} bytes", rid)
    elif codec == "lz4":
        block = _lz4_block()
        try:
            data = block.decompress(bytes(view), uncompressed_size=expected)
        except block.LZ4BlockError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{where}: bad lz4 data: {exc}", request_id=rid) from None
    expect(
        len(data) == expected,
        f"{where} holds {len(data)} bytes once decoded; {stored_dtype}{shape} needs {expected}",
        rid,
    )
    stored = np.frombuffer(data, dtype=stored_dtype).reshape(shape)
    if lossy == "int8":
        scale, zero_point = packed.get("scale"), packed.get("zero_point")
        expect(
            isinstance(scale, float) and math.isfinite(scale) and scale > 0,
            f"{where}.encoding.scale must be a positive float",
            rid,
        )
        expect(
            isinstance(zero_point, int) and not isinstance(zero_point, bool) and -128 <= zero_point <= 127,
            f"{where}.encoding.zero_point must be an int in [-128, 127]",
            rid,
        )
        return cast(np.ndarray, ((stored.astype(np.float32) - zero_point) * scale).astype(dtype))
    return stored.astype(dtype) if stored_dtype != dtype else stored.copy()


def _count(shape: Sequence[int]) -> int:
    """Elements in a tensor of ``shape``: Python ints, so no overflow (``math.prod`` is 3.8)."""
    return reduce(mul, shape, 1)


def expect(condition: bool, message: str, request_id: Optional[RequestId] = None) -> None:
    if not condition:
        raise _bad(message, request_id)


def _bad(message: str, request_id: Optional[RequestId]) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message, request_id=request_id)


def decode_tensors(
    metas: Any,
    frames: Sequence[BytesLike],
    request_id: Optional[RequestId] = None,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
) -> List[Tuple[Optional[str], np.ndarray]]:
    """Turn header tensor descriptions plus frames into read-only numpy views (no copy)."""
    expect(isinstance(metas, list), "'tensors' must be a list", request_id)
    expect(len(metas) <= MAX_TENSORS, f"at most {MAX_TENSORS} tensors per message", request_id)
    used: Set[int] = set()
    budget = [max_decoded_bytes]
    out: List[Tuple[Optional[str], np.ndarray]] = []
    for i, meta in enumerate(metas):
        # Every message passes through here: the checks come first and each message is only
        # written when its check fails.
        where = f"tensors[{i}]"
        expect(isinstance(meta, dict), f"{where} must be a map", request_id)
        name = meta.get("name")
        dtype = meta.get("dtype")
        shape = meta.get("shape")
        frame = meta.get("frame")
        if not (name is None or isinstance(name, str)):
            raise _bad(f"{where}.name must be a string", request_id)
        np_dtype = _LITTLE_ENDIAN.get(dtype) if isinstance(dtype, str) else None
        if np_dtype is None:
            raise _bad(f"{where}.dtype {dtype!r} is not one of {sorted(WIRE_DTYPES)}", request_id)
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_RANK
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise _bad(f"{where}.shape must be a list of at most {MAX_RANK} non-negative ints", request_id)
        if not (isinstance(frame, int) and not isinstance(frame, bool) and 0 <= frame < len(frames)):
            raise _bad(f"{where}.frame {frame!r} does not name one of the {len(frames)} buffer frames", request_id)
        if frame in used:
            raise _bad(f"{where}.frame {frame} is used by two tensors", request_id)
        used.add(frame)
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
        expected = _count(shape) * np_dtype.itemsize
        if view.nbytes != expected:
            message = f"{where} is {dtype}{shape}, which needs {expected} bytes, but frame {frame} holds {view.nbytes}"
            raise _bad(message, request_id)
        try:
            array = np.frombuffer(view, dtype=np_dtype).reshape(shape)
        except (ValueError, OverflowError) as exc:  # an empty tensor may still declare absurd dimensions
            message = f"{where} cannot be read: {exc}"
            raise ProtocolError(ErrorCode.BAD_REQUEST, message, request_id=request_id) from None
        array.flags.writeable = False
        out.append((name, array))
    return out

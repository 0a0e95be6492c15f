"""Unit tests for tenantwire.protocol: the wire format, the tensor codec and the error table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from tenantwire import protocol
from tenantwire.errors import ERROR_TABLE, ErrorCode, ProtocolError
from tenantwire.protocol import (
    MAX_HEADER_BYTES,
    MAX_ID_LENGTH,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
    peek_request_id,
)
from tenantwire.tensors import MAX_RANK, MAX_TENSORS

DOCS_PROTOCOL = Path(__file__).parents[2] / "docs" / "protocol.md"


# --------------------------------------------------------------------------- helpers


def _header(**fields: Any) -> bytes:
    """A request header with valid defaults; ``None`` values drop the field."""
    base: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": "req-1", "op": "ping"}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not None}, use_bin_type=True)


def _as_wire(frames: list[Any]) -> list[bytes]:
    """What a receiver gets: independent byte strings, not views on the sender's arrays."""
    return [bytes(memoryview(f).cast("B")) for f in frames]


def _decode_error(frames: list[Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(frames)
    return info.value


def _tensor_meta(**overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "x", "dtype": "float32", "shape": [2], "frame": 0}
    meta.update(overrides)
    return meta


# --------------------------------------------------------------------------- round trips


SAMPLE_ARRAYS = {
    "int8": np.array([-128, -1, 0, 1, 127], dtype=np.int8),
    "uint8": np.arange(6, dtype=np.uint8).reshape(2, 3),
    "int16": np.array([[-300, 300]], dtype=np.int16),
    "uint32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "int64": np.array([-(2**62), 2**62], dtype=np.int64),
    "uint64": np.array([2**64 - 1], dtype=np.uint64),
    "float16": np.array([0.5, -1.25, 65504.0, np.inf], dtype=np.float16),
    "float32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "float64": np.array([np.pi, -np.e, 1e300], dtype=np.float64),
    "bool": np.array([[True, False], [False, True]]),
    "empty-1d": np.zeros((0,), dtype=np.float32),
    "empty-2d": np.zeros((3, 0), dtype=np.int16),
    "rank-max": np.ones((1,) * MAX_RANK, dtype=np.uint8),
}


@pytest.mark.parametrize("key", sorted(SAMPLE_ARRAYS))
def test_request_round_trip_single_tensor(key: str) -> None:
    array = SAMPLE_ARRAYS[key]
    frames = encode_request(
        "infer", "r1", tenant="alice", args={"model": "m"}, tensors=[("in", array)], deadline_ms=250
    )
    request = decode_request(_as_wire(frames))
    assert request.id == "r1"
    assert request.op == "infer"
    assert request.tenant == "alice"
    assert request.args == {"model": "m"}
    assert request.deadline_ms == 250.0
    assert len(request.tensors) == 1
    name, decoded = request.tensors[0]
    assert name == "in"
    assert decoded.dtype.name == array.dtype.name
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_request_round_trip_multi_tensor_preserves_order_names_and_values() -> None:
    tensors = [
        ("a", np.arange(4, dtype=np.int8)),
        (None, np.array([[1.5, 2.5]], dtype=np.float16)),
        ("c", np.array([True, False, True])),
        ("d", np.zeros((2, 0), dtype=np.float64)),
    ]
    frames = encode_request("infer", 7, tensors=tensors)
    assert len(frames) == 1 + len(tensors)
    request = decode_request(_as_wire(frames))
    assert request.id == 7
    assert request.tenant is None
    assert request.deadline_ms is None
    assert [n for n, _ in request.tensors] == ["a", None, "c", "d"]
    for (_, sent), (_, got) in zip(tensors, request.tensors, strict=True):
        assert got.dtype == sent.dtype
        assert got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)


@pytest.mark.parametrize(
    "scalar",
    [np.array(3.5, dtype=np.float32), np.array(-7, dtype=np.int8), np.array(True), np.float16(1.5)],
    ids=["float32", "int8", "bool", "numpy-scalar"],
)
def test_request_round_trip_0d_tensor(scalar: np.ndarray) -> None:
    frames = encode_request("infer", "r0", tensors=[("s", scalar)])
    header = msgpack.unpackb(frames[0], raw=False)
    assert header["tensors"][0]["shape"] == []
    decoded = decode_request(_as_wire(frames)).tensors[0][1]
    assert decoded.shape == ()
    assert decoded.dtype == np.asarray(scalar).dtype
    assert decoded == scalar


def test_reply_round_trip_0d_tensor() -> None:
    reply = decode_reply(_as_wire(encode_reply("r0", tensors=[("loss", np.array(0.25, dtype=np.float64))])))
    assert reply.tensors[0][1].shape == ()
    assert reply.tensors[0][1] == 0.25


@pytest.mark.parametrize("dtype", ["float32", "int8", "bool", "uint64"])
def test_decode_0d_tensor_from_header(dtype: str) -> None:
    value = np.array(1, dtype=dtype)
    header = _header(tensors=[_tensor_meta(name="s", dtype=dtype, shape=[])])
    decoded = decode_request([header, value.tobytes()]).tensors[0][1]
    assert decoded.shape == ()
    assert decoded.dtype.name == dtype
    assert decoded == value


def test_blob_frame_comes_before_tensor_frames() -> None:
    blob = b"\x00model-file-bytes\xff" * 10
    x = np.arange(3, dtype=np.float32)
    frames = encode_request("submit_model", "s1", tenant="t", args={"name": "m"}, blobs=[blob], tensors=[("x", x)])
    header = msgpack.unpackb(frames[0], raw=False)
    # Buffer frames are numbered from 0 after the header: the blob is 0, the tensor 1.
    assert header["tensors"][0]["frame"] == 1
    assert bytes(frames[1]) == blob
    request = decode_request(_as_wire(frames))
    assert len(request.frames) == 2
    assert bytes(request.frames[0]) == blob
    np.testing.assert_array_equal(request.tensors[0][1], x)


def test_request_without_optional_fields_has_defaults() -> None:
    request = decode_request([_header()])
    assert request.op == "ping"
    assert request.tenant is None
    assert request.args == {}
    assert request.tensors == []
    assert request.deadline_ms is None
    assert request.frames == []


def test_unknown_op_string_is_left_for_the_server_to_answer() -> None:
    # The codec only checks that op is a non-empty string; the server answers UNKNOWN_OP.
    assert decode_request([_header(op="frobnicate")]).op == "frobnicate"


def test_reply_round_trip_with_tensors_result_and_timings() -> None:
    out = np.arange(6, dtype=np.float32).reshape(2, 3)
    frames = encode_reply("r9", {"model": "m"}, tensors=[("y", out)], timings={"queue_ms": 1.5})
    reply = decode_reply(_as_wire(frames))
    assert reply.ok is True
    assert reply.id == "r9"
    assert reply.result == {"model": "m"}
    assert reply.timings == {"queue_ms": 1.5}
    assert reply.error_code is None
    assert [n for n, _ in reply.tensors] == ["y"]
    np.testing.assert_array_equal(reply.tensors[0][1], out)


def test_error_reply_round_trip() -> None:
    frames = encode_error("r2", ErrorCode.QUEUE_FULL, "tenant 'a' queue is full", {"limit": 64})
    assert len(frames) == 1
    reply = decode_reply(frames)
    assert reply.ok is False
    assert reply.id == "r2"
    assert reply.error_code == "QUEUE_FULL"
    assert reply.error_message == "tenant 'a' queue is full"
    assert reply.error_details == {"limit": 64}
    assert reply.tensors == []


def test_error_reply_without_request_id() -> None:
    reply = decode_reply(encode_error(None, ErrorCode.BAD_REQUEST, "garbage"))
    assert reply.id is None
    assert reply.error_code == "BAD_REQUEST"


def test_decode_reply_rejects_malformed_replies() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_reply([])
    assert info.value.code is ErrorCode.BAD_REQUEST

    bad_version = msgpack.packb({"v": 99, "id": "x", "ok": True})
    with pytest.raises(ProtocolError) as info:
        decode_reply([bad_version])
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert info.value.request_id == "x"

    no_error_map = msgpack.packb({"v": PROTOCOL_VERSION, "id": "x", "ok": False})
    with pytest.raises(ProtocolError) as info:
        decode_reply([no_error_map])
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "error" in info.value.message


# --------------------------------------------------------------------------- zero copy


def test_decoded_tensors_share_memory_with_frames_and_are_read_only() -> None:
    a = np.arange(10, dtype=np.float32)
    b = np.arange(8, dtype=np.int16).reshape(2, 4)
    wire = _as_wire(encode_request("infer", "z", tensors=[("a", a), ("b", b)]))
    request = decode_request(wire)
    for (_, decoded), frame in zip(request.tensors, wire[1:], strict=True):
        raw = np.frombuffer(frame, dtype=np.uint8)
        assert np.shares_memory(decoded, raw)
        assert decoded.flags.writeable is False
        with pytest.raises(ValueError):
            decoded[...] = 0


def test_decoded_tensor_from_writable_frame_is_still_read_only_view() -> None:
    a = np.arange(4, dtype=np.int32)
    header, frame = encode_request("infer", "z", tensors=[("a", a)])
    buffer = bytearray(bytes(frame))
    request = decode_request([header, buffer])
    decoded = request.tensors[0][1]
    assert decoded.flags.writeable is False
    # Same memory: a change to the frame shows through the view (no copy was made).
    buffer[0:4] = np.int32(99).tobytes()
    assert decoded[0] == 99


def test_encode_does_not_copy_contiguous_little_endian_arrays() -> None:
    a = np.arange(16, dtype="<f4").reshape(4, 4)
    frames = encode_request("infer", "z", tensors=[("a", a)])
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.uint8), a)


def test_big_endian_arrays_are_sent_little_endian() -> None:
    big = np.array([1, 256, -2, 70000], dtype=">i4")
    big16 = np.array([1.5, -2.0], dtype=">f2")
    frames = encode_request("infer", "be", tensors=[("i", big), ("h", big16)])
    header = msgpack.unpackb(frames[0], raw=False)
    assert [m["dtype"] for m in header["tensors"]] == ["int32", "float16"]
    assert bytes(frames[1]) == np.array([1, 256, -2, 70000], dtype="<i4").tobytes()
    assert bytes(frames[2]) == np.array([1.5, -2.0], dtype="<f2").tobytes()
    request = decode_request(_as_wire(frames))
    np.testing.assert_array_equal(request.tensors[0][1], [1, 256, -2, 70000])
    np.testing.assert_array_equal(request.tensors[1][1], [1.5, -2.0])
    assert request.tensors[0][1].dtype.byteorder in ("<", "=")


def test_non_contiguous_arrays_are_sent_correctly() -> None:
    a = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran-ordered view
    request = decode_request(_as_wire(encode_request("infer", "nc", tensors=[("a", a)])))
    np.testing.assert_array_equal(request.tensors[0][1], a)


# --------------------------------------------------------------------------- malformed requests


def test_empty_message() -> None:
    err = _decode_error([])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "empty" in err.message
    assert err.request_id is None


@pytest.mark.parametrize("raw", [b"\xc1", b"", b"\x92\x01"], ids=["reserved-byte", "empty-frame", "truncated"])
def test_header_not_msgpack(raw: bytes) -> None:
    err = _decode_error([raw])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "msgpack" in err.message


def test_header_with_trailing_garbage_is_not_msgpack() -> None:
    err = _decode_error([_header() + b"\x00junk"])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "msgpack" in err.message


@pytest.mark.parametrize("value", [[1, 2], "a string", 5, None], ids=["list", "str", "int", "nil"])
def test_header_not_a_map(value: Any) -> None:
    err = _decode_error([msgpack.packb(value)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "map" in err.message


def test_oversized_header() -> None:
    raw = _header(args={"pad": "x" * MAX_HEADER_BYTES})
    assert len(raw) > MAX_HEADER_BYTES
    err = _decode_error([raw])
    assert err.code is ErrorCode.TOO_LARGE
    assert str(MAX_HEADER_BYTES) in err.message
    assert str(len(raw)) in err.message


def test_large_reply_header_is_accepted() -> None:
    # Replies come from the daemon and may be big (a long event list): no header cap on them.
    events = [{"event": "tick", "i": i, "pad": "x" * 100} for i in range(1000)]
    frames = encode_reply("ev", {"events": events})
    assert len(frames[0]) > MAX_HEADER_BYTES
    assert decode_reply(frames).result["events"] == events


def test_header_just_under_the_limit_is_accepted() -> None:
    pad = MAX_HEADER_BYTES - len(_header(args={"pad": ""})) - 8
    raw = _header(args={"pad": "x" * pad})
    assert len(raw) <= MAX_HEADER_BYTES
    assert decode_request([raw]).args["pad"] == "x" * pad


@pytest.mark.parametrize(
    "rid",
    [None, True, False, "", "x" * (MAX_ID_LENGTH + 1), 1.5, ["a"], {"a": 1}],
    ids=["missing", "true", "false", "empty", "too-long", "float", "list", "map"],
)
def test_missing_or_invalid_id(rid: Any) -> None:
    err = _decode_error([_header(id=rid)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "'id'" in err.message
    assert err.request_id is None


@pytest.mark.parametrize("rid", ["x" * MAX_ID_LENGTH, "a", 0, -1, 2**64 - 1, -(2**63)])
def test_valid_ids_at_the_edges(rid: Any) -> None:
    assert decode_request([_header(id=rid)]).id == rid


def test_missing_version() -> None:
    err = _decode_error([_header(v=None)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "'v'" in err.message
    assert err.request_id == "req-1"


@pytest.mark.parametrize("v", ["1", 1.0, True], ids=["str", "float", "bool"])
def test_version_of_wrong_type(v: Any) -> None:
    err = _decode_error([_header(v=v)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "'v'" in err.message


@pytest.mark.parametrize("v", [0, 2, 999])
def test_unsupported_version(v: int) -> None:
    err = _decode_error([_header(v=v, id="ask-me")])
    assert err.code is ErrorCode.UNSUPPORTED_VERSION
    assert err.details == {"supported": list(SUPPORTED_VERSIONS)}
    assert err.request_id == "ask-me"
    assert str(v) in err.message


@pytest.mark.parametrize("op", [None, "", 5, ["ping"]], ids=["missing", "empty", "int", "list"])
def test_bad_op(op: Any) -> None:
    err = _decode_error([_header(op=op)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "'op'" in err.message
    assert err.request_id == "req-1"


@pytest.mark.parametrize("tenant", [5, ["a"], b"bytes"], ids=["int", "list", "bin"])
def test_tenant_not_a_string(tenant: Any) -> None:
    err = _decode_error([_header(tenant=tenant)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "'tenant'" in err.message
    assert err.request_id == "req-1"


@pytest.mark.parametrize("args", [[1, 2], "x", 3], ids=["list", "str", "int"])
def test_args_not_a_map(args: Any) -> None:
    err = _decode_error([_header(args=args)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "'args'" in err.message


@pytest.mark.parametrize(
    "deadline", [-1, -0.5, "10", True, float("nan")], ids=["neg-int", "neg-float", "str", "bool", "nan"]
)
def test_bad_deadline(deadline: Any) -> None:
    err = _decode_error([_header(deadline_ms=deadline)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "deadline_ms" in err.message


def test_zero_deadline_is_accepted() -> None:
    assert decode_request([_header(deadline_ms=0)]).deadline_ms == 0.0


@pytest.mark.parametrize(
    "array",
    [np.array([object(), 1], dtype=object), np.array([1 + 2j], dtype=np.complex64), np.array(["s"])],
    ids=["object", "complex", "unicode"],
)
def test_encode_rejects_unsupported_dtype(array: np.ndarray) -> None:
    with pytest.raises(ProtocolError) as info:
        encode_request("infer", "d", tensors=[("x", array)])
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert str(array.dtype) in info.value.message


@pytest.mark.parametrize("dtype", ["object", "complex64", "complex128", "float128", "<f4", "", 5, None])
def test_decode_rejects_unsupported_dtype(dtype: Any) -> None:
    err = _decode_error([_header(tensors=[_tensor_meta(dtype=dtype)]), b"\x00" * 8])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "tensors[0].dtype" in err.message
    assert err.request_id == "req-1"


@pytest.mark.parametrize(
    "shape",
    [[-1], [2, -3], [1] * (MAX_RANK + 1), "2", [1.0], [True], None],
    ids=["negative", "negative-inner", "too-many-dims", "str", "float-dim", "bool-dim", "missing"],
)
def test_bad_shape(shape: Any) -> None:
    err = _decode_error([_header(tensors=[_tensor_meta(shape=shape)]), b"\x00" * 8])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "tensors[0].shape" in err.message
    assert str(MAX_RANK) in err.message


@pytest.mark.parametrize(
    "frame", [1, -1, 99, None, True, "0"], ids=["past-end", "negative", "far", "missing", "bool", "str"]
)
def test_frame_index_out_of_range(frame: Any) -> None:
    err = _decode_error([_header(tensors=[_tensor_meta(frame=frame)]), b"\x00" * 8])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "tensors[0].frame" in err.message
    assert "1 buffer frames" in err.message


def test_frame_index_with_no_buffer_frames() -> None:
    err = _decode_error([_header(tensors=[_tensor_meta(frame=0)])])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "0 buffer frames" in err.message


def test_frame_reused_by_two_tensors() -> None:
    metas = [_tensor_meta(name="a", frame=0), _tensor_meta(name="b", frame=0)]
    err = _decode_error([_header(tensors=metas), b"\x00" * 8])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "tensors[1].frame" in err.message
    assert "two tensors" in err.message


def test_truncated_tensor_frame() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    header, frame = encode_request("infer", "t", tensors=[("x", x)])
    err = _decode_error([header, bytes(frame)[:-1]])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "needs 24 bytes" in err.message
    assert "holds 23" in err.message
    assert err.request_id == "t"


def test_oversized_tensor_frame() -> None:
    err = _decode_error([_header(tensors=[_tensor_meta(shape=[2])]), b"\x00" * 9])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "needs 8 bytes" in err.message


def test_tensors_not_a_list_and_meta_not_a_map() -> None:
    err = _decode_error([_header(tensors={"a": 1})])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "'tensors'" in err.message
    err = _decode_error([_header(tensors=[5]), b""])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "tensors[0]" in err.message


def test_tensor_name_must_be_string() -> None:
    err = _decode_error([_header(tensors=[_tensor_meta(name=3)]), b"\x00" * 8])
    assert err.code is ErrorCode.BAD_REQUEST
    assert "tensors[0].name" in err.message


def test_too_many_tensors() -> None:
    n = MAX_TENSORS + 1
    metas = [_tensor_meta(name=f"t{i}", dtype="uint8", shape=[1], frame=i) for i in range(n)]
    err = _decode_error([_header(tensors=metas), *([b"\x00"] * n)])
    assert err.code is ErrorCode.BAD_REQUEST
    assert str(MAX_TENSORS) in err.message


def test_protocol_error_str_carries_the_code() -> None:
    err = _decode_error([])
    assert str(err).startswith("BAD_REQUEST: ")


# --------------------------------------------------------------------------- peek_request_id


def test_peek_request_id() -> None:
    # The id is recovered even when another field makes the request invalid.
    assert peek_request_id(_header(id="abc", v=42, op=None)) == "abc"
    assert peek_request_id(_header(id=17)) == 17
    assert peek_request_id(b"\xc1") is None
    assert peek_request_id(msgpack.packb([1, 2])) is None
    assert peek_request_id(_header(id=None)) is None
    assert peek_request_id(_header(id=True)) is None
    assert peek_request_id(_header(id="")) is None
    assert peek_request_id(_header(id="x" * (MAX_ID_LENGTH + 1))) is None
    assert peek_request_id(_header(id="big", args={"pad": "x" * MAX_HEADER_BYTES})) is None


# --------------------------------------------------------------------------- error table


def test_error_table_covers_every_code_with_a_description() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)
    for code, text in ERROR_TABLE.items():
        assert isinstance(text, str) and len(text.strip()) > 20, code


def test_error_codes_are_their_own_wire_names() -> None:
    for code in ErrorCode:
        assert code.value == code.name
    assert len({c.value for c in ErrorCode}) == len(ErrorCode)


def test_every_error_code_is_documented() -> None:
    text = DOCS_PROTOCOL.read_text(encoding="utf-8")
    missing = [code.value for code in ErrorCode if code.value not in text]
    assert not missing, f"{DOCS_PROTOCOL} does not document: {missing}"


def test_supported_versions_include_the_current_one() -> None:
    assert protocol.PROTOCOL_VERSION in protocol.SUPPORTED_VERSIONS

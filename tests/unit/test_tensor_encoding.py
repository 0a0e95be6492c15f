"""Tensor encodings for slow links: lossless codecs are exact, lossy ones stay within their
stated error, and a receiver never inflates more than the declared tensor needs."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from tenantwire.errors import ErrorCode, ProtocolError
from tenantwire.protocol import decode_request, encode_request
from tenantwire.tensors import TensorEncoding


def roundtrip(tensors: list[tuple[str | None, np.ndarray]], encoding: TensorEncoding | None) -> tuple[list, int]:
    frames = encode_request("infer", 1, tensors=tensors, encoding=encoding)
    wire = sum(len(memoryview(f).cast("B")) for f in frames[1:])
    request = decode_request([bytes(memoryview(f).cast("B")) for f in frames])
    return request.tensors, wire


# Activations look like this: mostly zeros after a ReLU, the rest small positive floats.
def activation(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((1, 28, 28, 32)), 0).astype(np.float32)


@pytest.mark.parametrize("codec", ["zlib", "lz4"])
def test_lossless_codecs_are_exact_and_smaller_on_sparse_activations(codec: str) -> None:
    x = activation()
    (decoded,), wire = roundtrip([("x", x)], TensorEncoding(codec=codec))
    assert decoded[1].dtype == np.float32 and decoded[1].shape == x.shape
    np.testing.assert_array_equal(decoded[1], x)
    assert wire < x.nbytes * 0.9


def test_float16_halves_the_bytes_within_half_precision() -> None:
    x = activation()
    (decoded,), wire = roundtrip([("x", x)], TensorEncoding(lossy="float16"))
    assert wire == x.nbytes // 2
    assert decoded[1].dtype == np.float32
    np.testing.assert_allclose(decoded[1], x, rtol=1e-3, atol=1e-4)


def test_int8_quarters_the_bytes_within_one_step() -> None:
    x = activation() * 3.0 - 1.0
    (decoded,), wire = roundtrip([("x", x)], TensorEncoding(lossy="int8"))
    assert wire == x.size
    step = (x.max() - min(0.0, x.min())) / 255.0
    assert np.abs(decoded[1] - x).max() <= step * 0.51 + 1e-6
    assert decoded[1].dtype == np.float32


def test_lossy_steps_leave_integer_tensors_alone() -> None:
    x = np.arange(1000, dtype=np.int32).reshape(10, 100)
    (decoded,), _ = roundtrip([("ids", x)], TensorEncoding(lossy="int8", codec="zlib"))
    np.testing.assert_array_equal(decoded[1], x)


def test_decoded_tensors_are_read_only_like_raw_ones() -> None:
    (decoded,), _ = roundtrip([("x", activation())], TensorEncoding(lossy="int8", codec="zlib"))
    assert not decoded[1].flags.writeable


def test_zlib_bomb_is_refused_without_inflating_it() -> None:
    frames = encode_request(
        "infer", 7, tensors=[("x", np.zeros((4,), np.float32))], encoding=TensorEncoding(codec="zlib")
    )
    frames[1] = zlib.compress(b"\0" * 50_000_000)  # 50 MB of zeros for a 16-byte tensor
    with pytest.raises(ProtocolError, match="inflates past 16 bytes") as info:
        decode_request(frames)
    assert info.value.code is ErrorCode.BAD_REQUEST and info.value.request_id == 7


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"codec": "brotli"}, "codec 'brotli' is not known"),
        ({"lossy": "int4"}, "lossy 'int4' is not known"),
        ({"lossy": "int8", "scale": -1.0, "zero_point": 0}, "scale must be a positive float"),
        ({"lossy": "int8", "scale": 0.1, "zero_point": 300}, "zero_point must be an int"),
    ],
)
def test_malformed_encodings_get_bad_request(patch: dict, message: str) -> None:
    import msgpack

    frames = encode_request("infer", 3, tensors=[("x", np.zeros((4,), np.float32))], encoding=TensorEncoding("int8"))
    header = msgpack.unpackb(frames[0])
    header["tensors"][0]["encoding"] = patch
    with pytest.raises(ProtocolError, match=message):
        decode_request([msgpack.packb(header), frames[1]])


def test_lossy_encoding_of_an_integer_dtype_is_refused() -> None:
    import msgpack

    frames = encode_request("infer", 3, tensors=[("x", np.zeros((4,), np.int8))])
    header = msgpack.unpackb(frames[0])
    header["tensors"][0]["encoding"] = {"lossy": "float16"}
    with pytest.raises(ProtocolError, match="needs a float dtype"):
        decode_request([msgpack.packb(header), bytes(8)])


@pytest.mark.parametrize(
    ("text", "label"),
    [(None, "none"), ("none", "none"), ("zlib", "zlib"), ("int8+lz4", "int8+lz4"), ("float16", "float16")],
)
def test_encodings_parse(text: str | None, label: str) -> None:
    parsed = TensorEncoding.parse(text)
    assert (parsed.label if parsed else "none") == label


def test_unknown_encodings_do_not_parse() -> None:
    with pytest.raises(ValueError, match="cannot read encoding"):
        TensorEncoding.parse("gzip")
    with pytest.raises(ValueError, match="cannot read encoding"):
        TensorEncoding.parse("zlib+lz4")


@pytest.mark.parametrize("codec", ["zlib", "lz4"])
def test_a_small_frame_cannot_declare_a_huge_tensor(codec: str) -> None:
    import msgpack

    frames = encode_request("infer", 9, tensors=[("x", np.zeros((4,), np.uint8))], encoding=TensorEncoding(codec=codec))
    header = msgpack.unpackb(frames[0])
    header["tensors"][0]["shape"] = [512 * 1024 * 1024]  # 512 MiB declared behind a few bytes
    with pytest.raises(ProtocolError, match="would unpack to 536870912 bytes") as info:
        decode_request([msgpack.packb(header), frames[1]], max_decoded_bytes=64 * 1024 * 1024)
    assert info.value.code is ErrorCode.BAD_REQUEST and info.value.request_id == 9
    header["tensors"][0]["shape"] = [2**62, 4]  # would overflow numpy: still a typed refusal
    with pytest.raises(ProtocolError, match="unpack"):
        decode_request([msgpack.packb(header), frames[1]])


def test_the_budget_is_for_the_whole_message() -> None:
    x = np.zeros((1024,), np.float32)  # 4 KiB each once unpacked
    frames = encode_request("infer", 1, tensors=[("a", x), ("b", x)], encoding=TensorEncoding(codec="zlib"))
    decode_request(frames, max_decoded_bytes=8192)
    with pytest.raises(ProtocolError, match="at most 4095 more"):
        decode_request(frames, max_decoded_bytes=8191)

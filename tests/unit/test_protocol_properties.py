"""Property: whatever header and frames arrive, decoding either yields a request or raises
ProtocolError with a wire code, never another exception (which would leave the sender without a
reply). Hypothesis generates headers around the schema of docs/protocol.md: right and wrong
types, absurd shapes and frame indexes, encodings with junk parameters."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantwire.errors import ErrorCode, ProtocolError
from tenantwire.protocol import PROTOCOL_VERSION, Request, decode_reply, decode_request
from tenantwire.tensors import WIRE_DTYPES

# The repros: an empty tensor declaring dimensions numpy cannot hold.
ABSURD_SHAPES = [[0, 2**63], [0, 2**64 - 1], [0, 2**40, 2**40]]

ints = st.one_of(
    st.integers(min_value=-3, max_value=8),
    st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63, 2**64 - 1, -(2**63)]),
)
scalars = st.one_of(
    st.none(), st.booleans(), ints, st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=8)
)
dims = st.lists(ints, max_size=10)
encodings = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "codec": st.sampled_from(["zlib", "lz4", "bogus", 3]),
            "lossy": st.sampled_from(["float16", "int8", "x", None]),
            "scale": st.one_of(st.floats(allow_nan=True), st.text(max_size=3)),
            "zero_point": ints,
        },
    ),
)


@st.composite
def tensor_meta(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(scalars)  # not even a map
    meta: dict[str, Any] = {
        "name": draw(st.one_of(st.none(), st.text(max_size=4), ints)),
        "dtype": draw(st.one_of(st.sampled_from(sorted(WIRE_DTYPES)), st.text(max_size=6), ints)),
        "shape": draw(st.one_of(dims, scalars)),
        "frame": draw(st.one_of(ints, scalars)),
    }
    encoding = draw(encodings)
    if encoding is not None:
        meta["encoding"] = encoding
    return meta


@st.composite
def messages(draw: st.DrawFn) -> list[bytes]:
    header: dict[str, Any] = {
        "v": draw(st.one_of(st.just(PROTOCOL_VERSION), ints, scalars)),
        "id": draw(st.one_of(st.text(max_size=6), ints, scalars)),
        "op": draw(st.one_of(st.sampled_from(["infer", "ping", "submit_model", ""]), scalars)),
    }
    for key, values in (
        ("tenant", st.one_of(st.text(max_size=6), scalars)),
        ("args", st.one_of(st.dictionaries(st.text(max_size=5), scalars, max_size=3), scalars)),
        ("deadline_ms", st.one_of(st.floats(allow_nan=True), ints, scalars)),
        ("tensors", st.one_of(st.lists(tensor_meta(), max_size=4), scalars)),
    ):
        if draw(st.booleans()):
            header[key] = draw(values)
    frames = draw(st.lists(st.binary(max_size=64), max_size=4))
    return [msgpack.packb(header, use_bin_type=True), *frames]


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_any_request_decodes_or_is_refused_with_a_code(frames: list[bytes]) -> None:
    try:
        request = decode_request(frames)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return
    assert isinstance(request, Request)


@st.composite
def well_formed_headers_with_any_tensors(draw: st.DrawFn) -> list[bytes]:
    """Everything right but the tensors, whose dimensions and frames are anything: what a client
    with a bug (or an attacker) who read the protocol would send."""
    frames = draw(st.lists(st.sampled_from([b"", b"\x00" * 4, b"\x00" * 8, b"\x01" * 24]), min_size=1, max_size=3))
    metas = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.none(),
                    "dtype": st.sampled_from(sorted(WIRE_DTYPES)),
                    "shape": dims,
                    "frame": st.integers(0, len(frames) - 1),
                },
                optional={"encoding": encodings.filter(lambda e: e is not None)},
            ),
            min_size=1,
            max_size=len(frames),
            unique_by=lambda m: m["frame"],
        )
    )
    header = {"v": PROTOCOL_VERSION, "id": "r", "op": "infer", "args": {"model": "m"}, "tensors": metas}
    return [msgpack.packb(header, use_bin_type=True), *frames]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(well_formed_headers_with_any_tensors())
def test_any_tensor_description_decodes_or_is_refused_with_a_code(frames: list[bytes]) -> None:
    try:
        decode_request(frames)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST and exc.request_id == "r"


@settings(max_examples=200, deadline=None, derandomize=True)
@given(messages())
def test_any_reply_decodes_or_is_refused_with_a_code(frames: list[bytes]) -> None:
    try:
        decode_reply(frames)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)


@pytest.mark.parametrize("shape", ABSURD_SHAPES, ids=str)
def test_an_empty_tensor_with_absurd_dimensions_is_a_bad_request(shape: list[int]) -> None:
    header = {
        "v": PROTOCOL_VERSION,
        "id": "r",
        "op": "infer",
        "tensors": [{"name": None, "dtype": "float32", "shape": shape, "frame": 0}],
    }
    with pytest.raises(ProtocolError) as info:
        decode_request([msgpack.packb(header), b""])
    assert info.value.code is ErrorCode.BAD_REQUEST and info.value.request_id == "r"
    assert "tensors[0]" in info.value.message
    # The same shape with one dimension the machine can hold is an ordinary empty tensor.
    header["tensors"][0]["shape"] = [0, 3]
    assert decode_request([msgpack.packb(header), b""]).tensors[0][1].shape == (0, 3)
    assert np.dtype("float32") == decode_request([msgpack.packb(header), b""]).tensors[0][1].dtype

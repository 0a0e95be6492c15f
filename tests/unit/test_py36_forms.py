"""The Python 3.6 forms of the worker-side modules behave as the 3.11 forms they replaced did.

``ErrorCode`` was a ``StrEnum`` and is now ``(str, Enum)``: every way a code leaves the daemon
(``str``, f-strings and format specs, ``==`` and dict lookups with plain strings, msgpack, JSON, the
error reply's frame) must give the same bytes as the ``StrEnum`` did; the reference here is a
``StrEnum`` with the same members. ``TensorSpec``/``TensorEncoding`` were frozen dataclasses: the
same equality, hashing, repr, immutability and copying. ``strict_zip`` raises what
``zip(strict=True)`` raised, and ``package_version`` says None rather than raise.
"""

from __future__ import annotations

import copy
import json
import pickle
import queue
from enum import StrEnum
from pathlib import Path

import msgpack
import numpy as np
import pytest

from tenantd.runtimes import litert
from tenantd.runtimes.base import IdleQueue, package_version, strict_zip
from tenantwire.errors import ErrorCode, TenantdError
from tenantwire.protocol import decode_reply, encode_error
from tenantwire.tensors import TensorEncoding, TensorSpec
from tests.conftest import ModelFiles, direct_litert

Reference = StrEnum("Reference", [(code.name, code.value) for code in ErrorCode])  # type: ignore[misc]


@pytest.mark.parametrize("code", list(ErrorCode))
def test_an_error_code_is_written_as_a_strenum_was(code: ErrorCode) -> None:
    ref = Reference[code.name]
    assert str(code) == str(ref) == code.value == code.name
    assert f"{code}" == f"{ref}"
    assert f"{code:>24}|{code:.3}" == f"{ref:>24}|{ref:.3}"
    assert "%s" % code == "%s" % ref  # noqa: UP031 - the %-form is what is pinned
    assert repr(code) == repr(ref).replace("Reference", "ErrorCode")
    assert code == code.value and code.value == code and hash(code) == hash(code.value)
    assert {code.value: 1}[code] == 1 and {code: 1}[code.value] == 1
    assert ErrorCode(code.value) is code
    assert msgpack.packb(code) == msgpack.packb(ref) == msgpack.packb(code.value)
    assert msgpack.packb({code: [code]}) == msgpack.packb({code.value: [code.value]})
    for indent in (None, 2):  # the C encoder, and the pure-Python one that indent takes
        got = json.dumps({"code": code, code: [code]}, indent=indent)
        assert got == json.dumps({"code": ref, ref: [ref]}, indent=indent)
        assert got == json.dumps({"code": code.value, code.value: [code.value]}, indent=indent)
    assert str(TenantdError(code, "no")) == f"{code.value}: no"


def test_an_error_reply_frame_is_byte_identical() -> None:
    frame = bytes(encode_error("r1", ErrorCode.QUEUE_FULL, "full", {"limit": 4})[0])
    assert b"\xaaQUEUE_FULL" in frame  # msgpack's fixstr of the plain value
    assert frame == bytes(encode_error("r1", Reference.QUEUE_FULL, "full", {"limit": 4})[0])  # type: ignore[arg-type]
    assert decode_reply([frame]).error_code == "QUEUE_FULL"


def test_a_tensor_spec_behaves_as_the_frozen_dataclass_did() -> None:
    spec = TensorSpec("x", "float32", (1, -1, 3), quantization=(0.5, -3))
    same = TensorSpec(name="x", dtype="float32", shape=(1, -1, 3), quantization=(0.5, -3))
    assert spec == same and hash(spec) == hash(same) and len({spec, same}) == 1
    assert spec != TensorSpec("x", "float32", (1, -1, 3))
    assert spec != ("x", "float32", (1, -1, 3), (0.5, -3))  # a record, not a tuple
    assert repr(spec) == "TensorSpec(name='x', dtype='float32', shape=(1, -1, 3), quantization=(0.5, -3))"
    assert TensorSpec.from_wire(spec.to_wire()) == spec
    assert copy.copy(spec) == spec and copy.deepcopy(spec) == spec and pickle.loads(pickle.dumps(spec)) == spec
    with pytest.raises(AttributeError):
        spec.name = "y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del spec.dtype  # type: ignore[misc]
    with pytest.raises(AttributeError):
        spec.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        msgpack.packb(spec)  # never silently sent as a list
    assert spec.accepts(np.zeros((1, 7, 3), np.float32)) is None
    assert "needs shape" in (spec.accepts(np.zeros((1, 7), np.float32)) or "")


def test_a_tensor_encoding_validates_and_compares_as_before() -> None:
    assert TensorEncoding() == TensorEncoding(None, None, 1)
    assert TensorEncoding.parse("float16+lz4") == TensorEncoding(lossy="float16", codec="lz4")
    assert repr(TensorEncoding("int8")) == "TensorEncoding(lossy='int8', codec=None, level=1)"
    assert TensorEncoding("int8").label == "int8"
    for bad in ({"lossy": "int4"}, {"codec": "gzip"}, {"level": 10}):
        with pytest.raises(ValueError):
            TensorEncoding(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("first", "second"), [([1, 2], [3]), ([1], [2, 3]), ([], [1])])
def test_strict_zip_raises_what_zip_strict_raised(first: list[int], second: list[int]) -> None:
    with pytest.raises(ValueError) as ours:
        strict_zip(first, second)
    with pytest.raises(ValueError) as builtin:
        list(zip(first, second, strict=True))
    assert str(ours.value) == str(builtin.value)
    assert list(strict_zip([1, 2], "ab")) == [(1, "a"), (2, "b")]


def test_package_version_and_the_idle_queue() -> None:
    assert package_version("numpy") == np.__version__
    assert package_version("no-such-distribution-tenantd") is None
    idle = IdleQueue()
    idle.put("a")
    assert idle.get_nowait() == "a"


def test_litert_instances_on_python_3_6s_queue(model_files: ModelFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.6 has no queue.SimpleQueue; IdleQueue is then queue.Queue. A model's interpreters
    come and go through it as through SimpleQueue (real LiteRT, two instances, an unload)."""
    monkeypatch.setattr(litert, "IdleQueue", queue.Queue)
    model = litert.LiteRTRuntime().load(Path(model_files.mlp))
    model.add_instance()
    assert isinstance(model._idle, queue.Queue) and model._idle.qsize() == 2
    x = np.ones((1, 32), np.float32)
    assert np.array_equal(model.infer([x])[0], direct_litert(model_files.mlp, x)["probs"])
    with pytest.raises(litert.RuntimeFailure, match=r"zip\(\) argument 2 is shorter than argument 1"):
        model.infer([])
    assert model._idle.qsize() == 2  # each interpreter back in the pool, after a failure too
    model.unload()
    with pytest.raises(litert.RuntimeFailure, match="more concurrent calls"):
        model.infer([x])

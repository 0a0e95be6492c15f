"""The fuzzer's own promises (tests/support/fuzz.py), which the fuzzing tier's reports rely on."""

from __future__ import annotations

import msgpack

from tenantwire.tensors import TensorSpec
from tests.support.fuzz import FuzzMessage, FuzzTarget, fuzz_message

TARGET = FuzzTarget(
    models={"m": ("alice", (TensorSpec("input", "float32", (1, 4)),))},
    pipelines={"p": ("alice", "m")},
    uplink="cloud",
    model_files=(b"TFL3" * 64,),
    policy_toml='[uplinks.cloud]\nendpoint = "ipc:///nowhere"\ntenant = "edge"\n',
)


def test_a_seed_and_an_index_make_the_same_message_every_time() -> None:
    """What makes a reported (seed, index) a repro."""
    for index in (0, 17, 2_499):
        assert fuzz_message(TARGET, 5, index) == fuzz_message(TARGET, 5, index)
    assert [fuzz_message(TARGET, 5, i) for i in range(50)] != [fuzz_message(TARGET, 6, i) for i in range(50)]


def test_the_expected_id_follows_the_protocol() -> None:
    def message(*frames: bytes) -> FuzzMessage:
        return FuzzMessage(0, 0, "test", frames)

    def header(**fields: object) -> bytes:
        return msgpack.packb({"v": 1, "op": "ping", **fields})

    assert message(header(id="r1")).expected_id() == "r1"
    assert message(b"", header(id=7)).expected_id() == 7  # after a REQ delimiter
    assert message(header(id=2**64 - 1)).expected_id() == 2**64 - 1 and message(header(id="x" * 128)).expected_id()
    for bad in ("", "x" * 129, True, 1.5, None, b"id", [1]):
        assert message(header(id=bad)).expected_id() is None, bad
    assert message(b"\xc1").expected_id() is None
    assert message(header(id="big", pad="p" * 70_000)).expected_id() is None  # over 64 KiB
    assert message(b"").expected_id() is None

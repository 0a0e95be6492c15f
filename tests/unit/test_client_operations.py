"""The two clients' operations are one set: each public method of either client exists in both
with the same signature, and delegates to the operation of its name in tenantclient.operations.
Their behaviour against a daemon is tested in tests/integration; this keeps the three in step."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from tenantclient import AsyncTenantClient, TenantClient, operations
from tenantwire.protocol import Op, Reply

# What is not an operation: the connection's life and the raw request.
NOT_OPERATIONS = {"call", "close"}


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_") and name not in NOT_OPERATIONS
    }


def test_both_clients_offer_the_same_operations_with_the_same_signatures() -> None:
    blocking, asynchronous = _public_methods(TenantClient), _public_methods(AsyncTenantClient)
    assert blocking == asynchronous
    for name in asynchronous:
        assert inspect.iscoroutinefunction(getattr(AsyncTenantClient, name)), name
        assert callable(getattr(operations, name, None)), f"tenantclient.operations has no {name}"


# One example of each operation's arguments; together they must reach every wire operation.
EXAMPLES: dict[str, tuple[object, ...]] = {
    "ping": (),
    "status": (),
    "submit_model": (b"model bytes", "m", "litert", False, 5.0),
    "list_models": (),
    "remove_model": ("m",),
    "set_pipeline": ("p", {"kind": "split"}, True),
    "remove_pipeline": ("p",),
    "list_pipelines": (),
    "policy_show": (),
    "policy_set": ("slots = 1\n",),
    "metrics": (),
    "reload_keys": (),
    "events": (10, "switch"),
    "infer_detailed": ("m", np.zeros((1, 2), np.float32), 50.0, 1.0),
    "infer": ("m", {"a": np.zeros((1, 2), np.float32)}, None, None),
}


def test_every_wire_operation_has_a_client_operation() -> None:
    assert set(EXAMPLES) == set(_public_methods(TenantClient))
    built = {name: getattr(operations, name)(*args) for name, args in EXAMPLES.items()}
    assert {call.op for call in built.values()} == set(Op)


def test_requests_are_built_as_the_protocol_says(tmp_path: Path) -> None:
    submit = operations.submit_model(b"raw", "m", None, False, 120.0)
    assert (submit.op, submit.args, submit.blobs, submit.timeout) == (
        Op.SUBMIT_MODEL,
        {"name": "m", "replace": False},
        [b"raw"],
        120.0,
    )
    model = tmp_path / "net.tflite"
    model.write_bytes(b"file")
    from_path = operations.submit_model(model, "m", "litert", True, 9.0)
    assert from_path.args == {"name": "m", "replace": True, "filename": "net.tflite", "runtime": "litert"}
    assert operations.events(5, None).args == {"limit": 5}
    x = np.ones((1, 2), np.float32)
    infer = operations.infer("m", x, 20.0, None)
    assert infer.args == {"model": "m"} and infer.deadline_ms == 20.0 and infer.timeout is None
    assert infer.tensors is not None and infer.tensors[0][0] is None and infer.tensors[0][1] is x
    with pytest.raises(TypeError, match="numpy array"):
        operations.infer("m", [1, 2], None, None)  # type: ignore[arg-type]


def test_replies_become_return_values() -> None:
    y = np.arange(3, dtype=np.float32)
    reply = Reply(id="1", ok=True, tensors=[("probs", y), (None, y)], timings={"total_ms": 1.0})
    outputs = operations.infer("m", y, None, None).parse(reply)
    assert list(outputs) == ["probs", "1"] and outputs["probs"] is y
    detailed = operations.infer_detailed("m", y, None, None).parse(reply)
    assert detailed.outputs.keys() == outputs.keys() and detailed.timings == {"total_ms": 1.0}
    assert operations.metrics().parse(Reply(id="1", ok=True, result={"text": "up 1\n"})) == "up 1\n"
    assert operations.remove_model("m").parse(Reply(id="1", ok=True)) is None

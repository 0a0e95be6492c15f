"""Integration: a real daemon on a real ipc:// socket, real LiteRT, real model files.

Outputs through the daemon must equal a direct in-process LiteRT run of the same file on the same
input, bit for bit (same runtime, same thread count)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from tenantclient import AsyncTenantClient, TenantClient
from tenantclient import errors as E
from tenantd.daemon import Daemon
from tenantd.events import Event
from tenantwire import protocol
from tests.conftest import ModelFiles, direct_litert

RNG = np.random.default_rng(1234)


def rand(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    if dtype == "int8":
        return RNG.integers(-128, 128, size=shape, dtype=np.int8)
    return RNG.standard_normal(shape).astype(dtype)


def test_submit_and_infer_equals_direct_litert(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="alice") as client:
        info = client.submit_model(model_files.mlp, "mlp")
        assert (info.name, info.owner, info.runtime, info.state, info.resident) == (
            "mlp",
            "alice",
            "litert",
            "admitted",
            True,
        )
        assert [(s.name, s.dtype, s.shape) for s in info.inputs] == [("input", "float32", (1, 32))]
        assert [(s.name, s.dtype, s.shape) for s in info.outputs] == [("probs", "float32", (1, 10))]
        assert info.footprint_bytes > 0 and info.load_ms > 0 and info.first_infer_ms > 0
        for _ in range(5):
            x = rand((1, 32))
            result = client.infer_detailed("mlp", x)
            expected = direct_litert(model_files.mlp, x)
            assert np.array_equal(result.outputs["probs"], expected["probs"])
            assert result.timings["compute_ms"] > 0 and result.timings["queue_ms"] >= 0
            assert result.timings["switch"] is False
        # The dict form, by input name, gives the same answer.
        x = rand((1, 32))
        assert np.array_equal(client.infer("mlp", {"input": x})["probs"], direct_litert(model_files.mlp, x)["probs"])


def test_multi_input_multi_output_model(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="carol") as client:
        client.submit_model(model_files.two_input, "pair")
        a, b = rand((1, 8)), rand((1, 8))
        out = client.infer("pair", {"b": b, "a": a})  # order of the dict does not matter
        expected = direct_litert(model_files.two_input, {"a": a, "b": b})
        assert set(out) == {"sum", "scaled"}
        for name in out:
            assert np.array_equal(out[name], expected[name])
        np.testing.assert_allclose(out["sum"], a + b, rtol=1e-6)


def test_real_trained_int8_model(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    """A real keyword-spotting model (int8 in, uint8 out) from the pymicro-wakeword wheel.
    It is a streaming model with internal state, so the reference replays the same sequence."""
    frames = [rand((1, 3, 40), "int8") for _ in range(4)]
    with TenantClient(endpoint, tenant="dave") as client:
        client.submit_model(model_files.wakeword, "okay_nabu")
        got = [client.infer("okay_nabu", f) for f in frames]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_files.wakeword), num_threads=1)
    interpreter.allocate_tensors()
    for frame, out in zip(frames, got, strict=True):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], frame)
        interpreter.invoke()
        expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        (value,) = out.values()
        assert value.dtype == np.uint8 and np.array_equal(value, expected)


def test_two_tenants_served_concurrently(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    async def tenant(name: str, model: str, path: str, in_features: int) -> list[tuple[np.ndarray, np.ndarray]]:
        async with AsyncTenantClient(endpoint, tenant=name) as client:
            await client.submit_model(path, model)
            inputs = [rand((1, in_features)) for _ in range(40)]
            # Many requests in flight on one client at once.
            outs = await asyncio.gather(*(client.infer(model, x) for x in inputs))
            return [(x, o["probs"]) for x, o in zip(inputs, outs, strict=True)]

    async def both() -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
        return await asyncio.gather(
            tenant("alice", "mlp_a", str(model_files.mlp), 32), tenant("bob", "mlp_b", str(model_files.mlp_b), 16)
        )

    alice, bob = asyncio.run(both())
    for path, pairs in ((model_files.mlp, alice), (model_files.mlp_b, bob)):
        for x, y in pairs:
            assert np.array_equal(y, direct_litert(path, x)["probs"])
    status = daemon.core.scheduler  # both tenants' work went through the one device queue
    assert status.queued == 0 and status.running == 0
    with TenantClient(endpoint) as operator:
        names = {(m.name, m.owner) for m in operator.list_models()}
        assert names == {("mlp_a", "alice"), ("mlp_b", "bob")}
        assert operator.status()["requests"]["infer"] == 80


def test_list_and_remove_are_per_tenant(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint, tenant="bob") as bob:
        alice.submit_model(model_files.mlp, "a1")
        bob.submit_model(model_files.mlp_b, "b1")
        assert [m.name for m in alice.list_models()] == ["a1"]
        assert [m.name for m in bob.list_models()] == ["b1"]
        bob.remove_model("b1")
        assert bob.list_models() == []
        with pytest.raises(E.UnknownModel):
            bob.infer("b1", rand((1, 16)))
        # The same file may be submitted twice under two names: one stored blob, two models.
        alice.submit_model(model_files.mlp, "a2")
        assert {m.name for m in alice.list_models()} == {"a1", "a2"}
        alice.remove_model("a1")
        assert alice.infer("a2", rand((1, 32)))["probs"].shape == (1, 10)


def test_replace_requires_flag(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="alice") as client:
        client.submit_model(model_files.mlp, "m")
        with pytest.raises(E.AlreadyExists):
            client.submit_model(model_files.mlp_b, "m")
        info = client.submit_model(model_files.mlp_b, "m", replace=True)
        assert info.inputs[0].shape == (1, 16)
        x = rand((1, 16))
        assert np.array_equal(client.infer("m", x)["probs"], direct_litert(model_files.mlp_b, x)["probs"])


# ------------------------------------------------------------------ bad input: typed errors, nothing lost


@pytest.fixture
def seeded(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> Daemon:
    """A daemon where alice and bob each already have a model acknowledged."""
    with TenantClient(endpoint, tenant="alice") as a, TenantClient(endpoint, tenant="bob") as b:
        a.submit_model(model_files.mlp, "alice_mlp")
        b.submit_model(model_files.mlp_b, "bob_mlp")
    return daemon


def assert_still_serving(endpoint: str, model_files: ModelFiles) -> None:
    """Every other tenant is still served and nothing acknowledged was lost."""
    with TenantClient(endpoint, tenant="bob") as bob:
        x = rand((1, 16))
        assert np.array_equal(bob.infer("bob_mlp", x)["probs"], direct_litert(model_files.mlp_b, x)["probs"])
    with TenantClient(endpoint) as operator:
        assert {(m.name, m.owner) for m in operator.list_models()} >= {("alice_mlp", "alice"), ("bob_mlp", "bob")}


def raw_roundtrip(endpoint: str, frames: list[bytes], timeout_ms: int = 10_000) -> protocol.Reply:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        return protocol.decode_reply(sock.recv_multipart())
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("frames", "code", "fragment"),
    [
        ([b"\xc1 not msgpack"], "BAD_REQUEST", "not valid msgpack"),
        ([b"\x93\x01\x02\x03"], "BAD_REQUEST", "must be a msgpack map"),
        ([protocol._pack({"v": 1, "op": "ping"})], "BAD_REQUEST", "'id'"),
        ([protocol._pack({"v": 99, "id": "r1", "op": "ping"})], "UNSUPPORTED_VERSION", "version 99"),
        ([protocol._pack({"v": 1, "id": "r2", "op": "launch_missiles"})], "UNKNOWN_OP", "launch_missiles"),
        (
            [
                protocol._pack(
                    {
                        "v": 1,
                        "id": "r3",
                        "op": "infer",
                        "tenant": "alice",
                        "args": {"model": "alice_mlp"},
                        "tensors": [{"name": "input", "dtype": "float32", "shape": [1, 32], "frame": 0}],
                    }
                ),
                b"\x00" * 100,
            ],
            "BAD_REQUEST",
            "needs 128 bytes",
        ),
        (
            [
                protocol._pack(
                    {
                        "v": 1,
                        "id": "r4",
                        "op": "infer",
                        "tenant": "alice",
                        "args": {"model": "alice_mlp"},
                        "tensors": [{"name": "input", "dtype": "object", "shape": [1], "frame": 0}],
                    }
                ),
                b"x",
            ],
            "BAD_REQUEST",
            "dtype",
        ),
    ],
    ids=["garbage", "not-a-map", "no-id", "bad-version", "unknown-op", "truncated-tensor", "bad-dtype"],
)
def test_malformed_messages_get_typed_errors(
    seeded: Daemon, endpoint: str, model_files: ModelFiles, frames: list[bytes], code: str, fragment: str
) -> None:
    reply = raw_roundtrip(endpoint, frames)
    assert not reply.ok and reply.error_code == code and fragment in reply.error_message
    if code == "UNSUPPORTED_VERSION":
        assert reply.id == "r1" and reply.error_details["supported"] == [1]
    assert_still_serving(endpoint, model_files)


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**64 - 1], [0, 2**40, 2**40]], ids=str)
def test_empty_tensors_with_absurd_dimensions_are_answered(
    seeded: Daemon, endpoint: str, model_files: ModelFiles, shape: list[int]
) -> None:
    """Reliability issue item 5: these got no reply at all (a ValueError escaped decoding)."""
    header = {
        "v": 1,
        "id": "r5",
        "op": "infer",
        "tenant": "alice",
        "args": {"model": "alice_mlp"},
        "tensors": [{"name": "input", "dtype": "float32", "shape": shape, "frame": 0}],
    }
    reply = raw_roundtrip(endpoint, [protocol._pack(header), b""], timeout_ms=5000)
    assert not reply.ok and reply.id == "r5" and reply.error_code == "BAD_REQUEST"
    assert "cannot be read" in reply.error_message
    assert_still_serving(endpoint, model_files)


def test_req_socket_clients_are_answered(seeded: Daemon, endpoint: str) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    try:
        sock.send_multipart(protocol.encode_request("ping", 7))
        reply = protocol.decode_reply(sock.recv_multipart())
    finally:
        sock.close()
    assert reply.ok and reply.id == 7 and reply.result["pong"] is True


def test_another_tenants_model_is_forbidden(seeded: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="mallory") as mallory:
        with pytest.raises(E.Forbidden):
            mallory.infer("alice_mlp", rand((1, 32)))
        with pytest.raises(E.Forbidden):
            mallory.remove_model("alice_mlp")
        with pytest.raises(E.Forbidden):
            mallory.submit_model(model_files.mlp, "alice_mlp", replace=True)
        assert mallory.list_models() == []
    with TenantClient(endpoint) as anonymous, pytest.raises(E.Forbidden, match="needs a tenant"):
        anonymous.infer("alice_mlp", rand((1, 32)))
    assert_still_serving(endpoint, model_files)


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        (np.zeros((1, 32), np.float64), "dtype float32"),
        (np.zeros((1, 31), np.float32), "shape [1, 32]"),
        (np.zeros((32,), np.float32), "shape [1, 32]"),
        ({"input": np.zeros((1, 32), np.float32), "extra": np.zeros(1, np.float32)}, "takes 1 input"),
        ({"wrong_name": np.zeros((1, 32), np.float32)}, "unknown ['wrong_name']"),
    ],
    ids=["dtype", "shape", "rank", "count", "name"],
)
def test_input_mismatch(seeded: Daemon, endpoint: str, model_files: ModelFiles, inputs: object, fragment: str) -> None:
    with TenantClient(endpoint, tenant="alice") as alice:
        with pytest.raises(E.InputMismatch) as info:
            alice.infer("alice_mlp", inputs)  # type: ignore[arg-type]
        assert fragment in info.value.message
        assert info.value.details["inputs"][0]["name"] == "input"
    assert_still_serving(endpoint, model_files)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda files: b"this is not a model at all" * 10, "not an ONNX model, a TFLite model or an OpenVINO IR"),
        (lambda files: files.mlp.read_bytes()[:600], ""),
        (lambda files: b"", "empty"),
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_invalid_model_files_are_refused(
    seeded: Daemon, endpoint: str, model_files: ModelFiles, make: object, fragment: str
) -> None:
    data = make(model_files)  # type: ignore[operator]
    with TenantClient(endpoint, tenant="alice") as alice:
        with pytest.raises(E.InvalidModel) as info:
            alice.submit_model(data, "broken")
        assert fragment in info.value.message
        assert "broken" not in {m.name for m in alice.list_models()}
    # Nothing of the refused file stays in the store.
    blobs = {p.name for p in seeded.store.blob_dir.glob("*/*")}
    assert blobs == {r.sha256 for r in seeded.store.list_models()}
    assert_still_serving(endpoint, model_files)


def test_unsupported_op_model_is_refused(seeded: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    from models import tiny

    with TenantClient(endpoint, tenant="alice") as alice, pytest.raises(E.InvalidModel, match="TenantdNoSuchOp"):
        alice.submit_model(tiny.unsupported_op_model(), "custom")
    assert_still_serving(endpoint, model_files)


def test_unknown_runtime_is_named(seeded: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="alice") as alice, pytest.raises(E.RuntimeNotAvailable, match="unknown runtime"):
        alice.submit_model(model_files.mlp, "m", runtime="tensorrt-9000")


def test_bad_names_are_refused(seeded: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="alice") as alice, pytest.raises(E.BadRequest, match="model name"):
        alice.submit_model(model_files.mlp, "../../etc/passwd")
    with TenantClient(endpoint, tenant="no spaces allowed") as odd, pytest.raises(E.BadRequest, match="tenant name"):
        odd.infer("alice_mlp", rand((1, 32)))


def test_long_event_lists_reach_the_client(seeded: Daemon, endpoint: str) -> None:
    """Replies are not bound by the 64 KiB request-header cap."""
    for i in range(1000):
        seeded.events.emit(Event.MODEL_REMOVED, model=f"m{i}", tenant="alice")  # ~100 KiB of events
    with TenantClient(endpoint, tenant="alice") as alice:
        events = alice.events(limit=2000)
    assert len(events) > 1000 and sum(e["event"] == "model.removed" for e in events) == 1000


def test_error_replies_are_all_counted_and_only_sampled_into_the_log(seeded: Daemon, endpoint: str) -> None:
    """Reliability issue item 8: 500 error replies wrote 500 event lines (17.8 MB over a fuzz run)."""
    with TenantClient(endpoint, tenant="alice") as alice:
        for _ in range(500):
            with pytest.raises(E.InputMismatch):
                alice.infer("alice_mlp", np.zeros((1, 3), np.float32))
        errors = alice.status()["errors"]
        logged = [e for e in alice.events(limit=2000, event="request.error") if e["code"] == "INPUT_MISMATCH"]
        metrics = alice.metrics()
    assert errors["INPUT_MISMATCH"] == 500
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("tenantd_errors_total", (("code", "INPUT_MISMATCH"),))] == 500
    by_tenant = (("code", "INPUT_MISMATCH"), ("model", "alice_mlp"), ("tenant", "alice"))
    assert samples[("tenantd_inference_requests_total", by_tenant)] == 500
    assert 1 <= len(logged) <= 20  # a sample: the first of each window, then a count of the rest
    assert logged[0]["tenant"] == "alice" and "needs shape" in logged[0]["message"]

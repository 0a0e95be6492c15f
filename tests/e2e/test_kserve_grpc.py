"""End to end: the KServe v2 gRPC front door of a daemon started through its CLI, driven by
tritonclient.grpc (which speaks inference.GRPCInferenceService) and, for what that client never
sends, by tritonclient's own generated stubs on a plain grpc channel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tenantclient import TenantClient
from tests.conftest import ModelFiles, direct_litert
from tests.support.faulty_runtime import faulty_model
from tests.support.kserve import KServeDaemon, kserve_daemon, tenant

pytestmark = pytest.mark.e2e

CAP = 256 * 1024
POLICY = f"max_message_bytes = {CAP}\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles) -> Iterator[KServeDaemon]:
    with kserve_daemon(tmp_path_factory.mktemp("kserve-grpc"), POLICY) as daemon:
        client = tg.InferenceServerClient(daemon.grpc)
        client.load_model("mlp", headers=tenant("alice"), files={"file:1/model.tflite": model_files.mlp.read_bytes()})
        client.load_model(
            "two_input", headers=tenant("alice"), files={"file:t.tflite": model_files.two_input.read_bytes()}
        )
        client.close()
        yield daemon


@pytest.fixture
def client(served: KServeDaemon) -> Iterator[tg.InferenceServerClient]:
    client = tg.InferenceServerClient(served.grpc)
    yield client
    client.close()


@pytest.fixture
def stub(served: KServeDaemon) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served.grpc, options=[("grpc.max_send_message_length", -1)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def code_of(call: object) -> str | None:
    assert callable(call)
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status()


def test_readiness_and_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp", headers=tenant("alice"))
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "tenantd" and "model_repository" in server["extensions"]
    meta = client.get_model_metadata("mlp", headers=tenant("alice"), as_json=True)
    assert meta["platform"] == "tensorflow_lite" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["1", "32"]}]  # int64 as JSON text
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": ["1", "10"]}]
    index = client.get_model_repository_index(headers=tenant("alice"), as_json=True)
    assert sorted(m["name"] for m in index["models"]) == ["mlp", "two_input"]


def test_infer_equals_direct_litert(client: tg.InferenceServerClient, model_files: ModelFiles) -> None:
    x = np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)
    inp = tg.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], headers=tenant("alice"), request_id="g1")
    np.testing.assert_array_equal(result.as_numpy("probs"), direct_litert(model_files.mlp, x)["probs"])
    assert result.get_response().id == "g1"
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((1, 8)).astype(np.float32) for _ in range(2))
    inputs = [tg.InferInput("a", [1, 8], "FP32"), tg.InferInput("b", [1, 8], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("two_input", inputs, outputs=[tg.InferRequestedOutput("scaled")], headers=tenant("alice"))
    np.testing.assert_array_equal(
        result.as_numpy("scaled"), direct_litert(model_files.two_input, {"a": a, "b": b})["scaled"]
    )
    assert result.as_numpy("sum") is None  # only what was asked for


def test_typed_contents_as_well_as_raw(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, model_files: ModelFiles
) -> None:
    x = np.linspace(-2, 2, 32, dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 32])
    tensor.contents.fp32_contents.extend(x.tolist())
    reply = stub.ModelInfer(request, metadata=(("tenantd-tenant", "alice"),))
    probs = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(1, 10)
    np.testing.assert_array_equal(probs, direct_litert(model_files.mlp, x.reshape(1, 32))["probs"])


def test_load_and_unload_over_grpc(client: tg.InferenceServerClient, model_files: ModelFiles) -> None:
    client.load_model("b", headers=tenant("bob"), files={"file:b.tflite": model_files.mlp_b.read_bytes()})
    assert client.is_model_ready("b", headers=tenant("bob"))
    assert code_of(lambda: client.unload_model("b", headers=tenant("alice"))) == "StatusCode.PERMISSION_DENIED"
    client.unload_model("b", headers=tenant("bob"))
    assert code_of(lambda: client.get_model_metadata("b", headers=tenant("bob"))) == "StatusCode.NOT_FOUND"


def test_isolation_and_error_codes(client: tg.InferenceServerClient) -> None:
    inp = tg.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 32), np.float32))
    assert code_of(lambda: client.infer("mlp", [inp], headers=tenant("bob"))) == "StatusCode.PERMISSION_DENIED"
    assert code_of(lambda: client.is_model_ready("mlp", headers=tenant("bob"))) == "StatusCode.PERMISSION_DENIED"
    assert code_of(lambda: client.infer("nope", [inp], headers=tenant("bob"))) == "StatusCode.NOT_FOUND"
    assert code_of(lambda: client.infer("mlp", [inp], "7", headers=tenant("alice"))) == "StatusCode.NOT_FOUND"
    assert code_of(lambda: client.infer("mlp", [inp])) == "StatusCode.PERMISSION_DENIED"  # the operator: no tenant
    junk = {"file:m.tflite": b"not a model"}
    assert (
        code_of(lambda: client.load_model("junk", headers=tenant("alice"), files=junk)) == "StatusCode.INVALID_ARGUMENT"
    )
    assert code_of(lambda: client.load_model("mlp", headers=tenant("alice"), files=junk)) == "StatusCode.ALREADY_EXISTS"
    config = json.dumps({"runtime": "faulty"})
    client.load_model("flaky", headers=tenant("alice"), config=config, files={"file:f": faulty_model(infer="error")})
    bad = tg.InferInput("x", [1, 4], "FP32")
    bad.set_data_from_numpy(-np.ones((1, 4), np.float32))
    assert code_of(lambda: client.infer("flaky", [bad], headers=tenant("alice"))) == "StatusCode.INTERNAL"


def test_bad_input(stub: service_pb2_grpc.GRPCInferenceServiceStub, client: tg.InferenceServerClient) -> None:
    alice = (("tenantd-tenant", "alice"),)

    def refused(request: service_pb2.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, metadata=alice)
        return info.value.code(), info.value.details()

    data = np.zeros(32, np.float32).tobytes()
    for datatype, shape, raw, reason in (
        ("FP64", [1, 32], np.zeros(32).tobytes(), "dtype"),  # the wrong datatype
        ("FP32", [2, 16], data, "shape"),  # the wrong shape
        ("FP32", [1, 32], data[:-4], "bytes do not hold"),  # raw sizes that disagree with the shape
        ("BYTES", [1, 32], data, "datatype"),
    ):
        request = service_pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[raw])
        request.inputs.add(name="input", datatype=datatype, shape=shape)
        code, details = refused(request)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and reason in details, (datatype, details)
    request = service_pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[data, data])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 32])
    assert refused(request)[0] is grpc.StatusCode.INVALID_ARGUMENT  # two raw contents for one input
    # Over the policy's message cap: refused by gRPC itself, and the daemon serves on.
    request = service_pb2.ModelInferRequest(model_name="mlp", raw_input_contents=[b"\0" * (CAP + 1)])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 32])
    assert refused(request)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.is_server_ready()


def test_triton_timeout_parameter_is_the_deadline(served: KServeDaemon, client: tg.InferenceServerClient) -> None:
    """A request that cannot start within its ``timeout`` (microseconds) is dropped unrun."""
    config = json.dumps({"runtime": "faulty"})
    slow = faulty_model(infer="slow", sleep_ms=3000)  # ample time to queue the timed request behind it
    client.load_model("slow", headers=tenant("dave"), config=config, files={"file:f": slow})
    inp = tg.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    # A model runs one request at a time: while one runs, the next waits past its 1 ms.
    with ThreadPoolExecutor(1) as pool, TenantClient(served.process.endpoint) as zmq_client:
        blocker = pool.submit(client.infer, "slow", [inp], headers=tenant("dave"))
        deadline = time.monotonic() + 60
        while zmq_client.status()["running"] < 1:  # a condition wait
            assert time.monotonic() < deadline, "the slow request never ran"
            time.sleep(0.01)  # ok: polling the condition above, bounded by its deadline
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow", [inp], headers=tenant("dave"), timeout=1000)
        assert blocker.result().as_numpy("y") is not None
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"

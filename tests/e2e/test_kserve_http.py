"""End to end: the KServe v2 HTTP/REST front door of a daemon started through its CLI, driven by
clients nobody here wrote (tritonclient.http, httpx) and by a raw socket for what clients never
send: conformance, outputs equal to direct LiteRT, each error code's status, isolation, bad input."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tenantclient import TenantClient
from tests.conftest import ModelFiles, direct_litert
from tests.support.faulty_runtime import faulty_model
from tests.support.kserve import KServeDaemon, kserve_daemon, tenant

pytestmark = pytest.mark.e2e

CAP = 256 * 1024  # the policy's max_message_bytes
POLICY = f"max_message_bytes = {CAP}\nqueue_depth_per_tenant = 2\nslots = 2\n"
# Headers are built afresh for each call: tritonclient writes Inference-Header-Content-Length into
# the dict it is given.


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles) -> Iterator[KServeDaemon]:
    """One daemon for the module (starting one costs seconds): alice owns mlp and two_input."""
    with kserve_daemon(tmp_path_factory.mktemp("kserve-http"), POLICY, grpc=False) as daemon:
        client = th.InferenceServerClient(daemon.http)
        client.load_model("mlp", headers=tenant("alice"), files={"file:1/model.tflite": model_files.mlp.read_bytes()})
        client.load_model(
            "two_input", headers=tenant("alice"), files={"file:two_input.tflite": model_files.two_input.read_bytes()}
        )
        yield daemon


@pytest.fixture
def client(served: KServeDaemon) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(served.http)
    yield client
    client.close()


def status_of(call: object) -> str | None:
    assert callable(call)
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status()


# ---------------------------------------------------------------------------------- conformance


def test_tritonclient_readiness_and_metadata(client: th.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp", headers=tenant("alice"))
    assert client.is_model_ready("mlp", "1", headers=tenant("alice"))
    server = client.get_server_metadata()
    assert server["name"] == "tenantd" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("mlp", headers=tenant("alice"))
    assert meta == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "tensorflow_lite",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [1, 10]}],
    }
    index = client.get_model_repository_index(headers=tenant("alice"))
    assert sorted(m["name"] for m in index) == ["mlp", "two_input"]
    assert client.get_model_repository_index(headers=tenant("bob")) == []


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_equals_direct_litert(
    client: th.InferenceServerClient, model_files: ModelFiles, binary: bool
) -> None:
    x = np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)
    inp = th.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = th.InferRequestedOutput("probs", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], headers=tenant("alice"), request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("probs"), direct_litert(model_files.mlp, x)["probs"])
    assert result.get_response()["id"] == "r1"
    assert ("parameters" in result.get_output("probs")) is binary  # binary_data_size only in binary


def test_tritonclient_two_inputs_all_outputs_in_binary(
    client: th.InferenceServerClient, model_files: ModelFiles
) -> None:
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((1, 8)).astype(np.float32) for _ in range(2))
    inputs = [th.InferInput("a", [1, 8], "FP32"), th.InferInput("b", [1, 8], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)  # one binary, one JSON in the same request
    result = client.infer("two_input", inputs, headers=tenant("alice"))  # no outputs named: all, in binary
    expected = direct_litert(model_files.two_input, {"a": a, "b": b})
    for name in ("sum", "scaled"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client: th.InferenceServerClient, model_files: ModelFiles, algorithm: str) -> None:
    """tritonclient's request compression: the body cap applies to what it inflates to."""
    x = np.random.default_rng(5).standard_normal((1, 32)).astype(np.float32)
    inp = th.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        "mlp",
        [inp],
        headers=tenant("alice"),
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("probs"), direct_litert(model_files.mlp, x)["probs"])


def test_a_plain_json_request_as_the_spec_shows_it(served: KServeDaemon, model_files: ModelFiles) -> None:
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
    body = {
        "id": "42",
        "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "probs"}],
    }
    reply = httpx.post(f"{served.url}/v2/models/mlp/infer", json=body, headers=tenant("alice"))
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/json")
    answer = reply.json()
    assert answer["model_name"] == "mlp" and answer["id"] == "42"
    (out,) = answer["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probs", "FP32", [1, 10])
    expected = direct_litert(model_files.mlp, x)["probs"].reshape(-1)
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32), expected)
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{served.url}/v2/health/live").status_code == 200


def test_upload_as_a_raw_body_and_unload(served: KServeDaemon, model_files: ModelFiles) -> None:
    url = f"{served.url}/v2/repository/models/raw_mlp"
    reply = httpx.post(
        f"{url}/load",
        content=model_files.mlp_b.read_bytes(),
        params={"filename": "m.tflite"},
        headers={**tenant("bob"), "content-type": "application/octet-stream"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"]["name"] == "raw_mlp"
    assert httpx.get(f"{served.url}/v2/models/raw_mlp/ready", headers=tenant("bob")).status_code == 200
    assert httpx.post(f"{url}/unload", headers=tenant("alice")).status_code == 403  # not alice's
    assert httpx.post(f"{url}/unload", headers=tenant("bob")).status_code == 200
    assert httpx.get(f"{served.url}/v2/models/raw_mlp", headers=tenant("bob")).status_code == 404


# ---------------------------------------------------------------------------------- isolation


def test_another_tenants_model_is_refused_as_on_zeromq(client: th.InferenceServerClient, served: KServeDaemon) -> None:
    inp = th.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 32), np.float32))
    assert status_of(lambda: client.infer("mlp", [inp], headers=tenant("bob"))) == "403"
    assert status_of(lambda: client.get_model_metadata("mlp", headers=tenant("bob"))) == "403"
    assert status_of(lambda: client.infer("nope", [inp], headers=tenant("bob"))) == "404"
    assert status_of(lambda: client.get_model_metadata("mlp", "7", headers=tenant("alice"))) == "404"
    assert status_of(lambda: client.infer("mlp", [inp], "7", headers=tenant("alice"))) == "404"
    assert client.infer("mlp", [inp], "1", headers=tenant("alice")).as_numpy("probs").shape == (1, 10)
    # No tenant named under --auth header: the operator, who may read any model but infers for none.
    assert client.get_model_metadata("mlp")["name"] == "mlp"
    reply = httpx.post(f"{served.url}/v2/models/mlp/infer", json={"inputs": []})
    assert reply.status_code == 400
    reply = httpx.post(
        f"{served.url}/v2/models/mlp/infer",
        json={"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}]},
    )
    assert reply.status_code == 403 and "needs a tenant" in reply.json()["error"]
    assert httpx.get(f"{served.url}/v2", headers={"tenantd-tenant": "bad name!"}).status_code == 400


# ---------------------------------------------------------------------------------- each error code


def test_error_statuses_over_the_wire(client: th.InferenceServerClient, served: KServeDaemon) -> None:
    url = served.url
    tflite = {"files": {"file:m.tflite": b"not a model at all"}}
    assert status_of(lambda: client.load_model("junk", headers=tenant("alice"), **tflite)) == "422"  # INVALID_MODEL
    assert status_of(lambda: client.load_model("mlp", headers=tenant("alice"), **tflite)) == "409"  # ALREADY_EXISTS
    no_runtime = json.dumps({"runtime": "no_such_runtime"})
    assert status_of(lambda: client.load_model("x", headers=tenant("alice"), config=no_runtime, **tflite)) == "501"
    # INPUT_MISMATCH: the wrong datatype, the wrong shape.
    for datatype, shape in (("FP64", [1, 32]), ("FP32", [2, 16])):
        inp = th.InferInput("input", shape, datatype)
        inp.set_data_from_numpy(np.zeros(shape, np.float64 if datatype == "FP64" else np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("mlp", [inp], headers=tenant("alice"))
        assert info.value.status() == "400" and ("dtype" in str(info.value) or "shape" in str(info.value))
    # RUNTIME_ERROR: the faulty runtime fails on negative inputs.
    client.load_model(
        "flaky", headers=tenant("alice"), config='{"runtime": "faulty"}', files={"file:f": faulty_model(infer="error")}
    )
    inp = th.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(-np.ones((1, 4), np.float32))
    assert status_of(lambda: client.infer("flaky", [inp], headers=tenant("alice"))) == "500"
    # QUEUE_FULL: 429 with Retry-After, once carol's two slots and queue of two are taken.
    slow = faulty_model(infer="slow", sleep_ms=1500)
    client.load_model("slow", headers=tenant("carol"), config='{"runtime": "faulty"}', files={"file:f": slow})
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            calls = [http.post(f"{url}/v2/models/slow/infer", json=body, headers=tenant("carol")) for _ in range(8)]
            return await asyncio.gather(*calls)

    replies = asyncio.run(flood())
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(200) >= 2 and 429 in statuses, statuses
    full = next(r for r in replies if r.status_code == 429)
    assert full.headers["retry-after"] == "1" and "queue is full" in full.json()["error"]


def test_triton_timeout_parameter_is_the_deadline(served: KServeDaemon, client: th.InferenceServerClient) -> None:
    """A request that cannot start within its ``timeout`` (microseconds) is dropped unrun: 504."""
    slow = faulty_model(infer="slow", sleep_ms=3000)  # ample time to queue the timed request behind it
    client.load_model("slow_d", headers=tenant("dave"), config='{"runtime": "faulty"}', files={"file:f": slow})
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}
    url = f"{served.url}/v2/models/slow_d/infer"
    # A model runs one request at a time: while one runs, the next waits past its 1 ms.
    with ThreadPoolExecutor(1) as pool, TenantClient(served.process.endpoint) as zmq_client:
        blocker = pool.submit(httpx.post, url, json=body, headers=tenant("dave"), timeout=60)
        deadline = time.monotonic() + 60
        while zmq_client.status()["running"] < 1:  # a condition wait
            assert time.monotonic() < deadline, "the slow request never ran"
            time.sleep(0.01)  # ok: polling the condition above, bounded by its deadline
        timed = httpx.post(url, json={**body, "parameters": {"timeout": 1000}}, headers=tenant("dave"), timeout=60)
        assert blocker.result().status_code == 200
    assert timed.status_code == 504 and "deadline" in timed.json()["error"], timed.text


def test_every_refusal_body_is_an_error_object(served: KServeDaemon) -> None:
    with TenantClient(served.process.endpoint) as zmq_client:
        before = zmq_client.status()["errors"].get("UNKNOWN_MODEL", 0)
        reply = httpx.get(f"{served.url}/v2/models/nope", headers=tenant("alice"))
        assert reply.status_code == 404 and set(reply.json()) == {"error"}
        assert zmq_client.status()["errors"]["UNKNOWN_MODEL"] == before + 1  # counted as ZeroMQ's are
    reply = httpx.get(f"{served.url}/v2/nowhere")  # no such route: aiohttp's refusal, in KServe's body
    assert reply.status_code == 404 and set(reply.json()) == {"error"}
    reply = httpx.get(f"{served.url}/v2/models/mlp/infer", headers=tenant("alice"))
    assert reply.status_code == 405 and "POST" in reply.headers["allow"] and set(reply.json()) == {"error"}
    # Refusals go to the event log as on ZeroMQ (a sample per code), saying which door.
    lines = (served.process.state_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert any(
        e["event"] == "request.error"
        and e["frontdoor"] == "http"
        and e["code"] == "UNKNOWN_MODEL"
        and e["op"] == "model_metadata"
        and e["tenant"] == "alice"
        for e in events
    ), events[-5:]


# ---------------------------------------------------------------------------------- bad input


def _post_raw(served: KServeDaemon, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{served.url}/v2/models/mlp/infer", content=body, headers={**tenant("alice"), **headers})


def test_malformed_requests_are_400_with_a_reason(served: KServeDaemon) -> None:
    cases = {
        b"{not json": "not valid JSON",
        b"[1, 2]": "JSON object",
        b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": "x"}]}': "data",
        b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [1, 2]}]}': "do not fill",
        b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "BYTES", "data": []}]}': "datatype",
        b'{"inputs": [{"name": "input", "shape": [-1], "datatype": "FP32", "data": []}]}': "shape",
        b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32"}]}': "neither data",
    }
    for body, reason in cases.items():
        reply = _post_raw(served, body, {"content-type": "application/json"})
        assert reply.status_code == 400 and reason in reply.json()["error"], (body, reply.text)


def test_binary_sizes_that_disagree_with_the_header(served: KServeDaemon) -> None:
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "parameters": {"binary_data_size": 128}}]}
    ).encode()
    data = np.zeros(32, np.float32).tobytes()
    good = _post_raw(served, header + data, {"Inference-Header-Content-Length": str(len(header))})
    assert good.status_code == 200, good.text
    for body, length in (
        (header + data[:-4], len(header)),  # the tensor cut short
        (header + data + b"extra", len(header)),  # bytes nobody claims
        (header + data, len(header) + 1000),  # a header length past the body
        (header + data, len(header) - 3),  # a header length inside the JSON
    ):
        reply = _post_raw(served, body, {"Inference-Header-Content-Length": str(length)})
        assert reply.status_code == 400, reply.text


def test_an_oversized_body_is_refused_from_its_length_before_it_is_read(served: KServeDaemon) -> None:
    host, port = served.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\ntenantd-tenant: alice\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"
        )
        head = sock.recv(65536).decode(errors="replace")  # answered with 99.99 MB still unsent
    assert head.startswith("HTTP/1.1 413"), head
    # Sent chunked (no length to refuse it by): refused once it passes the cap.
    chunks = (b"x" * 65536 for _ in range(CAP // 65536 + 2))
    reply = httpx.post(f"{served.url}/v2/models/mlp/infer", content=chunks, headers=tenant("alice"))
    assert reply.status_code == 413 and str(CAP) in reply.json()["error"]
    # A small gzip body that inflates past the cap (a zip bomb): refused as it inflates.
    bomb = gzip.compress(b" " * (CAP * 4))
    assert len(bomb) < CAP // 10
    headers = {**tenant("alice"), "content-encoding": "gzip", "content-type": "application/json"}
    reply = httpx.post(f"{served.url}/v2/models/mlp/infer", content=bomb, headers=headers)
    assert reply.status_code == 413, reply.text


def test_a_slow_client_does_not_hold_up_another(served: KServeDaemon) -> None:
    host, port = served.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\ntenantd-tenant: alice\r\n"
            b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n" + b'{"inputs": [' + b" " * 1000
        )
        body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
        reply = httpx.post(f"{served.url}/v2/models/mlp/infer", json=body, headers=tenant("alice"), timeout=30)
        assert reply.status_code == 200
        slow.sendall(b" " * 2986 + b"]}")  # the rest, late: it is still answered
        head = slow.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 400"), head  # an empty input list

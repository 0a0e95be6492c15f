"""The KServe doors of a real Daemon in this process (real sockets) in states an end-to-end test
cannot reach quickly: draining (not ready, new inference refused as UNAVAILABLE, 503 with
Retry-After or gRPC UNAVAILABLE, while the model stays visible), and a body that stops arriving."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from tenantd.config import Policy
from tenantd.frontdoors import http as http_door
from tests.conftest import ModelFiles
from tests.support.daemon import daemon_in_thread
from tests.support.kserve import tenant

MLP_INFER = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}


def test_draining_is_not_ready_and_refuses_new_work(tmp_path: Path, endpoint: str, model_files: ModelFiles) -> None:
    policy = Policy(http_listen="127.0.0.1:0", grpc_listen="127.0.0.1:0")
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        assert daemon.http is not None and daemon.grpc is not None
        url = f"http://127.0.0.1:{daemon.http.port}"
        load = httpx.post(
            f"{url}/v2/repository/models/mlp/load",
            content=model_files.mlp.read_bytes(),
            params={"filename": "mlp.tflite"},
            headers={**tenant("alice"), "content-type": "application/octet-stream"},
            timeout=120,
        )
        assert load.status_code == 200, load.text
        assert httpx.post(f"{url}/v2/models/mlp/infer", json=MLP_INFER, headers=tenant("alice")).status_code == 200

        assert daemon.loop is not None
        flagged = threading.Event()

        def drain() -> None:
            daemon.lifecycle.draining = True
            flagged.set()

        daemon.loop.call_soon_threadsafe(drain)
        assert flagged.wait(30)
        try:
            assert httpx.get(f"{url}/v2/health/ready").status_code == 503
            assert httpx.get(f"{url}/v2/health/live").status_code == 200
            assert httpx.get(f"{url}/v2/models/mlp/ready", headers=tenant("alice")).status_code == 503
            reply = httpx.post(f"{url}/v2/models/mlp/infer", json=MLP_INFER, headers=tenant("alice"))
            assert reply.status_code == 503 and reply.headers["retry-after"] == "5", reply.text
            assert httpx.get(f"{url}/v2/models/mlp", headers=tenant("alice")).status_code == 200
            client = tg.InferenceServerClient(f"127.0.0.1:{daemon.grpc.port}")
            assert not client.is_server_ready()
            inp = tg.InferInput("input", [1, 32], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 32), np.float32))
            with pytest.raises(InferenceServerException) as info:
                client.infer("mlp", [inp], headers=tenant("alice"))
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            client.close()
        finally:
            daemon.loop.call_soon_threadsafe(setattr, daemon.lifecycle, "draining", False)


def test_a_body_that_stops_arriving_is_refused_and_its_connection_closed(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_door, "BODY_IDLE_TIMEOUT_S", 0.5)  # the daemon runs in this process
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(http_listen="127.0.0.1:0")) as daemon:
        assert daemon.http is not None
        with socket.create_connection(("127.0.0.1", daemon.http.port), timeout=30) as stalled:
            stalled.sendall(
                b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\ntenantd-tenant: alice\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"inputs": ['
            )
            answer = b""
            while chunk := stalled.recv(65536):  # until the daemon closes the connection
                answer += chunk
        head, _, body = answer.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 408"), head
        assert "no byte of the body came for 0.5 s" in json.loads(body)["error"]

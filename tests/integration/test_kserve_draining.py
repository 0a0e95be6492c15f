"""A draining daemon on its KServe doors (a real Daemon in this process, real sockets): not ready,
and new inference refused as UNAVAILABLE (503 with Retry-After; gRPC UNAVAILABLE), while the
model stays visible."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from tenantd.config import Policy
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

"""Integration: a pipeline's name inferred through the KServe HTTP door goes to the pipelines (two
real daemons: an edge with the door, a cloud behind a CurveZMQ key), with ZeroMQ's ownership rules."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import zmq

from models import tiny
from tenantclient import TenantClient
from tenantd import auth
from tenantd.config import Policy
from tenantd.pipelinespec import Uplink
from tenantd.runtimes.litert import LiteRTRuntime
from tests.support.daemon import daemon_in_thread
from tests.support.kserve import tenant

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

HEAD = tiny.mlp(16, [32], 24, softmax=False, output_name="features", seed=1)
TAIL = tiny.mlp(24, [16], 5, input_name="features", seed=2)


def direct(model: bytes, x: np.ndarray) -> np.ndarray:
    loaded = LiteRTRuntime().load(model)
    try:
        return np.array(loaded.infer([x])[0])
    finally:
        loaded.unload()


def test_a_split_pipeline_through_the_http_door(tmp_path: Path) -> None:
    cloud_state = tmp_path / "cloud"
    edge_key = auth.add_tenant(cloud_state, "edge-box")
    with daemon_in_thread(cloud_state, "tcp://127.0.0.1:*", auth="keys") as cloud:
        server_key = cloud_state / "keys" / "server.key"
        with TenantClient(cloud.endpoint, key_file=edge_key, server_key=server_key) as as_edge:
            as_edge.submit_model(TAIL, "tail")
        uplinks = {"cloud": Uplink(endpoint=cloud.endpoint, key_file=str(edge_key), server_key=str(server_key))}
        edge_endpoint = f"ipc://{tmp_path}/edge.sock"
        policy = Policy(uplinks=uplinks, http_listen="127.0.0.1:0")
        with daemon_in_thread(tmp_path / "edge", edge_endpoint, policy) as edge:
            with TenantClient(edge_endpoint, tenant="app") as app:
                app.submit_model(HEAD, "head")
                app.set_pipeline(
                    "split", {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "tail"}
                )
            assert edge.http is not None
            url = f"http://127.0.0.1:{edge.http.port}/v2/models/split"
            x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
            body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": x.tolist()}]}
            reply = httpx.post(f"{url}/infer", json=body, headers=tenant("app"), timeout=60)
            assert reply.status_code == 200, reply.text
            (out,) = reply.json()["outputs"]
            expected = direct(TAIL, direct(HEAD, x))
            assert out["shape"] == list(expected.shape)
            np.testing.assert_array_equal(np.asarray(out["data"], np.float32), expected.reshape(-1))
            assert httpx.get(f"{url}/ready", headers=tenant("app")).status_code == 200
            assert httpx.post(f"{url}/infer", json=body, headers=tenant("eve")).status_code == 403
            assert httpx.get(f"{url}/ready", headers=tenant("eve")).status_code == 403

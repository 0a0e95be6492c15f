"""Integration: pipelines across two real daemons (edge on ipc://, cloud on tcp:// behind the
link-emulating relay, authenticated with a CurveZMQ key), real LiteRT models on both sides.

The split's answer must equal the head and tail run one after the other in-process; the cascade
must answer from the tier its threshold picks; a cloud that is down or slow must give an error or
the flagged edge answer, as the tenant chose, within the pipeline's timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from experiments.relay import Link, RelayThread, endpoint_address
from models import tiny
from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd import auth
from tenantd.config import Policy
from tenantd.pipelinespec import Uplink
from tenantd.runtimes.litert import LiteRTRuntime
from tenantwire import curve
from tests.support.daemon import daemon_in_thread

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

HEAD = tiny.mlp(16, [32], 24, softmax=False, output_name="features", seed=1)
TAIL = tiny.mlp(24, [16], 5, input_name="features", seed=2)
COMPACT = tiny.mlp(16, [8], 5, seed=3)
FULL = tiny.mlp(16, [64], 5, seed=4)
LATENCY_MS = 10.0


def direct(model: bytes, x: np.ndarray) -> np.ndarray:
    """The model run in-process, as the reference."""
    loaded = LiteRTRuntime().load(model)
    try:
        return np.array(loaded.infer([x])[0])
    finally:
        loaded.unload()


@dataclass
class Tiers:
    edge: TenantClient
    cloud_endpoint: str
    relay: RelayThread


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[Tiers]:
    cloud_state = tmp_path / "cloud"
    edge_key = auth.add_tenant(cloud_state, "edge-box")  # the cloud's operator issues the edge a key
    with daemon_in_thread(cloud_state, "tcp://127.0.0.1:*", auth="keys") as cloud:
        server_key = cloud_state / "keys" / "server.key"
        with TenantClient(cloud.endpoint, key_file=edge_key, server_key=server_key) as as_edge:
            as_edge.submit_model(TAIL, "tail")
            as_edge.submit_model(FULL, "full")
        with RelayThread(endpoint_address(cloud.endpoint), Link(latency_ms=LATENCY_MS)) as relay:
            uplinks = {
                "cloud": Uplink(endpoint=relay.endpoint, key_file=str(edge_key), server_key=str(server_key)),
                # Nothing listens there: a cloud that is down.
                "down": Uplink(endpoint="tcp://127.0.0.1:9", tenant="edge-box", timeout_ms=300),
            }
            edge_endpoint = f"ipc://{tmp_path}/edge.sock"
            with (
                daemon_in_thread(tmp_path / "edge", edge_endpoint, Policy(uplinks=uplinks)),
                TenantClient(edge_endpoint, tenant="app") as edge,
            ):
                edge.submit_model(HEAD, "head")
                edge.submit_model(COMPACT, "compact")
                yield Tiers(edge, cloud.endpoint, relay)


def test_split_equals_head_then_tail(tiers: Tiers) -> None:
    tiers.edge.set_pipeline("split", {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "tail"})
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    result = tiers.edge.infer_detailed("split", x)
    np.testing.assert_array_equal(result.outputs["probs"], direct(TAIL, direct(HEAD, x)))
    t = result.timings
    assert t["tier"] == "cloud" and t["kind"] == "split" and t["encoding"] == "none"
    # The intermediate tensor (24 float32) crossed the link, and the link's delay was paid both ways.
    assert t["bytes_up"] > 24 * 4 and t["bytes_down"] > 5 * 4
    assert t["network_ms"] >= 2 * LATENCY_MS
    assert t["total_ms"] >= t["edge_ms"] + t["cloud_round_trip_ms"] - 1e-6
    assert tiers.relay.relay.stats.up.bytes > 0


@pytest.mark.parametrize(("encoding", "tolerance"), [("zlib", 0.0), ("float16", 2e-3), ("int8+lz4", 3e-2)])
def test_split_with_encodings(tiers: Tiers, encoding: str, tolerance: float) -> None:
    tiers.edge.set_pipeline(
        "split",
        {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "tail", "encoding": encoding},
    )
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    result = tiers.edge.infer_detailed("split", x)
    np.testing.assert_allclose(result.outputs["probs"], direct(TAIL, direct(HEAD, x)), atol=tolerance, rtol=0)
    assert result.timings["encoding"] == encoding


def test_cascade_answers_from_the_tier_its_threshold_picks(tiers: Tiers) -> None:
    x = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)
    confident = float(direct(COMPACT, x).max())
    base = {"kind": "cascade", "edge_model": "compact", "uplink": "cloud", "cloud_model": "full"}

    tiers.edge.set_pipeline("cascade", {**base, "threshold": confident / 2})  # edge is sure enough
    result = tiers.edge.infer_detailed("cascade", x)
    assert result.timings["tier"] == "edge" and result.timings["bytes_up"] == 0
    assert result.timings["confidence"] == pytest.approx(confident, rel=1e-5)
    np.testing.assert_array_equal(result.outputs["probs"], direct(COMPACT, x))

    tiers.edge.set_pipeline("cascade", {**base, "threshold": min(1.0, confident * 1.5)}, replace=True)
    result = tiers.edge.infer_detailed("cascade", x)
    assert result.timings["tier"] == "cloud"
    assert result.timings["bytes_up"] >= x.nbytes  # the input itself goes up
    np.testing.assert_array_equal(result.outputs["probs"], direct(FULL, x))


def test_forward_classes_go_to_the_cloud_however_confident(tiers: Tiers) -> None:
    x = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)
    top = int(direct(COMPACT, x).argmax())
    base = {"kind": "cascade", "edge_model": "compact", "uplink": "cloud", "cloud_model": "full", "threshold": 0.0}
    tiers.edge.set_pipeline("other", {**base, "forward_classes": [top]})
    result = tiers.edge.infer_detailed("other", x)
    assert result.timings["tier"] == "cloud"
    np.testing.assert_array_equal(result.outputs["probs"], direct(FULL, x))
    tiers.edge.set_pipeline("other", {**base, "forward_classes": [(top + 1) % 5]}, replace=True)
    assert tiers.edge.infer_detailed("other", x).timings["tier"] == "edge"


def test_a_cloud_that_is_down_is_an_error_or_the_flagged_edge_answer(tiers: Tiers) -> None:
    x = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    tiers.edge.set_pipeline("split-down", {"kind": "split", "edge_model": "head", "uplink": "down", "cloud_model": "t"})
    start = time.monotonic()
    with pytest.raises(E.UpstreamError, match="uplink 'down'") as info:
        tiers.edge.infer("split-down", x)
    assert time.monotonic() - start < 5  # the pipeline's timeout, never a hang
    assert info.value.details["uplink"] == "down"

    spec = {"kind": "cascade", "edge_model": "compact", "uplink": "down", "cloud_model": "full", "threshold": 1.0}
    tiers.edge.set_pipeline("cascade-down", {**spec, "on_cloud_failure": "edge"})
    result = tiers.edge.infer_detailed("cascade-down", x)
    assert result.timings["tier"] == "edge" and result.timings["cloud_failed"]
    np.testing.assert_array_equal(result.outputs["probs"], direct(COMPACT, x))
    # The edge daemon keeps serving its other work.
    assert tiers.edge.infer("compact", x)["probs"].shape == (1, 5)


def test_a_slow_cloud_times_out(tiers: Tiers) -> None:
    spec = {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "tail", "timeout_ms": 5.0}
    tiers.edge.set_pipeline("too-slow", spec)  # the link alone takes 2 x 10 ms
    with pytest.raises(E.UpstreamError, match="failed"):
        tiers.edge.infer("too-slow", np.zeros((1, 16), np.float32))


def test_pipeline_specs_are_checked(tiers: Tiers) -> None:
    edge = tiers.edge
    good = {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "tail"}
    with pytest.raises(E.BadRequest, match="no uplink named 'elsewhere'"):
        edge.set_pipeline("p", {**good, "uplink": "elsewhere"})
    with pytest.raises(E.UnknownModel, match="nope"):
        edge.set_pipeline("p", {**good, "edge_model": "nope"})
    with pytest.raises(E.BadRequest, match="needs a threshold"):
        edge.set_pipeline("p", {**good, "kind": "cascade"})
    with pytest.raises(E.BadRequest, match="cannot read encoding"):
        edge.set_pipeline("p", {**good, "encoding": "gzip"})
    with pytest.raises(E.BadRequest, match="endpoint"):
        edge.set_pipeline("p", {**good, "endpoint": "tcp://evil:1"})  # tenants never pick endpoints
    with pytest.raises(E.AlreadyExists, match="a model named 'head'"):
        edge.set_pipeline("head", good)
    edge.set_pipeline("p", good)
    with pytest.raises(E.AlreadyExists, match="replace"):
        edge.set_pipeline("p", good)
    with pytest.raises(E.AlreadyExists, match="pipeline"):
        edge.submit_model(HEAD, "p")
    assert [p["name"] for p in edge.list_pipelines()] == ["p"]
    edge.remove_pipeline("p")
    assert edge.list_pipelines() == []


def test_other_tenants_cannot_use_or_see_a_pipeline(tiers: Tiers, tmp_path: Path) -> None:
    tiers.edge.set_pipeline("mine", {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "tail"})
    with TenantClient(tiers.edge.endpoint, tenant="intruder") as other:
        with pytest.raises(E.Forbidden):
            other.infer("mine", np.zeros((1, 16), np.float32))
        assert other.list_pipelines() == []
        with pytest.raises(E.Forbidden):
            other.remove_pipeline("mine")
        with pytest.raises(E.Forbidden):  # and cannot build one on another tenant's model
            other.set_pipeline("theirs", {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "t"})


def test_pipelines_survive_a_restart(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/edge.sock"
    policy = Policy(uplinks={"cloud": Uplink(endpoint="tcp://127.0.0.1:9", tenant="x")})
    spec = {"kind": "cascade", "edge_model": "compact", "uplink": "cloud", "cloud_model": "f", "threshold": 0.5}
    with daemon_in_thread(tmp_path / "edge", endpoint, policy), TenantClient(endpoint, tenant="app") as edge:
        edge.submit_model(COMPACT, "compact")
        edge.set_pipeline("c", spec)
    with daemon_in_thread(tmp_path / "edge", endpoint, policy), TenantClient(endpoint, tenant="app") as edge:
        (restored,) = edge.list_pipelines()
        assert restored["name"] == "c" and restored["owner"] == "app" and restored["threshold"] == 0.5


def test_tenantctl_sets_lists_and_removes_pipelines(tiers: Tiers, capsys: pytest.CaptureFixture[str]) -> None:
    from tenantclient.cli import main

    ep = ["--endpoint", tiers.edge.endpoint]
    common = ["--tenant", "app", "--edge-model", "compact", "--uplink", "cloud", "--cloud-model", "full"]
    assert main([*ep, "pipeline", "set", "c", *common, "--kind", "cascade", "--threshold", "0.7"]) == 0
    assert main([*ep, "pipeline", "set", "c", *common, "--kind", "cascade"]) == 1  # no threshold: BAD_REQUEST
    assert "needs a threshold" in capsys.readouterr().err
    assert main([*ep, "--json", "pipelines", "--tenant", "app"]) == 0
    assert '"threshold": 0.7' in capsys.readouterr().out
    x = np.random.default_rng(5).standard_normal((1, 16)).astype(np.float32)
    assert tiers.edge.infer_detailed("c", x).timings["pipeline"] == "c"
    assert main([*ep, "pipeline", "remove", "c", "--tenant", "app"]) == 0
    assert tiers.edge.list_pipelines() == []


def test_a_key_registered_late_works_without_restarting_the_edge(tmp_path: Path) -> None:
    """A refused key is final for a client: the edge daemon drops it and tries a new one next time.
    The uplink gives the server key as z85 text, the other form the policy accepts."""
    cloud_state = tmp_path / "cloud"
    issued = auth.add_tenant(tmp_path / "elsewhere", "edge-box")  # not (yet) known to the cloud
    with daemon_in_thread(cloud_state, "tcp://127.0.0.1:*", auth="keys") as cloud:
        server_key = curve.load_public_key(cloud_state / "keys" / "server.key").decode()
        uplinks = {
            "cloud": Uplink(endpoint=cloud.endpoint, key_file=str(issued), server_key=server_key, timeout_ms=2000)
        }
        edge_endpoint = f"ipc://{tmp_path}/edge.sock"
        with (
            daemon_in_thread(tmp_path / "edge", edge_endpoint, Policy(uplinks=uplinks)),
            TenantClient(edge_endpoint, tenant="app") as edge,
        ):
            edge.submit_model(HEAD, "head")
            edge.set_pipeline("p", {"kind": "split", "edge_model": "head", "uplink": "cloud", "cloud_model": "tail"})
            x = np.zeros((1, 16), np.float32)
            with pytest.raises(E.UpstreamError, match="refused"):
                edge.infer("p", x)
            # The cloud's operator registers the edge's public key and reloads.
            keys = cloud_state / "keys" / "tenants"
            keys.mkdir(parents=True, exist_ok=True)
            (keys / "edge-box.key").write_bytes(
                (tmp_path / "elsewhere" / "keys" / "tenants" / "edge-box.key").read_bytes()
            )
            cloud.frontdoor.reload_keys()
            with TenantClient(cloud.endpoint, key_file=issued, server_key=server_key.encode()) as as_edge:
                as_edge.submit_model(TAIL, "tail")
            np.testing.assert_array_equal(edge.infer("p", x)["probs"], direct(TAIL, direct(HEAD, x)))


def test_uplinks_can_be_limited_to_some_tenants(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/edge.sock"
    policy = Policy(uplinks={"cloud": Uplink(endpoint="tcp://127.0.0.1:9", tenant="x", tenants=["app"])})
    spec = {"kind": "split", "edge_model": "m", "uplink": "cloud", "cloud_model": "t"}
    with daemon_in_thread(tmp_path / "edge", endpoint, policy):
        with TenantClient(endpoint, tenant="other") as other:
            other.submit_model(HEAD, "m")
            with pytest.raises(E.Forbidden, match="has not given tenant 'other' uplink 'cloud'"):
                other.set_pipeline("p", spec)
        with TenantClient(endpoint, tenant="app") as app:
            app.submit_model(HEAD, "m2")
            app.set_pipeline("p2", {**spec, "edge_model": "m2"})


def test_a_malformed_model_name_still_gets_an_answer(tiers: Tiers) -> None:
    with pytest.raises(E.BadRequest, match=r"args\.model"):  # not a hang: the pipeline lookup took a list
        tiers.edge.call("infer", {"model": ["not", "a", "name"]}, tensors=[(None, np.zeros((1, 16), np.float32))])

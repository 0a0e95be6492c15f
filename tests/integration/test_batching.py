"""Integration: dynamic batching on real runtimes, real model files and a real daemon.

What is checked: a batched run's replies equal each request's unbatched run, bit for bit on LiteRT
(XNNPACK's kernels for these models compute each row alone) and within ``TOLERANCE`` on ONNX
Runtime and OpenVINO (exact here too, but other engines' kernels may reorder a sum by batch size);
which models can batch (``max_batch``); a model whose outputs lose the batch dimension falls back
to unbatched runs; and through the daemon, queued requests of one tenant's model run as batches
of the policy's ``max_batch``, a model that cannot batch never is, a request of several rows runs
alone, and status, metrics and the replies' timings show the batch sizes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import tiny, tiny_onnx
from tenantclient import AsyncTenantClient, TenantClient
from tenantd.config import ModelPolicy, Policy, TenantPolicy
from tenantd.daemon import Daemon
from tenantd.executor import Executor
from tenantd.runtimes import get_runtime_class
from tests.conftest import direct_litert
from tests.support.daemon import daemon_in_thread

CNN = {"image": 32, "channels": (8, 16, 32), "classes": 10, "seed": 7}
TOLERANCE = 1e-6  # ONNX Runtime / OpenVINO against their own unbatched run
FOREVER_MS = 60_000.0  # the longest queue delay a policy takes; no test waits it out: batches go full


def dynamic_batch(model: bytes) -> bytes:
    """The same ONNX graph with a symbolic first dimension on its inputs and outputs."""
    graph = onnx.load_from_string(model)
    for value in (*graph.graph.input, *graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return bytes(graph.SerializeToString())


def batch_lost_inside() -> bytes:
    """An ONNX model whose specs say batch in, batch out, but whose output is not one row per
    request: [N, 4] -> the sorted distinct values of all N rows (ONNX ``Unique``)."""
    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"], sorted=1)],
        "distinct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["distinct"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batching")
    made = {
        "cnn.tflite": tiny.cnn(**CNN),  # type: ignore[arg-type]
        "mlp.tflite": tiny.mlp(64, [32], 10, seed=1),
        "cnn.onnx": tiny_onnx.cnn(**CNN),  # type: ignore[arg-type]
        "cnn-dynamic.onnx": dynamic_batch(tiny_onnx.cnn(**CNN)),  # type: ignore[arg-type]
        "distinct.onnx": batch_lost_inside(),
    }
    for name, data in made.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in made}


def image(seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, 32, 32, 3), dtype=np.uint8)


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 64), dtype=np.float32)


# --------------------------------------------------------------------------- the executor


@pytest.mark.parametrize(("name", "make"), [("cnn.tflite", image), ("mlp.tflite", vector)])
def test_a_litert_batch_splits_into_exactly_each_requests_unbatched_outputs(
    files: dict[str, Path], name: str, make: Callable[[int], np.ndarray]
) -> None:
    executor = Executor("cpu", slots=1, threads_per_model=1)
    resident, _ = asyncio.run(executor.load(name, "litert", files[name]))
    executor.install(resident)
    assert resident.max_batch > 1
    inputs = [[make(seed)] for seed in range(7)]
    for size in (7, 3, 1, 5):  # the interpreter resizes up and down between batches
        results = executor.run_batch(resident, inputs[:size], slot=0)
        assert [r.batch for r in results] == [size] * size
        for seed, result in enumerate(results):
            (expected,) = direct_litert(files[name], inputs[seed][0]).values()
            assert result.outputs[0].shape == expected.shape
            assert np.array_equal(result.outputs[0], expected), (name, size, seed)
    executor.close()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_an_onnx_batch_with_a_dynamic_first_dimension_splits_within_tolerance(
    files: dict[str, Path], runtime: str
) -> None:
    pytest.importorskip(runtime)
    executor = Executor("cpu", slots=1, threads_per_model=1)
    resident, _ = asyncio.run(executor.load("cnn", runtime, files["cnn-dynamic.onnx"]))
    executor.install(resident)
    assert resident.max_batch > 1
    inputs = [[image(seed)] for seed in range(5)]
    results = executor.run_batch(resident, inputs, slot=0)
    for seed, result in enumerate(results):
        (alone,) = executor.run(resident, inputs[seed], slot=0).outputs
        assert result.outputs[0].shape == alone.shape == (1, 10)
        np.testing.assert_allclose(result.outputs[0], alone, rtol=0, atol=TOLERANCE)
    executor.close()


@pytest.mark.parametrize(("runtime", "name"), [("onnxruntime", "cnn.onnx"), ("openvino", "cnn.onnx")])
def test_a_static_first_dimension_cannot_batch(files: dict[str, Path], runtime: str, name: str) -> None:
    pytest.importorskip(runtime)
    model = get_runtime_class(runtime)(device="cpu", num_threads=1).load(files[name])
    assert model.max_batch == 1
    model.unload()


def test_a_model_whose_outputs_lose_the_batch_runs_unbatched_from_then_on(files: dict[str, Path]) -> None:
    pytest.importorskip("onnxruntime")
    executor = Executor("cpu", slots=1, threads_per_model=1)
    resident, _ = asyncio.run(executor.load("distinct", "onnxruntime", files["distinct.onnx"]))
    executor.install(resident)
    assert resident.max_batch > 1  # its specs claim a batch dimension
    rows = [np.array([[i, i + 10, i + 20, i + 20]], dtype=np.float32) for i in range(3)]
    results = executor.run_batch(resident, [[row] for row in rows], slot=0)
    assert resident.unbatchable and resident.max_batch == 1
    for row, result in zip(rows, results, strict=True):
        assert result.batch == 1
        assert np.array_equal(result.outputs[0], np.unique(row))  # its own row's, not the batch's
    executor.close()


# --------------------------------------------------------------------------- through the daemon


@pytest.fixture
def batching_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    """One slot, one instance; every model may batch 4 and wait (practically) forever to fill."""
    endpoint = f"ipc://{tmp_path}/tenantd.sock"
    policy = Policy(
        slots=1,
        threads_per_model=1,
        instances=1,
        max_batch=2,
        max_queue_delay_ms=FOREVER_MS,
        tenants={"alice": TenantPolicy(max_batch=3, models={"cnn": ModelPolicy(max_batch=4)})},
    )
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        yield daemon, endpoint


def test_the_daemon_runs_queued_requests_as_batches_and_splits_the_replies_exactly(
    batching_daemon: tuple[Daemon, str], files: dict[str, Path]
) -> None:
    _, endpoint = batching_daemon
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.submit_model(files["cnn.tflite"], "cnn")
        (info,) = alice.list_models()
    assert info.name == "cnn" and info.max_batch == 64  # LiteRT resizes its first dimension
    seeds = range(8)

    async def eight_at_once() -> list[object]:
        async with AsyncTenantClient(endpoint, tenant="alice") as client:
            return list(await asyncio.gather(*(client.infer_detailed("cnn", image(seed)) for seed in seeds)))

    # The model table's max_batch 4 wins over alice's 3 and the device's 2; with a delay that
    # never passes, eight requests can only have run as two full batches of four.
    replies = asyncio.run(eight_at_once())
    for seed, reply in zip(seeds, replies, strict=True):
        assert reply.timings["batch"] == 4  # type: ignore[attr-defined]
        expected = direct_litert(files["cnn.tflite"], image(seed))["probs"]
        assert np.array_equal(reply.outputs["probs"], expected), seed  # type: ignore[attr-defined]
    with TenantClient(endpoint) as operator:
        status = operator.status()
        metrics = operator.metrics()
    assert status["batches"] == {"4": 2}
    assert 'tenantd_inference_batch_size_bucket{le="4.0",model="cnn",tenant="alice"} 8.0' in metrics
    assert 'tenantd_inference_batch_size_bucket{le="2.0",model="cnn",tenant="alice"} 0.0' in metrics


def test_a_model_that_cannot_batch_never_waits_or_batches_and_a_multi_row_request_runs_alone(
    batching_daemon: tuple[Daemon, str], files: dict[str, Path]
) -> None:
    pytest.importorskip("onnxruntime")
    daemon, endpoint = batching_daemon
    with TenantClient(endpoint, tenant="bob") as bob:
        bob.submit_model(files["cnn.onnx"], "static", runtime="onnxruntime")
        bob.submit_model(files["cnn-dynamic.onnx"], "dynamic", runtime="onnxruntime")

    async def calls() -> tuple[list[object], list[object], object]:
        async with AsyncTenantClient(endpoint, tenant="bob") as client:
            # Static batch dimension: max_batch 1, so none of these waits for the (endless) delay.
            static = await asyncio.gather(*(client.infer_detailed("static", image(s)) for s in range(3)))
            # Three rows in one request: it cannot share a call, so it runs at once, alone...
            rows = await client.infer_detailed("dynamic", image(10, rows=3))
            # ...while bob's single-row requests (device max_batch 2) run in pairs.
            pairs = await asyncio.gather(*(client.infer_detailed("dynamic", image(s)) for s in range(4)))
            return list(static), list(pairs), rows

    static, pairs, rows = asyncio.run(calls())
    assert all("batch" not in r.timings for r in static)  # type: ignore[attr-defined]
    assert "batch" not in rows.timings  # type: ignore[attr-defined]
    assert rows.outputs["probs"].shape == (3, 10)  # type: ignore[attr-defined]
    assert [r.timings["batch"] for r in pairs] == [2, 2, 2, 2]  # type: ignore[attr-defined]
    model = daemon.executor.resident["dynamic"].model
    assert model is not None
    for s, reply in enumerate(pairs):
        (alone,) = model.infer([image(s)])
        np.testing.assert_allclose(reply.outputs["probs"], alone, rtol=0, atol=TOLERANCE)  # type: ignore[attr-defined]
    for row in range(3):
        (alone,) = model.infer([image(10, rows=3)[row : row + 1]])
        np.testing.assert_allclose(rows.outputs["probs"][row : row + 1], alone, rtol=0, atol=TOLERANCE)  # type: ignore[attr-defined]
    with TenantClient(endpoint, tenant="bob") as bob:
        assert {m.name: m.max_batch for m in bob.list_models()} == {"static": 1, "dynamic": 64}

"""ONNX Runtime CUDA conformance against a stand-in GPU build (tests/stubs/ort_cuda.py, whose
messages are quoted there with their source): no ``disable_cpu_ep_fallback`` (it refuses ordinary
exported models), the provider the session actually got is checked instead, and GPU memory is
charged from a meter or as a labelled estimate. The real GPU: tests/hardware (``-m cuda``)."""

from __future__ import annotations

import numpy as np
import pytest

from models import tiny_onnx
from tenantd.errors import RuntimeFailure
from tenantd.runtimes import ort as ort_runtime
from tests.stubs import ort_cuda

CNN = {"image": 32, "channels": (8, 16, 32), "classes": 10, "seed": 7}


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_runtime, "ort", ort_cuda)
    monkeypatch.setattr(ort_runtime, "gpu_meter", lambda index: None)  # no NVML, no cuda-python here


def test_a_session_that_fell_back_to_the_cpu_is_refused_clearly(
    gpu_build: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort_cuda, "mode", "fallback")
    with pytest.raises(RuntimeFailure, match=r"could not use the GPU for 'cuda:0'.*\['CPUExecutionProvider'\]"):
        ort_runtime.ONNXRuntime(device="cuda:0").load(tiny_onnx.cnn(**CNN))  # type: ignore[arg-type]


def shape_model() -> bytes:
    """What exporters write for a flatten: the target shape computed from the input's (Shape ->
    Concat -> Reshape); ONNX Runtime runs the Shape node on the CPU even under CUDA."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"], end=1),
        helper.make_node("Concat", ["s", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()  # type: ignore[no-any-return]


def test_an_ordinary_model_loads_on_cuda_and_runs(gpu_build: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exported model keeps shape nodes on the CPU; with disable_cpu_ep_fallback the stand-in
    (as ONNX Runtime) refuses it: the runtime must not set it."""
    monkeypatch.setattr(ort_cuda, "mode", "cuda")
    flat = ort_runtime.ONNXRuntime(device="cuda:0").load(shape_model())
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    np.testing.assert_array_equal(flat.infer([x])[0], x.reshape(1, 6))
    data = tiny_onnx.cnn(**CNN)  # type: ignore[arg-type]
    model = ort_runtime.ONNXRuntime(device="cuda:0").load(data)
    image = np.random.default_rng(0).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    cpu = ort_runtime.ONNXRuntime(device="cpu").load(data)
    np.testing.assert_allclose(model.infer([image])[0], cpu.infer([image])[0], atol=1e-5)
    assert model.device_bytes == len(data)  # no meter here: the estimate, labelled
    assert model.facts["gpu_bytes_source"].startswith("estimate")


def test_the_stand_in_refuses_cpu_fallback_disabled_as_onnxruntime_does(gpu_build: None) -> None:
    options = ort_cuda.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(Exception, match="fallback to CPU EP has been explicitly disabled"):
        ort_cuda.InferenceSession(
            shape_model(),
            sess_options=options,
            providers=[("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"],
        )


def test_gpu_memory_is_the_meters_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_runtime, "ort", ort_cuda)
    monkeypatch.setattr(ort_cuda, "mode", "cuda")
    used = [100 * 2**20]
    monkeypatch.setattr(ort_runtime, "gpu_meter", lambda index: ("nvml", lambda: used[0]))
    model = ort_runtime.ONNXRuntime(device="cuda:0").load(tiny_onnx.cnn(**CNN))  # type: ignore[arg-type]
    used[0] += 37 * 2**20  # the arena grows on the first run
    assert model.device_bytes == 37 * 2**20 and model.facts["gpu_bytes_source"] == "nvml"

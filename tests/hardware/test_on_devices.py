"""Hardware: the device backends on real devices. Each test is marked with its device
(``-m edgetpu``, ``ncs2``, ``jetson``, ``cuda``) and runs only where that device is attached and its
runtime installed; elsewhere it is skipped with the reason. None of these could run on the machine
this code was written on (a 2-core CPU VM): see the README's runtime x device table for what was
verified where.

Each compares the device's outputs with LiteRT on the CPU for the same network and input, at a
tolerance for the device's arithmetic: the NCS2 and TensorRT's FP16 engines compute in half
precision (1e-2 absolute on softmax probabilities), ONNX Runtime's CUDA provider in float32 (1e-4).
The EdgeTPU runs int8 models only, so its check needs an EdgeTPU-compiled model given by the
operator (``TENANTD_EDGETPU_MODEL``, and its uncompiled twin ``TENANTD_EDGETPU_CPU_MODEL`` to
compare top-1 classes with).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models import tiny
from tenantd.devices.detect import Detected, detect
from tenantd.runtimes import get_runtime_class, runtime_installed
from tenantwire import irbundle
from tests.conftest import direct_litert

CNN = {"image": 32, "channels": (8, 16, 32), "classes": 10, "seed": 7}
FP16_TOLERANCE = 1e-2
FP32_TOLERANCE = 1e-4


def attached(kind: str, runtime: str, jetson: bool | None = None) -> Detected:
    """The first attached device of ``kind`` (a Jetson or not, for cuda), or skip saying why not."""
    found = [d for d in detect() if d.kind == kind]
    if jetson is not None:
        found = [d for d in found if d.profile.startswith("jetson") == jetson]
    if not found:
        pytest.skip(f"no {'Jetson' if jetson else kind} device attached to this host (tenantd devices)")
    if not runtime_installed(runtime):
        pytest.skip(f"{found[0].device} is attached but the {runtime} runtime is not installed")
    return found[0]


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hw")
    files = {"tflite": root / "cnn.tflite"}
    files["tflite"].write_bytes(tiny.cnn(**CNN))  # type: ignore[arg-type]
    try:
        from models import tiny_onnx
    except ImportError as exc:
        pytest.skip(f"the ONNX twin needs the onnx package: {exc}")
    files["onnx"] = root / "cnn.onnx"
    files["onnx"].write_bytes(tiny_onnx.cnn(**CNN))  # type: ignore[arg-type]
    return files


def compare(model: object, reference: Path, tolerance: float) -> float:
    worst = 0.0
    for seed in range(3):
        x = image(seed)
        (out,) = model.infer([x])  # type: ignore[attr-defined]
        worst = max(worst, float(np.abs(out - direct_litert(reference, x)["probs"]).max()))
    assert worst < tolerance
    return worst


@pytest.mark.edgetpu
def test_edgetpu_runs_a_compiled_model() -> None:
    device = attached("edgetpu", "edgetpu")
    compiled = os.environ.get("TENANTD_EDGETPU_MODEL")
    if not compiled:
        pytest.skip("set TENANTD_EDGETPU_MODEL to an EdgeTPU-compiled .tflite (edgetpu_compiler output)")
    model = get_runtime_class("edgetpu")(device=device.device).load(Path(compiled))
    assert model.facts["edgetpu_compiled"] is True
    spec = model.inputs[0]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=spec.shape, dtype=spec.dtype) if spec.dtype in ("uint8", "int8") else None
    assert x is not None, f"an EdgeTPU model takes integer input, this one {spec.dtype}"
    (out,) = model.infer([x])
    twin = os.environ.get("TENANTD_EDGETPU_CPU_MODEL")
    if twin:
        assert int(np.argmax(out)) == int(np.argmax(direct_litert(Path(twin), x)[model.outputs[0].name]))
    model.unload()


@pytest.mark.edgetpu
def test_edgetpu_switches_are_first_invokes_and_the_probe_leaves_the_device_alone() -> None:
    """Two models on one device, both kept loaded (Coral: the cache holds one model's parameters;
    the next model's first invoke streams its own in): a switch is counted on the first invoke
    after the other model ran, and the later invokes of the same model are no switch. While the
    device is held, the probe's static validation still works (it never opens the device)."""
    device = attached("edgetpu", "edgetpu")
    compiled = os.environ.get("TENANTD_EDGETPU_MODEL")
    if not compiled:
        pytest.skip("set TENANTD_EDGETPU_MODEL to an EdgeTPU-compiled .tflite (edgetpu_compiler output)")
    other = os.environ.get("TENANTD_EDGETPU_MODEL_B", compiled)
    cls = get_runtime_class("edgetpu")
    runtime = cls(device=device.device)
    a, b = runtime.load(Path(compiled)), runtime.load(Path(other))
    xa = np.zeros(a.inputs[0].shape, a.inputs[0].dtype)
    xb = np.zeros(b.inputs[0].shape, b.inputs[0].dtype)
    for model, x in ((a, xa), (a, xa), (b, xb), (b, xb), (a, xa)):
        model.infer([x])
    assert (a.facts["edgetpu_cache_switches"], b.facts["edgetpu_cache_switches"]) == (1, 1)
    print(f"EdgeTPU switch (first invoke after the other model): {a.facts['edgetpu_last_switch_ms']} ms")
    static = cls(device=cls.probe_device(device.device)).load(Path(compiled))
    assert static.facts["trial_load"] == "deferred" and static.inputs == a.inputs
    a.unload()
    b.unload()


@pytest.mark.ncs2
def test_ncs2_runs_ir_through_myriad(cnn_files: dict[str, Path], tmp_path: Path) -> None:
    device = attached("ncs2", "openvino")
    from models import tiny_onnx

    xml = tiny_onnx.save_ir(cnn_files["onnx"].read_bytes(), tmp_path / "cnn.xml")
    model = get_runtime_class("openvino")(device=device.device).load(irbundle.pack_files(xml))  # IR travels bundled
    compare(model, cnn_files["tflite"], FP16_TOLERANCE)
    # Charged what the stick holds (FP16 weights + activations), not host memory.
    assert model.device_bytes == model.facts["myriad_bytes"] > 0


@pytest.mark.ncs2
def test_ncs2_full_stick_refuses_with_the_count(cnn_files: dict[str, Path], tmp_path: Path) -> None:
    """Load the same network until MYRIAD runs out (openvinotoolkit/openvino#2418 saw it at the
    10th): the refusal is DeviceMemoryFull with the count, never DeviceLost."""
    from tenantd.errors import DeviceMemoryFull

    device = attached("ncs2", "openvino")
    from models import tiny_onnx

    bundle = irbundle.pack_files(tiny_onnx.save_ir(cnn_files["onnx"].read_bytes(), tmp_path / "cnn.xml"))
    runtime = get_runtime_class("openvino")(device=device.device)
    loaded = []
    try:
        for _ in range(64):
            loaded.append(runtime.load(bundle))
    except DeviceMemoryFull as exc:
        assert exc.networks_loaded == len(loaded) > 0
        print(f"NCS2 full after {len(loaded)} networks of this CNN: {exc}")
    else:
        pytest.skip("64 copies of the small CNN fit on this stick: no memory bound reached")
    finally:
        for model in loaded:
            model.unload()


@pytest.mark.jetson
def test_jetson_tensorrt_builds_from_onnx_and_charges_shared_memory(cnn_files: dict[str, Path]) -> None:
    device = attached("cuda", "tensorrt", jetson=True)
    assert device.profile in ("jetson-nano", "jetson-tx2", "jetson-xavier", "jetson-orin")
    cls = get_runtime_class("tensorrt")
    model = cls(device=device.device).load(cnn_files["onnx"])
    facts = model.facts
    assert model.device_bytes >= facts["tensorrt_engine_bytes"] + facts["tensorrt_activation_bytes"] > 0
    assert cls.process_overhead_bytes(device.device) == 800 * 2**20
    compare(model, cnn_files["tflite"], FP16_TOLERANCE)
    model.unload()


@pytest.mark.cuda
def test_cuda_tensorrt_engine(cnn_files: dict[str, Path]) -> None:
    device = attached("cuda", "tensorrt", jetson=False)
    model = get_runtime_class("tensorrt")(device=device.device).load(cnn_files["onnx"])
    compare(model, cnn_files["tflite"], FP16_TOLERANCE)
    model.unload()


@pytest.mark.cuda
def test_cuda_onnxruntime_provider(cnn_files: dict[str, Path]) -> None:
    device = attached("cuda", "onnxruntime")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDA provider (install onnxruntime-gpu)")
    model = get_runtime_class("onnxruntime")(device=device.device).load(cnn_files["onnx"])
    compare(model, cnn_files["tflite"], FP32_TOLERANCE)  # a session that fell back to the CPU is refused at load
    print(f"ONNX Runtime CUDA charged {model.device_bytes} bytes ({model.facts['gpu_bytes_source']})")
    assert model.device_bytes > 0
    model.unload()

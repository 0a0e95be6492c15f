"""Unit: the runtime registry's choice rules, its refusals, the IR bundle, and the logic of the
hardware runtimes that needs no hardware (EdgeTPU compiler-log parsing and delegate options,
OpenVINO device names). The hardware paths themselves are tested in tests/hardware."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tenantd import runtimes
from tenantd.runtimes import DeviceLost, RuntimeFailure, RuntimeNotAvailable, runtime_for_file
from tenantwire import irbundle


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Pretend exactly these runtimes are installed."""
    present: set[str] = set()
    monkeypatch.setattr(runtimes, "runtime_installed", lambda name: name in present)
    return present


@pytest.mark.parametrize(
    ("filename", "device", "present", "expected"),
    [
        ("m.tflite", "cpu", {"litert", "openvino"}, "litert"),
        ("m.tflite", "cpu", {"openvino"}, "openvino"),
        ("m.onnx", "cpu", {"litert", "openvino", "onnxruntime"}, "onnxruntime"),
        ("m.onnx", "cpu", {"litert", "openvino"}, "openvino"),
        ("M.ONNX", "cpu", {"onnxruntime"}, "onnxruntime"),
        ("m.ovir", "cpu", {"openvino"}, "openvino"),
        ("m.xml", "cpu", {"openvino"}, "openvino"),
        ("m_edgetpu.tflite", "edgetpu:usb:0", {"litert", "edgetpu"}, "edgetpu"),
        ("m.tflite", "ncs2:0", {"litert", "openvino"}, "openvino"),
        ("m.onnx", "ncs2:1", {"onnxruntime", "openvino"}, "openvino"),
        ("m.engine", "cuda:0", {"tensorrt"}, "tensorrt"),
        ("m.plan", "cuda:0", {"tensorrt"}, "tensorrt"),
        ("m.onnx", "cuda:0", {"tensorrt", "onnxruntime"}, "tensorrt"),
        ("m.onnx", "cuda:0", {"onnxruntime"}, "onnxruntime"),
        ("m.xml", "npu", {"openvino"}, "openvino"),
        (None, "cpu", {"litert"}, "litert"),
        ("model", "cpu", {"litert"}, "litert"),
    ],
)
def test_runtime_for_file_and_device(
    installed: set[str], filename: str | None, device: str, present: set[str], expected: str
) -> None:
    installed.update(present)
    assert runtime_for_file(filename, device) == expected


def test_nothing_installed_picks_the_best_so_the_error_names_its_package(installed: set[str]) -> None:
    assert runtime_for_file("m.tflite", "edgetpu:pci:0") == "edgetpu"
    assert runtime_for_file("m.onnx", "cuda:0") == "tensorrt"
    assert runtime_for_file("m.onnx", "cpu") == "onnxruntime"


def test_unknown_and_uninstalled_runtimes_are_refused_with_the_package_to_install() -> None:
    with pytest.raises(RuntimeNotAvailable, match=r"unknown runtime .nope.; known runtimes: .*litert"):
        runtimes.get_runtime_class("nope")
    runtimes.register("ghost", "tenantd_ghost_engine:Ghost", package="ghost-engine==1.0")
    assert not runtimes.runtime_installed("ghost")
    assert "ghost" not in runtimes.available_runtimes()
    with pytest.raises(
        RuntimeNotAvailable, match=r"not installed here \(missing tenantd_ghost_engine\); install ghost"
    ):
        runtimes.get_runtime_class("ghost")
    if not runtimes.runtime_installed("tensorrt"):
        with pytest.raises(RuntimeNotAvailable, match="install tensorrt and pycuda"):
            runtimes.get_runtime_class("tensorrt")
    if not runtimes.runtime_installed("edgetpu"):
        with pytest.raises(RuntimeNotAvailable, match=r"lib:edgetpu.*libedgetpu1-std"):
            runtimes.get_runtime_class("edgetpu")


def test_runtime_device_kinds() -> None:
    litert = runtimes.get_runtime_class("litert")
    runtimes.check_device(litert, "cpu")
    with pytest.raises(RuntimeNotAvailable, match="does not run on device 'ncs2:0'"):
        runtimes.check_device(litert, "ncs2:0")


def test_importing_the_daemon_needs_no_vendor_package() -> None:
    """With TensorRT, pycuda, OpenVINO and ONNX Runtime made unimportable, the daemon still imports
    and the registry answers 'not installed' instead of raising ImportError."""
    code = (
        "import sys\n"
        "for m in ('tensorrt', 'pycuda', 'openvino', 'onnxruntime'): sys.modules[m] = None\n"
        "import tenantd.daemon, tenantd.cli, tenantd.devices.detect\n"
        "from tenantd.runtimes import get_runtime_class, RuntimeNotAvailable\n"
        "try:\n    get_runtime_class('openvino')\nexcept RuntimeNotAvailable as e:\n    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "refused: runtime 'openvino' is not installed here" in out and "install openvino" in out


def test_device_lost_is_a_runtime_failure() -> None:
    # Code that only knows RuntimeFailure still fails the request; the daemon tells them apart.
    assert issubclass(DeviceLost, RuntimeFailure)


def test_ir_bundle_round_trip_and_refusals() -> None:
    data = irbundle.pack(b"<?xml version='1.0'?><net/>", b"\x00" * 64)
    assert irbundle.is_bundle(data) and not irbundle.is_bundle(b"TFL3....")
    assert irbundle.unpack(data) == (b"<?xml version='1.0'?><net/>", b"\x00" * 64)
    with pytest.raises(irbundle.BundleError):
        irbundle.unpack(b"PK\x03\x04 not really")


def test_openvino_device_names() -> None:
    ov = pytest.importorskip("tenantd.runtimes.openvino", reason="needs openvino")
    assert ov.ov_device("cpu", ["CPU"]) == "CPU"
    assert ov.ov_device("ncs2:1", ["CPU", "MYRIAD.1.2-ma2480", "MYRIAD.1.1-ma2480"]) == "MYRIAD.1.2-ma2480"
    assert ov.ov_device("gpu:1", []) == "GPU.1" and ov.ov_device("npu", []) == "NPU"
    with pytest.raises(
        DeviceLost, match=r"no NCS2 stick 0.*MYRIAD plugin is in OpenVINO <= 2022\.3 from Intel's archive"
    ):
        ov.ov_device("ncs2:0", ["CPU"])
    assert ov.OpenVINORuntime.probe_device("ncs2:0") == "cpu"  # one process per stick


def edgetpu() -> object:
    try:
        return importlib.import_module("tenantd.runtimes.edgetpu")
    except ImportError as exc:  # only where LiteRT itself is missing
        pytest.skip(f"needs ai-edge-litert: {exc}")


def test_edgetpu_delegate_options() -> None:
    """The compiler's figures and the EdgeTPU op check: tests/integration/test_vendor_edgetpu.py."""
    et = edgetpu()
    assert et.delegate_device("edgetpu:usb:0") == "usb:0"  # type: ignore[attr-defined]
    assert et.delegate_device("edgetpu:pci:1") == "pci:1"  # type: ignore[attr-defined]
    assert et.delegate_device("edgetpu") is None  # type: ignore[attr-defined]
    with pytest.raises(RuntimeFailure):
        et.delegate_device("edgetpu:serial:0")  # type: ignore[attr-defined]

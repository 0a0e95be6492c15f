"""NCS2 (MYRIAD) conformance: memory charged as the stick holds it, and a full stick refuses the
next model (ADMISSION_DENIED with the count of networks loaded), not a lost device for everyone.
The MYRIAD device is the stand-in in tests/stubs/myriad.py (OpenVINO 2022.3's Core surface and
its real error strings, quoted there with their source); the real stick: tests/hardware."""

from __future__ import annotations

import pytest

from models import tiny_onnx
from tenantd.errors import DeviceLost, DeviceMemoryFull
from tenantd.runtimes import openvino as ov
from tests.stubs.myriad import INIT_FAILED, OUT_OF_MEMORY, MyriadCore

CNN = {"image": 32, "channels": (8, 16, 32), "classes": 10, "seed": 7}


def runtime(monkeypatch: pytest.MonkeyPatch, core: MyriadCore) -> ov.OpenVINORuntime:
    monkeypatch.setattr(ov, "Core", lambda: core)
    return ov.OpenVINORuntime(device="ncs2:0")


@pytest.mark.parametrize("error", [OUT_OF_MEMORY, INIT_FAILED])
def test_a_full_stick_refuses_the_next_network_with_the_count(monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    rt = runtime(monkeypatch, MyriadCore(capacity=2, error=error))
    model = tiny_onnx.cnn(**CNN)  # type: ignore[arg-type]
    first, second = rt.load(model), rt.load(model)
    with pytest.raises(DeviceMemoryFull, match=r"holds 2 network\(s\)") as refused:
        rt.load(model)
    assert refused.value.networks_loaded == 2
    assert not isinstance(refused.value, DeviceLost)
    first.unload()  # room again once one is unloaded
    third = rt.load(model)
    assert rt.networks == 2
    second.unload()
    third.unload()


def test_a_stick_that_cannot_init_with_nothing_loaded_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(monkeypatch, MyriadCore(capacity=0, error=INIT_FAILED))
    with pytest.raises(DeviceLost):
        rt.load(tiny_onnx.cnn(**CNN))  # type: ignore[arg-type]


def test_the_charge_is_fp16_weights_and_activations_not_host_rss(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(monkeypatch, MyriadCore(capacity=4))
    model = rt.load(tiny_onnx.cnn(**CNN))  # type: ignore[arg-type]
    weights_fp32 = 0
    for op in rt._core.read_model(model=tiny_onnx.cnn(**CNN)).get_ops():  # type: ignore[arg-type]
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).to_dtype().kind == "f":
            weights_fp32 += int(op.get_output_tensor(0).size) * 4
    charged = model.device_bytes
    assert charged == model.facts["myriad_bytes"]
    # At least the weights at half their FP32 size; activations of a 32x32 CNN add well under 1 MB.
    assert weights_fp32 // 2 <= charged < weights_fp32 // 2 + 2**20
    model.unload()

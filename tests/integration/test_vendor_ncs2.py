"""NCS2 (MYRIAD) conformance: memory charged as the stick holds it, and a full stick refuses the
next model (ADMISSION_DENIED with the count of networks loaded), not a lost device for everyone.
The MYRIAD device is the stand-in in tests/stubs/myriad.py (OpenVINO 2022.3's Core surface and
its real error strings, quoted there with their source); the real stick: tests/hardware."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import tiny_onnx
from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd.config import Policy
from tenantd.errors import DeviceLost, DeviceMemoryFull
from tenantd.runtimes import openvino as ov
from tests.stubs.myriad import INIT_FAILED, OUT_OF_MEMORY, MyriadCore
from tests.support.daemon import daemon_in_thread
from tests.support.faulty_runtime import faulty_model

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


def test_the_daemon_refuses_the_model_that_does_not_fit_and_keeps_serving(tmp_path: Path, endpoint: str) -> None:
    """Through a real daemon: the runtime's DeviceMemoryFull (a full NCS2) reaches the tenant as
    ADMISSION_DENIED with ``networks_loaded``, the device is not marked lost, and the models
    already loaded keep being served. (A daemon cannot be started on ncs2:0 without a stick, so the
    device here is the faulty test runtime's simulated one, with room for two models.)"""
    x = np.ones((1, 4), np.float32)
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(profile="ncs2")) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            for i in range(2):
                alice.submit_model(faulty_model(device_room=2, sleep_ms=i), f"m{i}", runtime="faulty")
            with pytest.raises(E.AdmissionDenied, match="no room for this model") as refused:
                alice.submit_model(faulty_model(device_room=2, sleep_ms=9), "m2", runtime="faulty")
            assert refused.value.details["networks_loaded"] == 2
            assert alice.status()["device_state"] == "available"
            np.testing.assert_array_equal(alice.infer("m0", x)["y"], 2 * x)
            assert {m.name for m in alice.list_models()} == {"m0", "m1"}
        refusals = daemon.events.tail(event="model.refused")
        assert refusals[-1]["code"] == "ADMISSION_DENIED"

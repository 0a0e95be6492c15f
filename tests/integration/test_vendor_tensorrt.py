"""TensorRT conformance against stub ``tensorrt`` packages with only the 8.2 API surface (JetPack
4.6: no ``set_memory_pool_limit``/``MemoryPoolType``, which came in 8.4; bindings, not named
tensors) and only the 10 surface (no ``max_workspace_size``, ``num_bindings`` or
``execute_async_v2``), with a stub pycuda (tests/stubs). The real GPU: tests/hardware."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tenantd.devices.detect import jetson_profile

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "tests" / "stubs"


def run(version: str) -> dict[str, object]:
    path = [str(STUBS / version), str(STUBS / "cuda"), str(STUBS), str(ROOT), str(ROOT / "clients")]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.stubs.trt_session"],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)),
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("version", ["trt82", "trt10"])
def test_builds_loads_runs_and_charges_engine_plus_activations(version: str) -> None:
    pytest.importorskip("onnx")
    r = run(version)
    facts = r["facts"]
    assert isinstance(facts, dict)
    assert facts["tensorrt_api"].startswith("8.x" if version == "trt82" else "10")
    # The stub engine writes the input's sum into every output element: 32*32*3 ones.
    assert r["out"] == [3072.0] * 10
    engine_len = r["engine_len"]
    assert isinstance(engine_len, int) and facts["tensorrt_engine_bytes"] == engine_len
    assert facts["tensorrt_activation_bytes"] == 3 * 2**20
    io_bytes = 32 * 32 * 3 + 10 * 4  # the CNN's uint8 input and float32 output buffers
    assert r["device_bytes"] == engine_len + 3 * 2**20 + io_bytes
    assert r["same_specs"] is True
    assert r["allocated_after_unload"] == 0  # every device buffer freed on unload


def test_orin_nano_is_never_the_4gb_nano() -> None:
    assert jetson_profile("NVIDIA Jetson Orin Nano Developer Kit", []) == "jetson-orin"
    assert jetson_profile("NVIDIA Jetson Nano Developer Kit", ["nvidia,tegra210"]) == "jetson-nano"
    assert jetson_profile("", ["nvidia,p3767-0005", "nvidia,tegra234"]) == "jetson-orin"
    assert jetson_profile("", []) == "cuda"

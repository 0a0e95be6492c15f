"""Integration, opt-in: the device worker under an older Python than the daemon's (``worker_python``),
with the same adapter code the daemon runs inline. Set ``TENANTD_OLD_PYTHON`` to an interpreter
(e.g. Python 3.6 with numpy 1.19 and onnxruntime 1.10, the newest ONNX Runtime for 3.6; or 3.7 with
tflite-runtime 2.11, the newest for 3.7) to run it; each runtime's tests skip where it lacks one;
it is skipped otherwise, since CI has no second interpreter. README "Device workers" says how to
make one. What it shows: the worker really runs there, serves an ONNX model with the outputs the
daemon's own ONNX Runtime gives, and the file checks (``modelfile``/``onnxrefs``) and typed
failures work there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models import tiny_onnx
from tenantd.errors import RuntimeFailure
from tenantd.worker import WorkerHost, WorkerRuntime
from tests.conftest import ModelFiles, direct_litert

OLD_PYTHON = os.environ.get("TENANTD_OLD_PYTHON", "")
pytestmark = pytest.mark.skipif(not OLD_PYTHON, reason="TENANTD_OLD_PYTHON names no older interpreter")


def _old_has(module: str) -> bool:
    return subprocess.run([OLD_PYTHON, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


@pytest.fixture
def host() -> Iterator[WorkerHost]:
    h = WorkerHost("cpu", python=OLD_PYTHON, watchdog_s=60.0)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def old_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny MLP at IR 7 / opset 13, which ONNX Runtime 1.10 (the last for Python 3.6) reads."""
    monkeypatch.setattr(tiny_onnx, "OPSET", 13)
    monkeypatch.setattr(tiny_onnx, "IR_VERSION", 7)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(tiny_onnx.mlp(32, [64], 10, seed=1))
    return path


def test_the_worker_runs_under_the_older_python(host: WorkerHost) -> None:
    hello = host.call({"op": "hello"}, None)
    version = subprocess.run(
        [OLD_PYTHON, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert hello["python"] == version
    assert tuple(int(p) for p in version.split(".")[:2]) < sys.version_info[:2]


def test_onnx_runtime_in_the_old_worker_gives_the_daemons_outputs(host: WorkerHost, old_onnx: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if not _old_has("onnxruntime"):
        pytest.skip(f"{OLD_PYTHON} has no onnxruntime")
    model = WorkerRuntime(host, "onnxruntime", "cpu", num_threads=1, slots=2).load(old_onnx)
    assert [s.to_wire() for s in model.inputs] == [
        {"name": "input", "dtype": "float32", "shape": [1, 32], "quantization": None}
    ]
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    direct = ort.InferenceSession(str(old_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_array_equal(model.infer([x])[0], direct)
    model.add_instance()
    assert model.instances == 2
    with pytest.raises(RuntimeFailure, match=r"zip\(\) argument 2 is longer than argument 1"):
        model.infer([x, x])  # strict_zip's error, raised in the old worker, typed in the daemon
    model.unload()


def test_the_file_checks_refuse_in_the_old_worker(host: WorkerHost, tmp_path: Path) -> None:
    if not _old_has("onnxruntime"):
        pytest.skip(f"{OLD_PYTHON} has no onnxruntime")
    runtime = WorkerRuntime(host, "onnxruntime", "cpu", num_threads=1, slots=1)
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(tiny_onnx.add_bytes(weights_location="/etc/passwd"))
    with pytest.raises(RuntimeFailure, match="keeps its data outside the model file, in '/etc/passwd'"):
        runtime.load(outside)
    lone_xml = tmp_path / "model.xml"
    lone_xml.write_bytes(b'<?xml version="1.0"?>\n<net name="x" version="11"></net>\n')
    with pytest.raises(RuntimeFailure, match=r"reads its weights from a \.bin file beside it"):
        runtime.load(lone_xml)


def _old_has_litert() -> bool:
    return _old_has("tflite_runtime.interpreter") or _old_has("ai_edge_litert.interpreter")


def test_litert_in_the_old_worker_gives_the_daemons_outputs(host: WorkerHost, model_files: ModelFiles) -> None:
    if not _old_has_litert():
        pytest.skip(f"{OLD_PYTHON} has no tflite-runtime or ai-edge-litert")
    model = WorkerRuntime(host, "litert", "cpu", num_threads=1, slots=2).load(model_files.mlp)
    model.add_instance()
    assert model.instances == 2
    x = np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)
    # Another LiteRT build (tflite-runtime 2.11 against ai-edge-litert): the same float32 graph,
    # kernels that may round differently in the last bits.
    np.testing.assert_allclose(model.infer([x])[0], direct_litert(model_files.mlp, x)["probs"], rtol=1e-5, atol=1e-7)
    batch = np.repeat(x, 3, axis=0)  # LiteRT resizes the interpreter's input for a batch
    assert model.infer([batch])[0].shape == (3, 10)
    model.unload()


def test_the_edgetpu_adapter_reads_a_file_in_the_old_worker(host: WorkerHost, model_files: ModelFiles) -> None:
    """On its stand-in device (``cpu``, the probe's) the EdgeTPU adapter reads the file with
    ``tflitefile`` and runs a model not compiled for the EdgeTPU on the host's LiteRT."""
    if not _old_has_litert():
        pytest.skip(f"{OLD_PYTHON} has no tflite-runtime or ai-edge-litert")
    model = WorkerRuntime(host, "edgetpu", "cpu", num_threads=1, slots=1).load(model_files.wakeword)
    assert model.facts["edgetpu_compiled"] is False
    assert "runs on the host CPU" in model.facts["edgetpu_note"]
    spec = model.inputs[0]
    x = np.zeros([max(d, 1) for d in spec.shape], spec.dtype)
    expected = direct_litert(model_files.wakeword, x)
    np.testing.assert_array_equal(model.infer([x])[0], next(iter(expected.values())))
    model.unload()

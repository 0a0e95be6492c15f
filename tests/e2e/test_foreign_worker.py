"""End to end: a device worker whose Python has runtimes the daemon's Python lacks (issue 11).

The daemon runs as a process whose PYTHONPATH puts ``tests/stubs/no_vendor_onnx`` first, which
hides onnxruntime and OpenVINO from it (as OpenVINO 2022.3 cannot be had on the daemon's 3.11 on an
NCS2 host, nor TensorRT outside JetPack's 3.6); its worker's ``worker_python`` is a wrapper script
that runs the same venv's Python without the stub, plus a folder holding a test runtime only the
worker can import (``wfaulty``: the faulty runtime under a module name the daemon cannot find).
So availability, the probe and the load are the worker's business: an ONNX and an IR model are
submitted and served through it (outputs equal to direct invocation in this process), the same
ONNX model on an inline daemon is refused as before, a model whose load crashes the worker is
refused, then quarantined, leaving no record and no file while another model is served, and a
runtime the worker lacks too is refused naming the worker's Python.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tenantclient import TenantClient
from tenantclient import errors as E
from tests.support.daemon import FAULTY, REPO, DaemonProcess, start_daemon_process
from tests.support.faulty_runtime import faulty_model

pytestmark = pytest.mark.e2e

STUB = REPO / "tests" / "stubs" / "no_vendor_onnx"
X = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(1, 32)


def _daemon_env(worker_only: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(STUB), str(REPO), str(REPO / "clients")]),
        "TENANTD_RUNTIMES": f"{FAULTY},wfaulty=foreign_faulty:FaultyRuntime",
        "WORKER_ONLY": str(worker_only),  # only the wrapper below reads it
    }


def _worker_python(tmp_path: Path) -> tuple[Path, Path]:
    """A wrapper running this venv's Python without the hiding stub, with a module of its own."""
    worker_only = tmp_path / "worker_only"
    worker_only.mkdir()
    (worker_only / "foreign_faulty.py").write_text("from tests.support.faulty_runtime import FaultyRuntime\n")
    wrapper = tmp_path / "python3-worker"
    path = os.pathsep.join([str(REPO), str(REPO / "clients"), str(worker_only)])
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{path}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, worker_only


def _start(tmp_path: Path, isolation: str, more: str = "") -> DaemonProcess:
    wrapper, worker_only = _worker_python(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'isolation = "{isolation}"\nworker_python = "{wrapper}"\nworker_watchdog_s = 30.0\n{more}')
    return start_daemon_process(
        tmp_path / "state",
        f"ipc://{tmp_path}/d.sock",
        policy,
        log=tmp_path / "daemon.log",
        env=_daemon_env(worker_only),
    )


@pytest.fixture
def foreign(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    daemon = _start(tmp_path, "process")
    try:
        yield daemon, tmp_path
    finally:
        daemon.stop()


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    pytest.importorskip("onnxruntime")
    from models import tiny_onnx

    path = tmp_path / "mlp.onnx"
    path.write_bytes(tiny_onnx.mlp(32, [64], 10, seed=1))
    return path


def _blobs(state: Path) -> list[Path]:
    return sorted(p for p in (state / "blobs" / "sha256").glob("*/*") if p.is_file())


def test_the_daemon_lacks_what_its_worker_has(onnx_file: Path, tmp_path: Path) -> None:
    """The premise, checked: the stub hides both runtimes from a Python started as the daemon is."""
    import subprocess

    env = {**os.environ, **_daemon_env(tmp_path)}
    code = "import tenantd.runtimes as r\nfor n in ('onnxruntime', 'openvino'):\n"
    code += "    try:\n        r.get_runtime_class(n)\n    except r.RuntimeNotAvailable as e:\n        print(e)\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.count("is not installed here") == 2, out.stdout + out.stderr


def test_onnx_and_ir_are_probed_loaded_and_served_by_the_worker(
    foreign: tuple[DaemonProcess, Path], onnx_file: Path
) -> None:
    import onnxruntime as ort

    openvino = pytest.importorskip("openvino")
    from models import tiny_onnx
    from tenantwire import irbundle

    daemon, tmp_path = foreign
    xml = tiny_onnx.save_ir(onnx_file.read_bytes(), tmp_path / "ir" / "mlp.xml")
    ovir = tmp_path / "mlp.ovir"
    ovir.write_bytes(irbundle.pack_files(xml))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    direct = session.run(None, {session.get_inputs()[0].name: X})[0]
    # Full f32, as the adapter compiles (the CPU plugin may pick bf16 by default).
    compiled = openvino.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    direct_ov = compiled([X])[compiled.outputs[0]]

    with TenantClient(daemon.endpoint, tenant="alice") as alice:
        status = alice.status()
        assert {"onnxruntime", "openvino"} <= set(status["runtimes"])  # the worker's answer
        ort_info = alice.submit_model(onnx_file, "m-ort", runtime="onnxruntime")
        ov_info = alice.submit_model(ovir, "m-ov")
        assert (ort_info.runtime, ov_info.runtime) == ("onnxruntime", "openvino")
        for info in (ort_info, ov_info):
            assert info.resident and info.footprint_bytes > 0
        out = alice.infer("m-ort", X)
        out_ov = alice.infer("m-ov", X)
        probed = {e["model"]: e for e in alice.events(event="model.probed")}
        # The library's import, measured in the worker, is charged once, apart from the models.
        overheads = alice.status()["memory"]["runtime_overhead_bytes"]
    np.testing.assert_allclose(next(iter(out.values())), direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(next(iter(out_ov.values())), direct_ov, rtol=1e-5, atol=1e-6)
    for name in ("m-ort", "m-ov"):
        assert probed[name]["probe"] == "worker"
        assert probed[name]["worker_python"].endswith("python3-worker")
    assert probed["m-ort"]["runtime_version"].startswith("onnxruntime ")
    assert overheads["onnxruntime"] > 0 and overheads["openvino"] > 0
    log = (tmp_path / "daemon.log").read_text()
    assert "runtimes installed in the worker's Python" in log
    # Restarted on the same state, the daemon restores both through its worker, never probing again.
    assert daemon.stop() == 0
    again = start_daemon_process(
        tmp_path / "state",
        f"ipc://{tmp_path}/again.sock",
        tmp_path / "policy.toml",
        log=tmp_path / "again.log",
        env=_daemon_env(tmp_path / "worker_only"),
    )
    try:
        with TenantClient(again.endpoint, tenant="alice") as alice:
            assert {m.name for m in alice.list_models()} == {"m-ort", "m-ov"}
            np.testing.assert_array_equal(next(iter(alice.infer("m-ort", X).values())), next(iter(out.values())))
    finally:
        again.stop()


def test_the_same_model_inline_is_refused_as_before(onnx_file: Path, tmp_path: Path) -> None:
    daemon = _start(tmp_path, "inline")
    try:
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            with pytest.raises(E.RuntimeNotAvailable, match="runtime 'onnxruntime' is not installed here"):
                alice.submit_model(onnx_file, "m", runtime="onnxruntime")
    finally:
        daemon.stop()


def test_a_load_that_crashes_the_worker_is_refused_then_quarantined(
    foreign: tuple[DaemonProcess, Path], onnx_file: Path
) -> None:
    daemon, tmp_path = foreign
    state = tmp_path / "state"
    crash = faulty_model(load="crash")
    with TenantClient(daemon.endpoint, tenant="alice") as alice, TenantClient(daemon.endpoint, tenant="bob") as bob:
        bob.submit_model(onnx_file, "served", runtime="onnxruntime")
        blobs = _blobs(state)
        # A load the runtime refuses: the runtime's reason, nothing left behind, the worker unharmed.
        with pytest.raises(E.InvalidModel, match="the faulty runtime refused this model on purpose"):
            alice.submit_model(faulty_model(load="error"), "bad", runtime="wfaulty")
        assert _blobs(state) == blobs and alice.status()["residency"]["worker_crashes"] == 0
        for attempt in (1, 2):
            with pytest.raises(E.InvalidModel, match="crashed the device worker"):
                alice.submit_model(crash, "bad", runtime="wfaulty")
            assert _blobs(state) == blobs, f"attempt {attempt} left a file behind"
            assert bob.infer("served", X)  # the worker came back with bob's model
        with pytest.raises(E.InvalidModel, match="quarantined"):
            alice.submit_model(crash, "bad", runtime="wfaulty")
        assert [m.name for m in alice.list_models()] == []
        status = alice.status()
        assert status["residency"]["quarantined"] and status["residency"]["worker_crashes"] == 2
        assert status["memory"]["models_admitted"] == 1  # bob's: no refused attempt was charged
        events = alice.events(event="worker.quarantined")
        assert len(events) == 1
        ok = alice.submit_model(faulty_model(), "good", runtime="wfaulty")  # the same runtime, a good file
        assert ok.resident
        np.testing.assert_array_equal(alice.infer("good", np.ones((1, 4), np.float32))["y"], np.full((1, 4), 2.0))


def test_a_runtime_the_worker_lacks_too_names_the_workers_python(foreign: tuple[DaemonProcess, Path]) -> None:
    daemon, tmp_path = foreign
    with TenantClient(daemon.endpoint, tenant="alice") as alice:
        with pytest.raises(E.RuntimeNotAvailable) as refused:
            alice.submit_model(b"not an engine", "m", runtime="tensorrt")
    message = str(refused.value)
    assert f"not installed in the worker's Python {tmp_path / 'python3-worker'}" in message
    assert "install tensorrt and pycuda" in message and message.endswith("there")


def test_under_swapping_the_trial_load_is_unloaded_and_loaded_on_demand(onnx_file: Path, tmp_path: Path) -> None:
    daemon = _start(tmp_path, "process", 'overcommit = "swap"\nslots = 1\n')
    try:
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            info = alice.submit_model(onnx_file, "m-ort", runtime="onnxruntime")
            assert not info.resident  # registered as swappable: loaded by the first request for it
            good = alice.submit_model(faulty_model(), "good", runtime="wfaulty")
            assert not good.resident and good.footprint_bytes > 0
            y = alice.infer("good", np.ones((1, 4), np.float32))["y"]
            assert next(iter(alice.infer("m-ort", X).values())).shape == (1, 10)
            assert alice.status()["residency"]["reloads"] >= 2
        np.testing.assert_array_equal(y, np.full((1, 4), 2.0, np.float32))
    finally:
        daemon.stop()

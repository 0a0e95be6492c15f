"""Integration: a device worker under a real older Python with the old vendor runtimes (issue 11).

Two parts. (1) The worker's host side (``WorkerHost``/``WorkerRuntime``) against the interpreter
named by ``TENANTD_OLD_PYTHON`` (e.g. CPython 3.6 with numpy 1.19 and onnxruntime 1.10, the newest
ONNX Runtime for 3.6; or 3.7 with tflite-runtime 2.11), else ``packaging/oldpython/python3.9`` where
``make oldpython`` built it: the worker really runs there, serves ONNX / LiteRT with the outputs the
daemon's own runtimes give, and the file checks (``modelfile``/``onnxrefs``) and typed failures work
there too; each runtime's tests skip where that interpreter lacks it.

(2) A daemon started by its CLI (``isolation = "process"``) whose worker runs under
``packaging/oldpython/python3.9``: Debian 11's Python 3.9 with numpy 1.23.4, ``tflite-runtime``
2.14.0 and OpenVINO 2022.3.2, built by ``make oldpython`` outside the repository. The worker
reports that interpreter; a ``.tflite`` runs on ``tflite_runtime`` (the old root has no
``ai_edge_litert``) and an OpenVINO IR on OpenVINO 2022.3 in the worker, and both answers match
the same files run directly by this venv's LiteRT and OpenVINO 2026; a SIGKILLed worker comes back
under the old interpreter and serves again; the NCS2's MYRIAD path and the EdgeTPU's delegate are
followed as far as they go without a stick; under the CPython 3.6 venv it also builds (where the
host has a 3.6), an IR runs on OpenVINO 2022.2.

Everything here is skipped, with the reason, where no older interpreter is built or named.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from models import tiny, tiny_onnx
from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd.errors import RuntimeFailure
from tenantd.worker import WorkerHost, WorkerRuntime
from tenantwire import irbundle
from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import REPO, DaemonProcess, daemon_env, start_daemon_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.oldpython

WRAPPER = REPO / "packaging" / "oldpython" / "python3.9"
OLDPY_ROOT = Path(os.environ.get("TENANTD_OLDPY_ROOT", "/var/lib/tenantd-oldpy"))

# The interpreter part (1) runs under: the one named, else the wrapper where its root is built.
_BUILT = (OLDPY_ROOT / "bullseye" / ".tenantd-oldpy-built").exists() and os.geteuid() == 0
OLD_PYTHON = os.environ.get("TENANTD_OLD_PYTHON", "") or (str(WRAPPER) if _BUILT else "")
needs_old_python = pytest.mark.skipif(
    not OLD_PYTHON, reason="TENANTD_OLD_PYTHON names no older interpreter and make oldpython has not built one"
)


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


@needs_old_python
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


@needs_old_python
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


@needs_old_python
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


@needs_old_python
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


@needs_old_python
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


# ------------------------------------------------ (2) a daemon by its CLI under make oldpython's Python

OLD_VERSION = (3, 9)
CNN = {"image": 32, "channels": (8, 16, 32), "classes": 10, "seed": 7}
# OpenVINO 2022.3 (and 2022.2) in the worker against OpenVINO 2026 here, both CPU at f32, 20 inputs:
# 9 answers bit-equal, the rest within 7.5e-9; the bound leaves room for another CPU's kernels.
OV_TOLERANCE = 1e-5
# tflite-runtime 2.14 against ai-edge-litert 2.3 on the same file and input (40 runs here): half the
# answers bit-equal, the rest within 1.5e-8 (one float32 step at 0.1: their XNNPACK builds differ).
LITERT_TOLERANCE = 1e-6
WAIT_S = 60.0


def _old_python_or_skip() -> None:
    """Skip unless the wrapper runs the old interpreter here (root built, mount namespaces allowed)."""
    if os.geteuid() != 0:
        pytest.skip("the old-Python wrapper needs root (a mount namespace); build it with make oldpython")
    probe = subprocess.run(
        [str(WRAPPER), "-c", "import sys, numpy, tflite_runtime, openvino; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"the old Python is not built or does not run here (make oldpython): {probe.stderr.strip()[-300:]}")
    assert probe.stdout.strip() == str(OLD_VERSION), probe.stdout


@dataclass(frozen=True)
class Files:
    tflite: Path
    ovir: Path
    xml: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("oldpy-models")
    onnx_cnn = tiny_onnx.cnn(**CNN)  # type: ignore[arg-type]
    paths = Files(tflite=root / "cnn.tflite", ovir=root / "cnn.ovir", xml=root / "ir" / "cnn.xml")
    paths.tflite.write_bytes(tiny.cnn(**CNN))  # type: ignore[arg-type]
    tiny_onnx.save_ir(onnx_cnn, paths.xml)  # saved by this venv's OpenVINO 2026 (IR v11), read by 2022.3
    paths.ovir.write_bytes(irbundle.pack_files(paths.xml))
    return paths


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    _old_python_or_skip()
    root = tmp_path_factory.mktemp("oldpy-daemon")
    policy = root / "policy.toml"
    policy.write_text(f'isolation = "process"\nworker_python = "{WRAPPER}"\n')
    proc = start_daemon_process(root / "state", f"ipc://{root}/d.sock", policy, log=root / "daemon.log")
    try:
        yield proc
    finally:
        proc.stop()


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)


def direct_openvino(xml: Path, x: np.ndarray) -> np.ndarray:
    """The reference: this venv's OpenVINO (2026) on the CPU at full f32 precision."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled([x])[0])


def residency(client: TenantClient) -> dict[str, object]:
    status = client.status()["residency"]
    assert isinstance(status, dict)
    return status


def worker_libraries(pid: int) -> str:
    """The files mapped into the worker (paths as its own mount namespace names them)."""
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_daemon_by_its_cli_runs_its_worker_under_the_old_python(daemon: DaemonProcess, files: Files) -> None:
    with TenantClient(daemon.endpoint, tenant="alice") as alice:
        alice.submit_model(files.tflite, "alice_cnn")
        alice.infer("alice_cnn", image(0))
        status = residency(alice)
    assert status["isolation"] == "process" and status["worker_state"] == "running"
    assert status["worker_python"] == str(WRAPPER)
    assert str(status["worker_python_version"]).startswith("3.9."), status
    worker = psutil.Process(int(str(status["worker_pid"])))
    # The wrapper execs all the way down: the daemon's child is the interpreter itself, in a mount
    # namespace of its own (Debian 11's /usr over the host's), holding the fds the daemon passed.
    assert worker.ppid() == daemon.proc.pid
    assert os.readlink(f"/proc/{worker.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert "python3.9" in worker.exe()


def test_litert_model_runs_on_tflite_runtime_in_the_worker(daemon: DaemonProcess, files: Files) -> None:
    with TenantClient(daemon.endpoint, tenant="bob") as bob:
        info = bob.submit_model(files.tflite, "bob_cnn")
        assert info.runtime == "litert"
        for seed in range(5):
            x = image(seed)
            got = bob.infer("bob_cnn", x)["probs"]
            assert np.abs(got - direct_litert(files.tflite, x)["probs"]).max() <= LITERT_TOLERANCE, seed
        pid = int(str(residency(bob)["worker_pid"]))
    maps = worker_libraries(pid)
    assert "python3.9/dist-packages/tflite_runtime/" in maps
    assert "ai_edge_litert" not in maps


def test_openvino_ir_runs_on_openvino_2022_3_in_the_worker(daemon: DaemonProcess, files: Files) -> None:
    with TenantClient(daemon.endpoint, tenant="carol") as carol:
        info = carol.submit_model(files.ovir, "cnn_ir")
        assert info.runtime == "openvino"
        for seed in range(5):
            x = image(100 + seed)
            got = carol.infer("cnn_ir", x)["probs"]
            assert np.abs(got - direct_openvino(files.xml, x)).max() <= OV_TOLERANCE, seed
        pid = int(str(residency(carol)["worker_pid"]))
    assert "python3.9/dist-packages/openvino/libs/libopenvino.so.2232" in worker_libraries(pid)


def test_a_killed_worker_comes_back_under_the_old_python(daemon: DaemonProcess, files: Files) -> None:
    x = image(7)
    with TenantClient(daemon.endpoint, tenant="dave") as dave:
        dave.submit_model(files.tflite, "dave_cnn")
        dave.submit_model(files.ovir, "dave_cnn_ir")
        before = residency(dave)
        first, restarts = int(str(before["worker_pid"])), int(str(before["worker_restarts"]))
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: residency(dave)["worker_restarts"] == restarts + 1, "worker restart")
        wait_for(lambda: residency(dave)["worker_state"] == "running", "running worker")
        after = residency(dave)
        assert after["worker_pid"] != first and "SIGKILL" in str(after["worker_last_crash"])
        assert str(after["worker_python_version"]).startswith("3.9.")
        expected = direct_litert(files.tflite, x)["probs"]
        assert np.abs(dave.infer("dave_cnn", x)["probs"] - expected).max() <= LITERT_TOLERANCE
        assert np.abs(dave.infer("dave_cnn_ir", x)["probs"] - direct_openvino(files.xml, x)).max() <= OV_TOLERANCE
    assert "tflite_runtime" in worker_libraries(int(str(after["worker_pid"])))


def test_a_tflite_sent_to_openvino_2022_3_is_refused_at_the_workers_load(daemon: DaemonProcess, files: Files) -> None:
    """OpenVINO 2022.x has no TFLite front end (2023.0 added it). The probe runs in the daemon's
    Python, whose OpenVINO 2026 reads the file, so the refusal comes from the worker's load, which
    says why before OpenVINO would (its own words: no front end for the file)."""
    with TenantClient(daemon.endpoint, tenant="frank") as frank:
        with pytest.raises(
            E.RuntimeFailed, match=r"OpenVINO 2022\.3\.\d cannot read \.tflite files \(its TensorFlow Lite"
        ):
            frank.submit_model(files.tflite, "frank_cnn", runtime="openvino")
        assert residency(frank)["worker_state"] == "running"  # a refusal, not a crash


MYRIAD_SCRIPT = """
import sys
from pathlib import Path
import openvino.runtime as ov
from tenantd.errors import DeviceLost
from tenantd.runtimes.openvino import OpenVINORuntime
core = ov.Core()
print("devices", core.available_devices)
try:
    core.compile_model(core.read_model(sys.argv[1]), "MYRIAD")
except RuntimeError as exc:
    print("compile MYRIAD:", exc)
try:
    OpenVINORuntime(device="ncs2:0").load(Path(sys.argv[2]))
except DeviceLost as exc:
    print("ncs2:0:", exc)
"""


def test_the_myriad_path_without_a_stick(files: Files) -> None:
    """As far as the NCS2 path goes here: OpenVINO 2022.3 from PyPI lists only the CPU and has no
    MYRIAD plugin registered at all (the PyPI wheel leaves it out; it came with the archive
    distribution), so the adapter reports the stick as not there (DeviceLost: the daemon's
    device-lost handling retries it with backoff)."""
    _old_python_or_skip()
    run = subprocess.run(
        [str(WRAPPER), "-c", MYRIAD_SCRIPT, str(files.xml), str(files.ovir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=daemon_env(extra_runtimes=False) | {"PYTHONPATH": f"{REPO}:{REPO / 'clients'}"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "devices ['CPU']" in run.stdout
    assert 'Device with "MYRIAD" name is not registered in the OpenVINO Runtime' in run.stdout
    assert "ncs2:0: no NCS2 stick 0 here (OpenVINO lists ['CPU'])" in run.stdout


PY36 = OLDPY_ROOT / "py36" / "bin" / "python"


def test_openvino_ir_runs_in_a_worker_under_python_3_6(tmp_path: Path, files: Files) -> None:
    """JetPack 4.6's Python level, run for real: CPython 3.6 with numpy 1.19.5 and OpenVINO 2022.2
    (the last OpenVINO with cp36 wheels; PyPI has no tflite-runtime for cp36 on x86-64, so LiteRT is
    not tried here)."""
    if not PY36.is_file():
        pytest.skip(f"no Python 3.6 venv at {PY36} (make oldpython builds one where the host has a CPython 3.6)")
    policy = tmp_path / "policy.toml"
    policy.write_text(f'isolation = "process"\nworker_python = "{PY36}"\n')
    proc = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock", policy, log=tmp_path / "log")
    try:
        with TenantClient(proc.endpoint, tenant="erin") as erin:
            info = erin.submit_model(files.ovir, "cnn_ir")
            assert info.runtime == "openvino"
            for seed in range(3):
                x = image(200 + seed)
                got = erin.infer("cnn_ir", x)["probs"]
                assert np.abs(got - direct_openvino(files.xml, x)).max() <= OV_TOLERANCE, seed
            status = residency(erin)
        assert str(status["worker_python_version"]).startswith("3.6."), status
        maps = worker_libraries(int(str(status["worker_pid"])))
        assert "python3.6/site-packages/openvino/libs/libopenvino.so" in maps
    finally:
        proc.stop()


def test_the_wrapper_says_how_to_build_the_root_where_it_is_missing(tmp_path: Path) -> None:
    """Runs everywhere (no root needed): a daemon whose worker_python is the wrapper on a machine
    without the build logs this line for each failed worker start."""
    run = subprocess.run(
        [str(WRAPPER), "-c", "print('ran')"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TENANTD_OLDPY_ROOT": str(tmp_path / "none")},
        check=False,
    )
    assert run.returncode == 127 and not run.stdout
    assert f"{tmp_path / 'none'}/bullseye is not built: run packaging/oldpython/build.sh (make oldpython)" in run.stderr


EDGETPU_SCRIPT = """
import sys
from pathlib import Path
from tenantd.errors import DeviceLost
from tenantd.runtimes.edgetpu import EdgeTPURuntime
print("loader", EdgeTPURuntime.version())
try:
    EdgeTPURuntime(device="edgetpu:usb:0").load(Path(sys.argv[1]))
except DeviceLost as exc:
    print("usb:0:", exc)
"""


def test_the_edgetpu_path_without_a_stick(tmp_path: Path) -> None:
    """The EdgeTPU adapter in the old Python falls back to tflite_runtime's load_delegate, and says
    the device cannot be opened (no libedgetpu here: Coral's apt repository is not reachable)."""
    _old_python_or_skip()
    model = tmp_path / "stand_in_edgetpu.tflite"
    model.write_bytes(tiny.edgetpu_stand_in())
    run = subprocess.run(
        [str(WRAPPER), "-c", EDGETPU_SCRIPT, str(model)],
        capture_output=True,
        text=True,
        timeout=120,
        env=daemon_env(extra_runtimes=False) | {"PYTHONPATH": f"{REPO}:{REPO / 'clients'}"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "loader tflite-runtime 2.14.0 via tflite_runtime" in run.stdout
    assert "usb:0: cannot open EdgeTPU usb:0 with tflite_runtime: libedgetpu.so.1: cannot open" in run.stdout


@pytest.mark.parametrize("old", ["3.9", "3.6"])
def test_a_daemon_without_openvino_has_its_old_worker_probe_and_serve_the_ir(
    tmp_path: Path, files: Files, old: str
) -> None:
    """Issue 11's hole, on the real old Python: the daemon's own Python is made to lack OpenVINO
    (``tests/stubs/no_vendor_onnx`` first on its PYTHONPATH), as an NCS2 host's 3.11 cannot have
    2022.3, while its worker is Debian 11's 3.9 with OpenVINO 2022.3 (a script that drops the stub
    from PYTHONPATH and execs the wrapper). The worker says it has OpenVINO, the IR is probed by a
    trial load there and served; the .tflite that 2022.3 cannot read is refused at submit with the
    worker's reason, not after a probe in the daemon passed it; ONNX Runtime, which that root lacks,
    is refused naming the worker's Python. Under the CPython 3.6 venv (OpenVINO 2022.2) too, where built."""
    _old_python_or_skip()
    if old == "3.6" and not PY36.is_file():
        pytest.skip(f"no Python 3.6 venv at {PY36} (make oldpython builds one where the host has a CPython 3.6)")
    interpreter = WRAPPER if old == "3.9" else PY36
    sources = os.pathsep.join([str(REPO), str(REPO / "clients")])
    worker_python = tmp_path / "python3.9-worker"
    worker_python.write_text(f'#!/bin/sh\nPYTHONPATH="{sources}" exec "{interpreter}" "$@"\n')
    worker_python.chmod(0o755)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'isolation = "process"\nworker_python = "{worker_python}"\n')
    hidden = os.pathsep.join([str(REPO / "tests" / "stubs" / "no_vendor_onnx"), sources])
    proc = start_daemon_process(
        tmp_path / "state", f"ipc://{tmp_path}/d.sock", policy, log=tmp_path / "log", env={"PYTHONPATH": hidden}
    )
    try:
        with TenantClient(proc.endpoint, tenant="gina") as gina:
            assert "openvino" in gina.status()["runtimes"]
            info = gina.submit_model(files.ovir, "cnn_ir")
            assert info.runtime == "openvino" and info.footprint_bytes > 0
            for seed in range(3):
                x = image(300 + seed)
                got = gina.infer("cnn_ir", x)["probs"]
                assert np.abs(got - direct_openvino(files.xml, x)).max() <= OV_TOLERANCE, seed
            probed = gina.events(event="model.probed")[-1]
            assert probed["probe"] == "worker" and probed["runtime_version"].startswith("openvino 2022."), probed
            with pytest.raises(E.InvalidModel, match=r"OpenVINO 2022\.\d\.\d cannot read \.tflite files"):
                gina.submit_model(files.tflite, "gina_tflite", runtime="openvino")
            with pytest.raises(E.RuntimeNotAvailable, match=f"not installed in the worker's Python {worker_python}"):
                gina.submit_model(files.tflite, "gina_ort", runtime="onnxruntime")
            assert str(residency(gina)["worker_python_version"]).startswith(old + "."), residency(gina)
    finally:
        proc.stop()

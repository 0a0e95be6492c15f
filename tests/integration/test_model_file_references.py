"""Integration: a tenant cannot make the daemon read files of its host through a model file.

The issue's repro: an ONNX ``Add(X, W)`` whose ``W`` is external data naming a file on the daemon's
host, submitted for OpenVINO (which reads a model from bytes and resolves external data against the
process's working directory) and run on zeros, answered with that file's bytes. The daemon here is a
real process with working directory ``/``, as systemd starts a service: OpenVINO 2026 itself reads
external data only below the working directory, so from ``/`` every such path (absolute, relative
with ``..``, into the state directory) is one it reads. The first test shows that it does when asked
directly, so the refusals through the daemon cannot pass for want of a readable file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the repro needs OpenVINO (pip install 'tenantd[openvino]')")
pytest.importorskip("onnx", reason="building the repro's ONNX files needs the onnx package")

from models import tiny_onnx
from tenantclient import TenantClient
from tenantclient import errors as E
from tests.conftest import ModelFiles
from tests.support.daemon import DaemonProcess, daemon_env, start_daemon_process

ROOT = Path("/")
LENGTH = 64
WHERE = "graph 'tenantd add bytes' > initializer 'W'"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file of the daemon's host that no tenant should see."""
    path = tmp_path / "host-secret.txt"
    path.write_bytes(bytes(range(65, 65 + 26)) * 4)
    return path


def relative_from_root(path: Path) -> str:
    """``path`` as a relative path with ``..`` components, from working directory ``/``."""
    return "../../" + str(path).lstrip("/")


def openvino_directly(location: str, cwd: Path) -> tuple[bool, bytes]:
    """In a process with working directory ``cwd`` (it is process-wide, so not this one): whether
    the OpenVINO runtime refuses the repro model, and what its own loader, without the check,
    returns for it run on zeros."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from models import tiny_onnx
        from tenantd.modelfile import ModelFileRefused
        from tenantd.runtimes.openvino import OpenVINORuntime

        data = tiny_onnx.add_bytes(weights_location=sys.argv[1])
        runtime = OpenVINORuntime()
        try:
            runtime.load(data)
            print("loaded")
        except ModelFileRefused:
            print("refused")
        model = runtime._load(data)  # the engine's own loader: what the daemon did before the check
        print(model.infer([np.zeros(64, np.uint8)])[0].tobytes().hex())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, location],
        cwd=cwd,
        env=daemon_env(extra_runtimes=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    verdict, output = done.stdout.split()[-2:]
    return verdict == "refused", bytes.fromhex(output)


def passwd() -> Path | None:
    path = Path("/etc/passwd")
    return path if path.is_file() and path.stat().st_size >= LENGTH else None


def test_openvino_itself_reads_the_file_a_model_names(secret: Path) -> None:
    """The repro is real: OpenVINO's own loader returns the named file's bytes, from an absolute
    path and from a relative one with ``..`` (and the issue's /etc/passwd); the checked load refuses."""
    cases = [(str(secret), secret), (relative_from_root(secret), secret)]
    if passwd() is not None:
        cases.append(("/etc/passwd", Path("/etc/passwd")))
    for location, target in cases:
        refused, output = openvino_directly(location, ROOT)
        assert output == target.read_bytes()[:LENGTH], location
        assert refused, location


@pytest.fixture
def daemon_at_root(tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock", cwd=ROOT)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0


def test_daemon_refuses_models_that_name_files_of_its_host(
    daemon_at_root: DaemonProcess, secret: Path, model_files: ModelFiles
) -> None:
    endpoint, state = daemon_at_root.endpoint, daemon_at_root.state_dir
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.submit_model(model_files.mlp, "alice_mlp")
    (alice_blob,) = (state / "blobs" / "sha256").glob("*/*")
    attempts = [
        ("openvino", str(secret)),
        ("openvino", relative_from_root(state / "tenantd.db")),  # the store's database, by ../
        ("openvino", str(alice_blob)),  # another tenant's model
        ("onnxruntime", relative_from_root(secret)),
    ]
    if passwd() is not None:
        attempts.append(("openvino", "/etc/passwd"))
    with TenantClient(endpoint, tenant="mallory") as mallory:
        for runtime, location in attempts:
            with pytest.raises(E.InvalidModel) as info:
                mallory.submit_model(tiny_onnx.add_bytes(weights_location=location), "leak", runtime=runtime)
            refused = info.value
            assert f"{runtime} cannot use this file: {WHERE} keeps its data outside the model file" in refused.message
            assert repr(location) in refused.message
            assert refused.details["model_file"]["where"] == WHERE
            assert refused.details["model_file"]["reference"] == location
        assert mallory.list_models() == []

        # The same model with its weights inside it is served, by the same runtime.
        mallory.submit_model(tiny_onnx.add_bytes(), "adder", runtime="openvino")
        weights = tiny_onnx.add_bytes_weights()
        assert np.array_equal(mallory.infer("adder", np.zeros(LENGTH, np.uint8))["Y"], weights)
        x = (255 - weights) // 2  # no sum overflows (OpenVINO saturates uint8, numpy wraps)
        assert np.array_equal(mallory.infer("adder", x)["Y"], x + weights)
        assert [m.name for m in mallory.list_models()] == ["adder"]
    with TenantClient(endpoint) as operator:
        refusals = [e for e in operator.events(event="model.refused") if e["tenant"] == "mallory"]
        assert len(refusals) == len(attempts) and all(WHERE in e["reason"] for e in refusals)

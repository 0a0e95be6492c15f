"""End to end: ``tenantd serve --device auto`` picks a device, says which on its ready line and in
its log, and serves on it; ``tenantctl submit`` of an IR ``.xml`` sends the bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tenantclient import TenantClient
from tenantd.devices.detect import detect, pick_auto
from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import REPO, daemon_env, start_daemon_process

pytestmark = pytest.mark.e2e


def test_serve_device_auto(tmp_path: Path, model_files: ModelFiles) -> None:
    expected, _ = pick_auto(detect())
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock", extra=["--device", "auto"])
    try:
        assert f" device={expected.device} auto=true " in daemon.ready_line
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            assert alice.status()["device"] == expected.device
            if expected.device == "cpu":
                alice.submit_model(model_files.mlp, "mlp")
                x = np.ones((1, 32), np.float32)
                assert np.array_equal(alice.infer("mlp", x)["probs"], direct_litert(model_files.mlp, x)["probs"])
    finally:
        assert daemon.stop() == 0
    assert f"--device auto: picked {expected.device}" in daemon.stderr()


def test_tenantctl_submits_openvino_ir_as_a_bundle(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="needs openvino")
    from models import tiny_onnx

    xml = tiny_onnx.save_ir(tiny_onnx.mlp(32, [64], 10, seed=1), tmp_path / "ir" / "mlp.xml")
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tenantclient.cli", "--endpoint", daemon.endpoint, "submit", str(xml),
             "--name", "mlp", "--tenant", "alice"],
            capture_output=True, text=True, env=daemon_env(), cwd=REPO, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "runtime openvino" in done.stdout
    finally:
        assert daemon.stop() == 0

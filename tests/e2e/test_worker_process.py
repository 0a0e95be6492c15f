"""End to end: the device worker beside a daemon run through its CLI. The worker never outlives
the daemon (it ends when the daemon's end of its control socket closes, even after a SIGKILL of the
daemon), and a clean stop takes it down too, with its shared-memory arenas."""

from __future__ import annotations

import glob
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest

from tenantclient import TenantClient
from tests.conftest import ModelFiles
from tests.support.daemon import start_daemon_process

pytestmark = pytest.mark.e2e

WAIT_S = 30.0


def _serve_one(endpoint: str, model_files: ModelFiles) -> psutil.Process:
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.submit_model(model_files.mlp, "m")
        alice.infer("m", np.ones((1, 32), np.float32))
        residency = alice.status()["residency"]
    assert residency["isolation"] == "process" and residency["worker_state"] == "running"
    return psutil.Process(int(residency["worker_pid"]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_worker_ends_with_the_daemon(tmp_path: Path, model_files: ModelFiles, sig: int) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('isolation = "process"\n')  # the CPU's default is inline (README, "Device workers")
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock", policy, log=tmp_path / "log")
    try:
        worker = _serve_one(daemon.endpoint, model_files)
        assert worker.ppid() == daemon.proc.pid
        arenas = glob.glob(f"/dev/shm/tenantd-{daemon.proc.pid}-*")
        assert arenas  # the request's tensors went through shared memory
    finally:
        daemon.stop(sig)
    worker.wait(WAIT_S)  # raises psutil.TimeoutExpired if it outlived the daemon
    if sig == signal.SIGKILL:  # it could not remove its arenas: the next daemon to start does
        assert glob.glob(f"/dev/shm/tenantd-{daemon.proc.pid}-*")
        start_daemon_process(tmp_path / "next", f"ipc://{tmp_path}/n.sock", policy, log=tmp_path / "log2").stop()
    assert not glob.glob(f"/dev/shm/tenantd-{daemon.proc.pid}-*")

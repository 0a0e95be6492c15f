"""End to end: ``tenantd serve --timing twin`` through the CLI: the ready line says so, the status
reports the twin, and a profile without a twin is a configuration error (exit status 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tenantclient import TenantClient
from tests.support.daemon import REPO, daemon_env, start_daemon_process

pytestmark = pytest.mark.e2e


def test_serve_with_twin_timing(tmp_path: Path) -> None:
    daemon = start_daemon_process(
        tmp_path / "state", f"ipc://{tmp_path}/d.sock", extra=["--profile", "jetson-nano", "--timing", "twin"]
    )
    try:
        assert "profile=jetson-nano" in daemon.ready_line and "timing=twin" in daemon.ready_line
        with TenantClient(daemon.endpoint, tenant="a") as a:
            assert a.status()["residency"]["timing"] == "twin jetson-nano"
    finally:
        assert daemon.stop() == 0


def test_a_profile_without_a_twin_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tenantd",
            "serve",
            "--endpoint",
            f"ipc://{tmp_path}/d.sock",
            "--state-dir",
            str(tmp_path / "state"),
            "--timing",
            "twin",
        ],
        cwd=REPO,
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--timing twin: no device twin for profile 'cpu'" in proc.stderr

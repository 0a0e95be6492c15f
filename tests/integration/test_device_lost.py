"""Integration: a device that disappears while the daemon serves it.

The fault-injecting test runtime stands for a vendor runtime that reports its device gone (it
raises DeviceLost while a flag file exists, in inference and in loads), since no device here can be
unplugged on demand. What is under test is the daemon's behaviour, which is the same for every
runtime: the request that met the loss fails with DEVICE_UNAVAILABLE and an event is logged; while
the device is gone, inference fails fast with that code and every other operation still works; the
daemon retries the device on a backoff and serves again once it is back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd.config import Policy
from tenantd.daemon import Daemon
from tests.conftest import ModelFiles
from tests.support.daemon import daemon_in_thread
from tests.support.faulty_runtime import faulty_model

X = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)


@pytest.fixture
def fast_retry_daemon(tmp_path: Path, endpoint: str) -> Iterator[Daemon]:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy()) as daemon:
        daemon.health.retry_s = (0.05, 0.2)  # seconds; the production backoff starts at 1 s
        yield daemon


def wait_for(predicate: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)  # ok: polling the daemon's state


def test_lost_device_fails_fast_keeps_serving_state_and_recovers(
    fast_retry_daemon: Daemon, endpoint: str, tmp_path: Path, model_files: ModelFiles
) -> None:
    flag = tmp_path / "unplugged"
    with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint) as operator:
        alice.submit_model(faulty_model(infer="lost", flag=str(flag)), "stick", runtime="faulty")
        assert np.array_equal(alice.infer("stick", X)["y"], X * 2)

        flag.touch()  # unplug
        with pytest.raises(E.DeviceUnavailable, match="unplugged"):
            alice.infer("stick", X)
        # While it is gone: inference fails fast with the same code, without touching the runtime...
        with pytest.raises(E.DeviceUnavailable) as info:
            alice.infer("stick", X)
        assert info.value.details["device"] == "cpu" and info.value.details["reason"]
        # ...a submission too (nothing could be loaded)...
        with pytest.raises(E.DeviceUnavailable):
            alice.submit_model(model_files.mlp, "mlp")
        # ...and the rest of the daemon answers as before.
        status = operator.status()
        assert status["device_state"] == "lost" and status["device_lost"]["reason"]
        assert [m.name for m in alice.list_models()] == ["stick"]
        lost = operator.events(event="device.lost")
        assert len(lost) == 1 and lost[0]["model"] == "stick" and "unplugged" in lost[0]["reason"]
        # The daemon keeps retrying (and failing) while the device is away.
        wait_for(lambda: len(operator.events(event="device.retry_failed")) >= 2)

        flag.unlink()  # plug it back in
        wait_for(lambda: operator.status()["device_state"] == "available")
        assert np.array_equal(alice.infer("stick", X)["y"], X * 2)
        recovered = operator.events(event="device.recovered")
        assert len(recovered) == 1 and recovered[0]["reloaded"] == ["stick"] and recovered[0]["attempts"] >= 3
        assert operator.status()["device_lost"] is None


def test_runtime_failure_is_not_a_lost_device(fast_retry_daemon: Daemon, endpoint: str) -> None:
    """An inference that fails (bad input, model bug) fails alone: the device stays available."""
    with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint) as operator:
        alice.submit_model(faulty_model(infer="error"), "flaky", runtime="faulty")
        with pytest.raises(E.RuntimeFailed):
            alice.infer("flaky", X)  # it fails on negative input
        assert operator.status()["device_state"] == "available"
        assert np.array_equal(alice.infer("flaky", np.abs(X))["y"], np.abs(X) * 2)
        assert operator.events(event="device.lost") == []

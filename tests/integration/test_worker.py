"""Integration: the device worker. A real daemon (in a thread) whose runtimes run in a real worker
process: the serving path with LiteRT, ONNX Runtime and OpenVINO gives what direct invocation gives,
and faults injected into the worker (SIGKILL from outside, ``os.abort()`` and a segfault inside a
runtime call, a call that never returns, memory exhaustion under an rlimit) end or stall the
worker, never the daemon: the request on it gets DEVICE_UNAVAILABLE, another tenant keeps being
served, every acknowledged model is there again after the restart, and a model that crashed the
worker twice is quarantined.

The faults come from the faulty test runtime (``tests/support/faulty_runtime.py``), registered in
the worker through TENANTD_RUNTIMES as in the probe; LiteRT cannot be made to abort on purpose.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd.config import ConfigError, Policy
from tenantd.daemon import Daemon, ServeConfig
from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import daemon_in_thread
from tests.support.faulty_runtime import faulty_model
from tests.support.waiting import wait_for

WAIT_S = 60.0
X = np.ones((1, 4), np.float32)  # positive: the faulty model's fault fires on it


def worker_status(daemon: Daemon) -> dict[str, object]:
    return daemon.executor.worker_status()


@pytest.fixture
def isolated(tmp_path: Path, endpoint: str) -> Iterator[Daemon]:
    policy = Policy(isolation="process", worker_watchdog_s=5.0, worker_memory_limit_bytes=3 * 2**30)
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as d:
        yield d


def test_serving_through_the_worker_equals_direct_invocation(
    isolated: Daemon, endpoint: str, model_files: ModelFiles, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from models import tiny_onnx
    from tenantwire import irbundle

    onnx = tmp_path / "mlp.onnx"
    onnx.write_bytes(tiny_onnx.mlp(32, [64], 10, seed=1))  # the same weights as model_files.mlp
    xml = tmp_path / "ir" / "mlp.xml"
    tiny_onnx.save_ir(onnx.read_bytes(), xml)
    ovir = tmp_path / "mlp.ovir"
    ovir.write_bytes(irbundle.pack_files(xml))
    with TenantClient(endpoint, tenant="alice") as alice:
        served = {
            "litert": alice.submit_model(model_files.mlp, "m-litert"),
            "onnxruntime": alice.submit_model(onnx, "m-ort"),
            "openvino": alice.submit_model(ovir, "m-ov"),
            "wakeword": alice.submit_model(model_files.wakeword, "m-wake"),
        }
        assert [i.runtime for i in served.values()] == ["litert", "onnxruntime", "openvino", "litert"]
        for info in served.values():
            assert info.footprint_bytes > 0 and info.resident
        for seed in range(3):
            x = np.random.default_rng(seed).standard_normal((1, 32)).astype(np.float32)
            expected = direct_litert(model_files.mlp, x)["probs"]
            # LiteRT in the worker is the same engine as the reference: bit for bit.
            assert np.array_equal(alice.infer("m-litert", x)["probs"], expected)
            for name in ("m-ort", "m-ov"):
                assert np.abs(alice.infer(name, x)["probs"] - expected).max() < 1e-5, name
        spec = served["wakeword"].inputs[0]
        audio = np.random.default_rng(9).integers(-128, 127, size=spec.shape, dtype=np.int8).astype(spec.dtype)
        got = alice.infer("m-wake", audio)
        assert all(np.array_equal(got[k], v) for k, v in direct_litert(model_files.wakeword, audio).items())
    status = worker_status(isolated)
    assert status["isolation"] == "process" and status["worker_state"] == "running"
    # The runtimes live in the worker, a child of the daemon's process, not in the daemon.
    worker = psutil.Process(int(str(status["worker_pid"])))
    assert worker.ppid() == os.getpid() and worker.pid != os.getpid()
    assert status["worker_crashes"] == 0


def test_worker_python_names_the_interpreter(tmp_path: Path, endpoint: str, model_files: ModelFiles) -> None:
    with pytest.raises(ConfigError, match="worker_python '/no/such/python3' is not an executable"):
        Daemon(
            ServeConfig(
                "cpu", endpoint, tmp_path / "bad", Policy(isolation="process", worker_python="/no/such/python3")
            )
        )
    python = sys.executable  # a venv's: its realpath would be the bare interpreter, without numpy
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(isolation="process", worker_python=python)) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(model_files.mlp, "m")
            x = np.ones((1, 32), np.float32)
            assert np.array_equal(alice.infer("m", x)["probs"], direct_litert(model_files.mlp, x)["probs"])
        status = worker_status(daemon)
        assert status["worker_python"] == python
        assert psutil.Process(int(str(status["worker_pid"]))).exe() == os.path.realpath(python)


def _submit_faulty(client: TenantClient, tmp_path: Path, name: str, fault: str, **extra: object) -> None:
    path = tmp_path / f"{name}.faulty"
    path.write_bytes(faulty_model(infer=fault, **extra))  # type: ignore[arg-type]
    client.submit_model(path, name, runtime="faulty")


@pytest.mark.parametrize("fault", ["abort", "crash"])
def test_a_crashing_model_is_quarantined_and_others_are_served(
    isolated: Daemon, endpoint: str, model_files: ModelFiles, tmp_path: Path, fault: str
) -> None:
    x = np.random.default_rng(1).standard_normal((1, 32)).astype(np.float32)
    expected = direct_litert(model_files.mlp, x)["probs"]
    with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint, tenant="bob") as bob:
        bob.submit_model(model_files.mlp, "steady")
        bob.infer("steady", x)
        bob.submit_model(model_files.mlp_b, "steady-b")
        bob.infer("steady-b", np.zeros((1, 16), np.float32))  # a second instance count to restore
        _submit_faulty(alice, tmp_path, "bad", fault)
        assert np.array_equal(alice.infer("bad", np.zeros((1, 4), np.float32))["y"], np.zeros((1, 4)))
        for crash in (1, 2):
            with pytest.raises(E.DeviceUnavailable, match="device worker died"):
                alice.infer("bad", X)
            # Bob's calls wait for the new worker, which has his models again: nothing lost.
            assert np.array_equal(bob.infer("steady", x)["probs"], expected)
            wait_for(lambda c=crash: worker_status(isolated)["worker_restarts"] == c, f"restart {crash}")
        with pytest.raises(E.RuntimeFailed, match=r"'bad'.*quarantined.*2 crashes"):
            alice.infer("bad", X)
        assert np.array_equal(bob.infer("steady", x)["probs"], expected)
        assert {m.name for m in bob.list_models()} == {"steady", "steady-b"}
    status = worker_status(isolated)
    assert status["worker_crashes"] == 2 and status["worker_restarts"] == 2
    assert len(status["quarantined"]) == 1  # type: ignore[arg-type]
    signal_name = {"abort": "SIGABRT", "crash": "SIGSEGV"}[fault]
    crashed = [e for e in isolated.events.tail(100) if e["event"] == "worker.crashed"]
    assert len(crashed) == 2 and all(signal_name in e["reason"] for e in crashed)
    assert [e["event"] for e in isolated.events.tail(100) if e["event"].startswith("worker.")].count(
        "worker.quarantined"
    ) == 1
    assert status["quarantined"] == crashed[0]["suspects"]


def test_a_worker_killed_from_outside_is_restarted_with_its_models(
    isolated: Daemon, endpoint: str, model_files: ModelFiles
) -> None:
    x = np.random.default_rng(2).standard_normal((1, 32)).astype(np.float32)
    expected = direct_litert(model_files.mlp, x)["probs"]
    with TenantClient(endpoint, tenant="bob") as bob:
        bob.submit_model(model_files.mlp, "steady")
        assert np.array_equal(bob.infer("steady", x)["probs"], expected)
        first = int(str(worker_status(isolated)["worker_pid"]))
        os.kill(first, signal.SIGKILL)  # the kernel's OOM killer does the same
        wait_for(lambda: worker_status(isolated)["worker_restarts"] == 1, "the restart")
        assert np.array_equal(bob.infer("steady", x)["probs"], expected)
    status = worker_status(isolated)
    assert status["worker_pid"] != first and "SIGKILL" in str(status["worker_last_crash"])
    restarted = [e for e in isolated.events.tail(100) if e["event"] == "worker.restarted"]
    assert len(restarted) == 1 and restarted[0]["reloaded"]


def test_a_hung_call_is_ended_by_the_watchdog(tmp_path: Path, endpoint: str, model_files: ModelFiles) -> None:
    policy = Policy(isolation="process", worker_watchdog_s=2.0, slots=2)
    x = np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)
    expected = direct_litert(model_files.mlp, x)["probs"]
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint, tenant="bob") as bob:
            bob.submit_model(model_files.mlp, "steady")
            _submit_faulty(alice, tmp_path, "stuck", "hang")
            with pytest.raises(E.DeviceUnavailable, match="watchdog"):
                alice.infer("stuck", X)
            assert np.array_equal(bob.infer("steady", x)["probs"], expected)
        status = worker_status(daemon)
        assert status["worker_crashes"] == 1 and "hung" in str(status["worker_last_crash"])


def test_memory_exhaustion_under_the_rlimit_fails_the_request_not_the_worker(
    isolated: Daemon, endpoint: str, model_files: ModelFiles, tmp_path: Path
) -> None:
    """4 GiB asked for under a 3 GiB address-space limit: the allocation fails inside the worker,
    that request gets RUNTIME_ERROR, and the worker (and everyone else) serves on."""
    x = np.random.default_rng(4).standard_normal((1, 32)).astype(np.float32)
    with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint, tenant="bob") as bob:
        bob.submit_model(model_files.mlp, "steady")
        _submit_faulty(alice, tmp_path, "greedy", "hog", hog_bytes=4 * 2**30)
        with pytest.raises(E.RuntimeFailed, match="out of memory"):
            alice.infer("greedy", X)
        assert np.array_equal(bob.infer("steady", x)["probs"], direct_litert(model_files.mlp, x)["probs"])
        assert np.array_equal(alice.infer("greedy", -X)["y"], -2 * X)  # the model itself still runs
    assert worker_status(isolated)["worker_crashes"] == 0

"""The probe host (tenantd/probehost.py): probes forked from a helper that has the runtimes imported
are as isolated as fresh-process probes, measure the same, and survive the helper's death.

Real runtimes and real model files throughout (models/tiny.py's CNN and MLP, pymicro-wakeword's
trained keyword model, their ONNX twins and an OpenVINO IR bundle); the ``faulty`` test runtime
crashes, aborts, hangs and hogs memory inside a forked child on demand."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

import tenantclient.errors as E
from models import tiny, tiny_onnx
from tenantclient import AsyncTenantClient, TenantClient
from tenantd.config import Policy
from tenantd.daemon import Daemon
from tenantd.probe import ProbeResult, probe_model
from tenantd.probehost import ProbeHost
from tenantd.runtimes import available_runtimes
from tenantwire import irbundle
from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import daemon_in_thread, start_daemon_process
from tests.support.faulty_runtime import faulty_model
from tests.support.waiting import until, wait_for

GIB = 2**30
LIMIT = 512 * 2**20
WAIT_S = 60.0


def host_of(daemon: Daemon) -> ProbeHost:
    return daemon.submission.probe_host


def ready_host(daemon: Daemon) -> ProbeHost:
    host = host_of(daemon)
    wait_for(lambda: host.pid is not None, "the probe host to be ready")
    return host


def reaped(pid: int) -> bool:
    """No process ``pid``, not even a zombie: its parent has waited for it."""
    return not psutil.pid_exists(pid)


def dead(pid: int) -> bool:
    """Process ``pid`` has ended (a zombie whose new parent, init here, may not reap it counts)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def forking_daemon(tmp_path: Path, endpoint: str) -> Iterator[Daemon]:
    policy = Policy(profile="ncs2", capacity_bytes=LIMIT, reserve_bytes=0, probe_timeout_s=5.0)
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        ready_host(daemon)
        yield daemon


def probed(daemon: Daemon, model: str) -> dict[str, object]:
    return next(e for e in daemon.events.tail(event="model.probed") if e["model"] == model)


# ------------------------------------------------------------------ the same results as a fresh process


@pytest.fixture(scope="module")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    wakeword = pytest.importorskip("pymicro_wakeword")
    root = tmp_path_factory.mktemp("probehost")
    onnx_cnn = tiny_onnx.cnn(image=32, channels=(8, 16, 32), classes=10, seed=7)
    files = {
        "cnn.tflite": tiny.cnn(image=32, channels=(8, 16, 32), classes=10, seed=7),
        "mlp.tflite": tiny.mlp(32, [64], 10, seed=1),
        "cnn.onnx": onnx_cnn,
    }
    paths = {name: root / name for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    tiny_onnx.save_ir(onnx_cnn, root / "ir" / "cnn.xml")
    paths["cnn.ovir"] = root / "cnn.ovir"
    paths["cnn.ovir"].write_bytes(irbundle.pack_files(root / "ir" / "cnn.xml"))
    paths["okay_nabu.tflite"] = Path(wakeword.__file__).parent / "models" / "okay_nabu.tflite"
    return paths


async def both_ways(host: ProbeHost, runtime: str, path: Path) -> tuple[ProbeResult, ProbeResult]:
    host.start()
    await until(lambda: host.pid is not None, "the probe host to become ready")
    try:
        forked = await host.probe(runtime, path, 1, WAIT_S, "cpu", LIMIT)
        fresh = await probe_model(runtime, path, 1, WAIT_S, "cpu", LIMIT)
    finally:
        await host.close()
    return forked, fresh


@pytest.mark.parametrize(
    ("runtime", "model", "process"),
    [
        ("litert", "cnn.tflite", "forked"),
        ("litert", "mlp.tflite", "forked"),
        ("litert", "okay_nabu.tflite", "forked"),
        ("onnxruntime", "cnn.onnx", "fresh"),  # importing onnxruntime starts a thread: never forked
        ("openvino", "cnn.ovir", "fresh"),
    ],
)
def test_a_probe_measures_what_a_fresh_process_measures(
    real_models: dict[str, Path], runtime: str, model: str, process: str
) -> None:
    host = ProbeHost(available_runtimes())
    forked, fresh = asyncio.run(both_ways(host, runtime, real_models[model]))
    assert forked.ok and fresh.ok, (forked.reason, fresh.reason)
    assert forked.details["probe_process"] == process
    assert (forked.inputs, forked.outputs) == (fresh.inputs, fresh.outputs)
    # Measured here: within 4% (about 130 KiB) for these models, 1.6% for a 2 MB palm detector.
    assert forked.footprint_bytes == pytest.approx(fresh.footprint_bytes, rel=0.1, abs=512 * 1024)
    assert forked.details["runtime_overhead_bytes"] == pytest.approx(fresh.details["runtime_overhead_bytes"], rel=0.25)
    for key in ("load_bytes", "param_bytes", "runtime_version", "threads", "device_bytes"):
        if key == "load_bytes":
            assert forked.details[key] == pytest.approx(fresh.details[key], rel=0.1, abs=512 * 1024)
        else:
            assert forked.details[key] == fresh.details[key], key
    if process == "forked":
        assert host.forked_probes == 1 and "onnxruntime" in host.fresh and "openvino" in host.fresh


def test_the_probe_host_imports_only_runtimes_that_leave_it_single_threaded(tmp_path: Path) -> None:
    async def run() -> ProbeHost:
        host = ProbeHost(available_runtimes())
        host.start()
        await until(lambda: host.pid is not None, "the probe host to become ready")
        assert psutil.Process(host.pid).num_threads() == 1
        assert "litert" in host.forked and "faulty" in host.forked  # neither starts a thread
        await host.close()
        return host

    host = asyncio.run(run())
    assert set(host.fresh) >= {"onnxruntime", "openvino"} & set(available_runtimes())
    assert host.fresh.get("onnxruntime", "starts a thread").endswith("starts a thread")


# ------------------------------------------------------------------ isolation through the daemon


def test_a_forked_probe_gives_the_daemon_what_it_served_before(
    forking_daemon: Daemon, endpoint: str, model_files: ModelFiles
) -> None:
    with TenantClient(endpoint, tenant="alice") as alice:
        info = alice.submit_model(model_files.mlp, "mlp")
        x = np.random.default_rng(0).random((1, 32), np.float32)
        assert np.array_equal(alice.infer("mlp", x)["probs"], direct_litert(model_files.mlp, x)["probs"])
    assert [(s.dtype, s.shape) for s in info.inputs] == [("float32", (1, 32))] and info.footprint_bytes > 0
    assert probed(forking_daemon, "mlp")["probe_process"] == "forked"
    assert host_of(forking_daemon).forked_probes == 1


@pytest.mark.parametrize(
    ("load", "fragment"),
    [("crash", "SIGSEGV"), ("abort", "SIGABRT"), ("hang", "did not finish within 5 s"), ("error", "on purpose")],
)
def test_a_model_that_crashes_its_forked_probe_is_refused_and_the_host_serves_on(
    forking_daemon: Daemon, endpoint: str, model_files: ModelFiles, load: str, fragment: str
) -> None:
    host = host_of(forking_daemon)
    pid = host.pid
    with TenantClient(endpoint, tenant="mallory") as mallory:
        with pytest.raises(E.InvalidModel, match=fragment):
            mallory.submit_model(faulty_model(load=load), "evil", runtime="faulty")
        assert mallory.list_models() == []
    assert host.forked_probes == 1  # it was a child of the host that crashed, not a fresh process
    with TenantClient(endpoint, tenant="bob") as bob:
        bob.submit_model(model_files.mlp_b, "bob_mlp")
        x = np.full((1, 16), 0.5, np.float32)
        assert np.array_equal(bob.infer("bob_mlp", x)["probs"], direct_litert(model_files.mlp_b, x)["probs"])
    assert host.pid == pid and host.forked_probes == 2  # the same host forked the next probe


def test_the_memory_limit_holds_in_a_forked_probe(forking_daemon: Daemon, endpoint: str) -> None:
    host = host_of(forking_daemon)
    with TenantClient(endpoint, tenant="mallory") as mallory:
        with pytest.raises(E.AdmissionDenied, match="ran out of the probe's memory") as refused:
            mallory.submit_model(faulty_model(load="hog", hog_bytes=2 * GIB), "hog", runtime="faulty")
        assert refused.value.details["memory_limit_bytes"] <= LIMIT
        with pytest.raises(E.AdmissionDenied, match=r"tensor 'a' alone needs 1024\.0 MiB"):
            mallory.submit_model(tiny.two_input((1, 2**28)), "big", runtime="litert")
        assert mallory.list_models() == []
        mallory.submit_model(tiny.two_input((1, 8)), "small", runtime="litert")
    assert host.forked_probes == 3
    assert psutil.Process(host.pid).memory_info().rss < GIB  # the host itself never grew


# ------------------------------------------------------------------ the host dying, concurrency, shutdown


def test_killing_the_idle_host_costs_the_next_submit_nothing_but_a_fresh_process(
    forking_daemon: Daemon, endpoint: str, model_files: ModelFiles
) -> None:
    host = host_of(forking_daemon)
    first = host.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: reaped(first), "the daemon to reap the killed host")
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.submit_model(model_files.mlp, "one")  # forked by a new host, or fresh while it starts
        wait_for(lambda: host.pid is not None, "a new probe host")
        alice.submit_model(model_files.mlp_b, "two")
    assert host.pid != first and probed(forking_daemon, "two")["probe_process"] == "forked"
    assert host.starts == 2


def test_killing_the_host_mid_probe_answers_that_probe_clearly_and_the_next_submit_works(
    forking_daemon: Daemon, endpoint: str, model_files: ModelFiles
) -> None:
    host = host_of(forking_daemon)
    first = host.pid
    assert first is not None
    outcome: list[BaseException] = []

    def submit() -> None:
        with TenantClient(endpoint, tenant="mallory") as mallory:
            try:
                mallory.submit_model(faulty_model(load="hang"), "stuck", runtime="faulty")
            except E.TenantError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=submit)
    thread.start()
    wait_for(lambda: psutil.Process(first).children(), "the probe child to be forked")
    (child,) = psutil.Process(first).children()
    os.kill(first, signal.SIGKILL)
    thread.join(WAIT_S)
    assert len(outcome) == 1 and isinstance(outcome[0], E.Unavailable), outcome
    assert "probe host stopped (it exited, killed by SIGKILL)" in outcome[0].message, outcome[0].message
    assert "submit it again" in outcome[0].message
    wait_for(lambda: dead(child.pid), "the orphaned probe child to die with its host")
    with TenantClient(endpoint, tenant="mallory") as mallory:
        mallory.submit_model(model_files.mlp, "ok")
        assert [m.name for m in mallory.list_models()] == ["ok"]
    refused = forking_daemon.events.tail(event="model.refused")
    assert refused[-1]["model"] == "stuck" and refused[-1]["code"] == "UNAVAILABLE"


def test_two_tenants_submit_at_once_through_the_host(
    forking_daemon: Daemon, endpoint: str, model_files: ModelFiles
) -> None:
    async def both() -> None:
        async with (
            AsyncTenantClient(endpoint, tenant="alice") as alice,
            AsyncTenantClient(endpoint, tenant="bob") as bob,
        ):
            a, b = await asyncio.gather(
                alice.submit_model(model_files.mlp, "a_mlp"), bob.submit_model(model_files.wakeword, "b_word")
            )
            assert a.owner == "alice" and b.owner == "bob"

    asyncio.run(both())
    assert {probed(forking_daemon, m)["probe_process"] for m in ("a_mlp", "b_word")} == {"forked"}
    assert host_of(forking_daemon).forked_probes == 2


def test_stopping_the_daemon_reaps_the_host(tmp_path: Path, endpoint: str) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy()) as daemon:
        pid = ready_host(daemon).pid
        assert pid is not None
    assert reaped(pid)


def test_a_daemon_killed_outright_leaves_no_probe_host_behind(tmp_path: Path) -> None:
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock")
    try:
        me = psutil.Process(daemon.proc.pid)
        wait_for(lambda: any("tenantd.probehost" in " ".join(c.cmdline()) for c in me.children()), "the probe host")
        (host,) = [c for c in me.children() if "tenantd.probehost" in " ".join(c.cmdline())]
    finally:
        daemon.stop(signal.SIGKILL)
    # Its control socket closed with the daemon, so the host exits by itself.
    _, alive = psutil.wait_procs([host], timeout=WAIT_S)
    assert not alive

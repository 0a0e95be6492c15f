"""Spare probe processes (tenantd/probespare.py): ONNX Runtime and OpenVINO probes run in a fresh
process started ahead of time, which measures what a probe started for the job measures, ends after
one job, is replaced, and dies with the daemon.

Real runtimes and real model files (models/tiny_onnx.py's CNN and MLP as ONNX and as an OpenVINO IR
bundle); the ``faulty`` test runtime (registered for subprocesses by tests/conftest.py) crashes,
aborts, hangs and hogs memory inside a spare on demand."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest

from models import tiny_onnx
from tenantclient import AsyncTenantClient, TenantClient
from tenantd import probespare
from tenantd.config import Policy
from tenantd.daemon import Daemon
from tenantd.probe import probe_model
from tenantd.probespare import SpareProbes
from tenantwire import irbundle
from tests.support.daemon import daemon_in_thread, start_daemon_process
from tests.support.faulty_runtime import faulty_model
from tests.support.waiting import until, wait_for

LIMIT = 512 * 2**20
WAIT_S = 60.0


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("spares")
    cnn = tiny_onnx.cnn(image=32, channels=(8, 16, 32), classes=10, seed=7)
    files = {"cnn.onnx": cnn, "mlp.onnx": tiny_onnx.mlp(32, [64], 10, seed=1)}
    paths = {name: root / name for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    tiny_onnx.save_ir(cnn, root / "ir" / "cnn.xml")
    paths["cnn.ovir"] = root / "cnn.ovir"
    paths["cnn.ovir"].write_bytes(irbundle.pack_files(root / "ir" / "cnn.xml"))
    return paths


@asynccontextmanager
async def ready_spares(*runtimes: str, count: int = 1) -> AsyncIterator[SpareProbes]:
    spares = SpareProbes(list(runtimes), "cpu", lambda: count)
    spares.start()
    try:
        for runtime in runtimes:
            await until(lambda r=runtime: spares.ready(r) == count, f"{count} ready {runtime} spare(s)")  # type: ignore[misc]
        yield spares
    finally:
        await spares.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


# ------------------------------------------------------------------ the same results as a fresh process


@pytest.mark.parametrize(
    ("runtime", "model"), [("onnxruntime", "cnn.onnx"), ("onnxruntime", "mlp.onnx"), ("openvino", "cnn.ovir")]
)
def test_a_spare_measures_what_a_fresh_process_measures_and_is_replaced(
    onnx_models: dict[str, Path], runtime: str, model: str
) -> None:
    async def test() -> None:
        async with ready_spares(runtime) as spares:
            (taken,) = spares.pids(runtime)
            spare = await spares.probe(runtime, onnx_models[model], 1, WAIT_S, "cpu", LIMIT)
            fresh = await probe_model(runtime, onnx_models[model], 1, WAIT_S, "cpu", LIMIT)
            assert spare.ok and fresh.ok, (spare.reason, fresh.reason)
            assert spare.details["probe_process"] == "spare" and spares.served == 1
            assert (spare.inputs, spare.outputs) == (fresh.inputs, fresh.outputs)
            # Measured here (median of 5): within 0.3%, 80 KiB at most (ONNX Runtime), 668 KiB at most (OpenVINO).
            assert spare.footprint_bytes == pytest.approx(fresh.footprint_bytes, rel=0.1, abs=512 * 1024)
            assert spare.details["load_bytes"] == pytest.approx(fresh.details["load_bytes"], rel=0.1, abs=512 * 1024)
            for key in ("param_bytes", "runtime_version", "threads", "device_bytes"):
                assert spare.details[key] == fresh.details[key], key
            # The import was measured in the spare before the job, so it is reported, not charged.
            assert spare.details["runtime_overhead_bytes"] > 10 * 2**20
            assert not psutil.pid_exists(taken)  # one job, then it ended (and was reaped)
            await until(lambda: spares.ready(runtime) == 1, "the replacement spare")
            assert spares.pids(runtime) != [taken] and spares.started == 2

    run(test)


# ------------------------------------------------------------------ isolation: a bad model ends only its spare


@pytest.mark.parametrize(
    ("load", "fragment"),
    [("crash", "SIGSEGV"), ("abort", "SIGABRT"), ("hang", "did not finish within 5 s"), ("error", "on purpose")],
)
def test_a_model_that_crashes_its_spare_ends_only_that_spare(
    tmp_path: Path, onnx_models: dict[str, Path], load: str, fragment: str
) -> None:
    evil = tmp_path / "evil.faulty"
    evil.write_bytes(faulty_model(load=load))

    async def test() -> None:
        async with ready_spares("faulty", "onnxruntime") as spares:
            (bystander,) = spares.pids("onnxruntime")
            (victim,) = spares.pids("faulty")
            result = await spares.probe("faulty", evil, 1, 5.0, "cpu", LIMIT)
            assert not result.ok and fragment in result.reason, result.reason
            await until(lambda: not psutil.pid_exists(victim), "the killed spare to be reaped")
            assert spares.pids("onnxruntime") == [bystander] and psutil.Process(bystander).is_running()
            await until(lambda: spares.ready("faulty") == 1, "a new faulty spare")
            good = await spares.probe("onnxruntime", onnx_models["mlp.onnx"], 1, WAIT_S, "cpu", LIMIT)
            assert good.ok and good.details["probe_process"] == "spare"

    run(test)


def test_the_memory_limit_holds_in_a_spare(tmp_path: Path) -> None:
    hog = tmp_path / "hog.faulty"
    hog.write_bytes(faulty_model(load="hog", hog_bytes=2 * 2**30))

    async def test() -> None:
        async with ready_spares("faulty") as spares:
            result = await spares.probe("faulty", hog, 1, WAIT_S, "cpu", LIMIT)
            assert not result.ok and result.over_memory_limit, result.reason
            assert "ran out of the probe's memory" in result.reason and spares.served == 1

    run(test)


# ------------------------------------------------------------------ races: two at once, a spare dying idle


def test_two_probes_at_once_one_takes_the_spare_the_other_the_next(onnx_models: dict[str, Path]) -> None:
    async def test() -> None:
        async with ready_spares("onnxruntime") as spares:
            a, b = await asyncio.gather(
                *(
                    spares.probe("onnxruntime", onnx_models[m], 1, WAIT_S, "cpu", LIMIT)
                    for m in ("cnn.onnx", "mlp.onnx")
                )
            )
            assert a.ok and b.ok, (a.reason, b.reason)
            # The second waited for the spare started for it rather than starting a fresh process.
            assert [a.details["probe_process"], b.details["probe_process"]] == ["spare", "spare"]
            assert spares.served == 2
            await until(lambda: spares.ready("onnxruntime") == 1, "one spare again")
            assert len(spares.pids("onnxruntime")) == 1  # never more than the policy asks for, once settled

    run(test)


def test_a_spare_killed_while_idle_is_replaced(onnx_models: dict[str, Path]) -> None:
    async def test() -> None:
        async with ready_spares("onnxruntime") as spares:
            (first,) = spares.pids("onnxruntime")
            os.kill(first, signal.SIGKILL)
            await until(lambda: not psutil.pid_exists(first), "the killed spare to be reaped")
            await until(lambda: first not in spares.pids("onnxruntime"), "the daemon to see it ended")
            await until(lambda: spares.ready("onnxruntime") == 1, "its replacement")
            assert spares.started == 2
            result = await spares.probe("onnxruntime", onnx_models["cnn.onnx"], 1, WAIT_S, "cpu", LIMIT)
            assert result.ok and result.details["probe_process"] == "spare"

    run(test)


def test_a_runtime_the_device_cannot_run_gets_no_spares(onnx_models: dict[str, Path]) -> None:
    async def test() -> None:
        spares = SpareProbes(["onnxruntime"], "ncs2:0", lambda: 1)  # ONNX Runtime runs on cpu and cuda only
        spares.start()
        try:
            await until(lambda: "onnxruntime" in spares.unusable, "the spare to say it cannot serve")
            assert "does not run on device 'ncs2:0'" in spares.unusable["onnxruntime"]
            result = await spares.probe("onnxruntime", onnx_models["mlp.onnx"], 1, WAIT_S, "cpu", LIMIT)
            assert result.ok and result.details["probe_process"] == "fresh" and spares.started == 1
        finally:
            await spares.close()

    run(test)


def test_spares_are_off_with_the_probe_host(monkeypatch: pytest.MonkeyPatch, onnx_models: dict[str, Path]) -> None:
    monkeypatch.setattr(probespare, "PREPARED_PROBES", False)  # as TENANTD_PROBE_HOST=0 sets it at import

    async def test() -> None:
        spares = SpareProbes(["onnxruntime"], "cpu", lambda: 1)
        spares.start()
        result = await spares.probe("onnxruntime", onnx_models["mlp.onnx"], 1, WAIT_S, "cpu", LIMIT)
        await spares.close()
        assert result.ok and result.details["probe_process"] == "fresh" and spares.started == 0

    run(test)


# ------------------------------------------------------------------ through the daemon


def spares_of(daemon: Daemon) -> SpareProbes:
    return daemon.submission.spare_probes


def probed(daemon: Daemon, model: str) -> dict[str, object]:
    return next(e for e in daemon.events.tail(event="model.probed") if e["model"] == model)


def test_the_daemon_probes_onnx_and_ir_in_spares_and_reaps_them_when_it_stops(
    tmp_path: Path, endpoint: str, onnx_models: dict[str, Path]
) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy()) as daemon:
        spares = spares_of(daemon)
        assert spares.started == 0  # none until a runtime's first probe asks for one

        async def both() -> None:
            async with (
                AsyncTenantClient(endpoint, tenant="alice") as alice,
                AsyncTenantClient(endpoint, tenant="bob") as bob,
            ):
                await asyncio.gather(
                    alice.submit_model(onnx_models["cnn.onnx"].read_bytes(), "a_cnn", runtime="onnxruntime"),
                    bob.submit_model(onnx_models["mlp.onnx"].read_bytes(), "b_mlp", runtime="onnxruntime"),
                )

        asyncio.run(both())
        with TenantClient(endpoint, tenant="carol") as carol:
            info = carol.submit_model(onnx_models["cnn.ovir"].read_bytes(), "c_ir", runtime="openvino")
        assert info.footprint_bytes > 0
        assert {probed(daemon, m)["probe_process"] for m in ("a_cnn", "b_mlp", "c_ir")} == {"spare"}
        assert spares.served == 3
        wait_for(lambda: spares.ready("onnxruntime") == 1 and spares.ready("openvino") == 1, "spares again")
        idle = spares.pids("onnxruntime") + spares.pids("openvino")
    assert not any(psutil.pid_exists(pid) for pid in idle)


def test_policy_probe_spares_0_probes_fresh(tmp_path: Path, endpoint: str, onnx_models: dict[str, Path]) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(probe_spares=0)) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(onnx_models["mlp.onnx"].read_bytes(), "mlp", runtime="onnxruntime")
        assert probed(daemon, "mlp")["probe_process"] == "fresh" and spares_of(daemon).started == 0


def test_a_daemon_killed_outright_leaves_no_spare_behind(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    pytest.importorskip("onnxruntime")
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock")
    try:
        me = psutil.Process(daemon.proc.pid)

        def spares() -> list[psutil.Process]:
            return [c for c in me.children() if "tenantd.probespare" in " ".join(c.cmdline())]

        with TenantClient(daemon.endpoint, tenant="alice") as alice:  # its first probe starts the spares
            alice.submit_model(onnx_models["mlp.onnx"].read_bytes(), "mlp", runtime="onnxruntime")
        wait_for(spares, "a spare probe process")
        found = spares()
    finally:
        daemon.stop(signal.SIGKILL)
    _, alive = psutil.wait_procs(found, timeout=WAIT_S)  # PR_SET_PDEATHSIG (and their stdin closing)
    assert not alive


def test_tenantd_probe_host_0_turns_spares_off_too(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    endpoint = f"ipc://{tmp_path}/d.sock"
    daemon = start_daemon_process(tmp_path / "state", endpoint, env={"TENANTD_PROBE_HOST": "0"})
    try:
        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(onnx_models["mlp.onnx"].read_bytes(), "mlp", runtime="onnxruntime")
            (probed_event,) = alice.events(limit=5, event="model.probed")
        assert probed_event["probe_process"] == "fresh"
        children = [" ".join(c.cmdline()) for c in psutil.Process(daemon.proc.pid).children()]
        assert not any("tenantd.probespare" in c or "tenantd.probehost" in c for c in children), children
    finally:
        daemon.stop()

"""Integration: a busy model runs on every slot through several instances of itself.

Real runtimes on real model files (models/tiny.py's CNN, and its ONNX twin run by ONNX Runtime and
OpenVINO), real threads, a real daemon on a real socket, and the real memory ledger. What is
checked: outputs under concurrency equal direct invocation of the same file; each instance past
the first is charged what its creation measured; an instance the budget has no room for is not
created; an EdgeTPU or NCS2 profile keeps one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import tiny, tiny_onnx
from tenantclient import TenantClient
from tenantclient.cli import _print_status as print_status
from tenantd.admission import Admission
from tenantd.config import Policy, TenantPolicy
from tenantd.daemon import Daemon
from tenantd.devices import get_profile
from tenantd.events import EventLog, read_events
from tenantd.executor import Executor
from tenantd.residency import Residency
from tenantd.runtimes import get_runtime_class
from tests.conftest import direct_litert
from tests.support.daemon import daemon_in_thread

CNN = {"image": 32, "channels": (8, 16, 32), "classes": 10, "seed": 7}
TOLERANCE = 1e-5  # other engines sum in other orders (see test_runtimes_cpu.py)
GiB = 1024**3


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("instances")
    paths = {"tflite": root / "cnn.tflite", "onnx": root / "cnn.onnx"}
    paths["tflite"].write_bytes(tiny.cnn(**CNN))  # type: ignore[arg-type]
    paths["onnx"].write_bytes(tiny_onnx.cnn(**CNN))  # type: ignore[arg-type]
    return paths


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)


def on_loop(daemon: Daemon, coroutine: Any) -> Any:
    assert daemon.loop is not None
    return asyncio.run_coroutine_threadsafe(coroutine, daemon.loop).result(60)


@pytest.mark.parametrize(("runtime", "fmt"), [("litert", "tflite"), ("onnxruntime", "onnx"), ("openvino", "onnx")])
def test_instances_of_one_model_agree_with_direct_invocation_under_concurrency(
    files: dict[str, Path], runtime: str, fmt: str
) -> None:
    """Eight threads share a model of four instances (at most four calls at once, as the
    scheduler allows); every output equals a fresh single LiteRT interpreter's on that input."""
    if runtime != "litert":
        pytest.importorskip(runtime)
    model = get_runtime_class(runtime)(device="cpu", num_threads=1, slots=4).load(files[fmt])
    assert model.can_add_instances
    for _ in range(3):
        model.add_instance()
    assert model.instances == 4
    seeds = range(48)
    expected = {seed: direct_litert(files["tflite"], image(seed))["probs"] for seed in seeds}
    calls = threading.BoundedSemaphore(model.instances)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def caller(first: int) -> None:
        start.wait()
        try:
            for seed in seeds[first::8]:
                with calls:
                    results[seed] = model.infer([image(seed)])[0]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(results) == list(seeds)
    for seed in seeds:
        if runtime == "litert":  # the same engine as the reference: bit for bit
            assert np.array_equal(results[seed], expected[seed]), seed
        else:
            assert np.abs(results[seed] - expected[seed]).max() < TOLERANCE, seed
    model.unload()


def test_litert_instances_are_separate_interpreters_and_more_calls_than_instances_fail_clearly(
    files: dict[str, Path],
) -> None:
    model = get_runtime_class("litert")(device="cpu", num_threads=1).load(files["tflite"])
    model.add_instance()
    taken = [model._idle.get_nowait(), model._idle.get_nowait()]  # type: ignore[attr-defined]
    assert taken[0].interpreter is not taken[1].interpreter
    with pytest.raises(Exception, match="more concurrent calls than the model's 2 instance"):
        model.infer([image(0)])
    for instance in taken:
        model._idle.put(instance)  # type: ignore[attr-defined]
    assert np.array_equal(model.infer([image(1)])[0], direct_litert(files["tflite"], image(1))["probs"])


@pytest.fixture
def two_slot_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    endpoint = f"ipc://{tmp_path}/tenantd.sock"
    policy = Policy(slots=2, threads_per_model=1, tenants={"solo": TenantPolicy(instances=1)})
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        yield daemon, endpoint


def test_daemon_runs_a_busy_model_on_both_slots_and_charges_its_instance(
    two_slot_daemon: tuple[Daemon, str], files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, endpoint = two_slot_daemon
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.submit_model(files["tflite"], "cnn")
    on_loop(daemon, daemon.residency.settled())
    ledger = daemon.admission.memory.ledger
    with TenantClient(endpoint) as operator:
        status = operator.status()
        (event,) = operator.events(event="model.instances")
    assert status["residency"]["instances"] == {"cnn": 2}
    print_status(status)  # what `tenantctl status` prints
    printed = capsys.readouterr().out
    assert re.search(r"^instances\s+cnn=2$", printed, re.MULTILINE), printed
    assert re.search(r"^  instances\s+cnn \d+\.\d MiB \(charged", printed, re.MULTILINE), printed
    assert event["instances"] == 2 and event["wanted"] == 2 and event["limited_by"] is None
    # The extra instance is charged exactly what its creation measured, on top of the footprint.
    assert ledger.instances == {"cnn": event["instance_bytes"]}
    assert len(event["instance_bytes"]) == 1
    assert status["memory"]["instance_bytes"] == {"cnn": sum(event["instance_bytes"])}
    assert status["memory"]["used_bytes"] == (
        sum(ledger.runtime_overhead.values()) + ledger.models["cnn"] + sum(event["instance_bytes"])
    )

    # Eight clients with one request in flight each: every reply equals direct invocation, and
    # the one model ran on both slots at once (counted inside its infer).
    model = daemon.executor.resident["cnn"].model
    assert model is not None
    infer, calls = model.infer, {"now": 0, "most": 0, "seen": 0}
    count = threading.Lock()
    # The first two calls wait for each other (the tiny model is too quick to overlap by chance):
    # with one instance the second could never start, the wait would time out, and most == 1.
    meet = threading.Barrier(2)

    def counted(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with count:
            calls["now"] += 1
            calls["most"] = max(calls["most"], calls["now"])
            calls["seen"] += 1
            first_two = calls["seen"] <= 2
        try:
            if first_two:
                with contextlib.suppress(threading.BrokenBarrierError):
                    meet.wait(timeout=30)
            return infer(inputs)
        finally:
            with count:
                calls["now"] -= 1

    model.infer = counted  # type: ignore[method-assign]
    slots_seen: set[int] = set()
    mismatches: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(first: int) -> None:
        try:
            with TenantClient(endpoint, tenant="alice") as c:
                for seed in range(first, 64, 8):
                    result = c.infer_detailed("cnn", image(seed))
                    ok = np.array_equal(result.outputs["probs"], direct_litert(files["tflite"], image(seed))["probs"])
                    with lock:
                        slots_seen.add(result.timings["slot"])
                        if not ok:
                            mismatches.append(seed)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and mismatches == []
    assert slots_seen == {0, 1}
    assert calls["most"] == 2  # never more than its instances, and both were used
    assert daemon.executor.switches == 0  # two instances of one model: no slot ever switched

    # Removing the model releases its instances' charge with it.
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.remove_model("cnn")
    assert ledger.instances == {}


def test_a_tenant_policy_of_one_instance_keeps_one(two_slot_daemon: tuple[Daemon, str], files: dict[str, Path]) -> None:
    daemon, endpoint = two_slot_daemon
    with TenantClient(endpoint, tenant="solo") as solo:
        solo.submit_model(files["tflite"], "cnn")
    on_loop(daemon, daemon.residency.settled())
    with TenantClient(endpoint) as operator:
        assert operator.status()["residency"]["instances"] == {"cnn": 1}
        assert operator.events(event="model.instances") == []
    assert daemon.admission.memory.ledger.instances == {}


class FixedHost:
    """A host whose DRAM use stays put: the budget is capacity minus reserve, whatever the test
    process does meanwhile."""

    def __call__(self) -> tuple[int, int]:
        return 64 * GiB, 64 * GiB


async def _grow(tmp_path: Path, capacity: int, profile: str = "cpu") -> tuple[Residency, Admission, Any]:
    admission = Admission(get_profile(profile), capacity_bytes=capacity, reserve_bytes=0, memory_reader=FixedHost())
    executor = Executor("cpu", slots=2, threads_per_model=1)
    events = EventLog(tmp_path)
    residency = Residency(executor, admission, get_profile(profile), False, events, lambda: Policy(slots=2))
    path = tmp_path / "cnn.tflite"
    path.write_bytes(tiny.cnn(**CNN))  # type: ignore[arg-type]
    footprint = 8 * 2**20
    assert admission.decide("cnn", footprint, "litert", 0).admitted
    resident, _ = await executor.load("cnn", "litert", path)
    admission.loaded("cnn", 0, "litert")
    residency.install(resident, "alice")
    await residency.settled()
    events.close()
    return residency, admission, resident


def test_an_instance_is_not_created_when_the_budget_has_no_room(tmp_path: Path) -> None:
    # Room for the model's 8 MiB footprint, and 4 MiB more: the instance is estimated at the
    # footprint (nothing measured yet), so it is not created.
    residency, admission, resident = asyncio.run(_grow(tmp_path, capacity=12 * 2**20))
    assert resident.instances == 1
    assert admission.ledger.instances.get("cnn", []) == []
    assert admission.ledger.pending_instance_bytes == 0
    assert admission.budget().used_bytes == 8 * 2**20
    (event,) = read_events(tmp_path / EventLog.FILENAME, 10, "model.instances")
    assert event["instances"] == 1 and event["wanted"] == 2
    assert event["limited_by"].startswith("budget:")
    assert residency.status()["instances"] == {"cnn": 1}


def test_an_instance_is_created_and_charged_when_the_budget_has_room(tmp_path: Path) -> None:
    residency, admission, resident = asyncio.run(_grow(tmp_path, capacity=1 * GiB))
    assert resident.instances == 2
    assert residency.status()["instances"] == {"cnn": 2}
    (charged,) = admission.ledger.instances["cnn"]
    assert admission.budget().used_bytes == 8 * 2**20 + charged
    (event,) = read_events(tmp_path / EventLog.FILENAME, 10, "model.instances")
    assert event["instance_bytes"] == [charged]


@pytest.mark.parametrize("profile", ["ncs2", "edgetpu"])
def test_a_single_model_device_keeps_one_instance(tmp_path: Path, profile: str) -> None:
    admission = Admission(get_profile(profile), capacity_bytes=1 * GiB, memory_reader=FixedHost())
    residency = Residency(Executor("cpu", 2, 1), admission, get_profile(profile), False, EventLog(tmp_path))
    assert residency.wanted_instances("anyone") == 1


def test_wanted_instances_follow_the_policy_and_the_slots(tmp_path: Path) -> None:
    policy = Policy(slots=4, instances=3, tenants={"a": TenantPolicy(instances="auto"), "b": TenantPolicy(instances=9)})
    admission = Admission(get_profile("cpu"), memory_reader=FixedHost())
    residency = Residency(
        Executor("cpu", 4, 1), admission, get_profile("cpu"), False, EventLog(tmp_path), lambda: policy
    )
    assert residency.wanted_instances("someone") == 3  # the device's setting
    assert residency.wanted_instances("a") == 4  # auto: one per slot
    assert residency.wanted_instances("b") == 4  # never more than the slots


def test_a_restarted_daemon_gives_restored_models_their_instances_again(tmp_path: Path, files: dict[str, Path]) -> None:
    endpoint = f"ipc://{tmp_path}/tenantd.sock"
    policy = Policy(slots=2, threads_per_model=1)
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(files["tflite"], "cnn")
        on_loop(daemon, daemon.residency.settled())
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        on_loop(daemon, daemon.residency.settled())
        assert daemon.residency.status()["instances"] == {"cnn": 2}
        (charged,) = daemon.admission.memory.ledger.instances["cnn"]
        with TenantClient(endpoint, tenant="alice") as alice:
            assert np.array_equal(
                alice.infer("cnn", image(5))["probs"], direct_litert(files["tflite"], image(5))["probs"]
            )
        with TenantClient(endpoint) as operator:
            assert operator.status()["memory"]["instance_bytes"] == {"cnn": charged}


def test_a_new_policy_with_more_instances_gives_loaded_models_them_at_once(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    endpoint = f"ipc://{tmp_path}/tenantd.sock"
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(slots=2, threads_per_model=1, instances=1)) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(files["tflite"], "cnn")
        on_loop(daemon, daemon.residency.settled())
        assert daemon.residency.status()["instances"] == {"cnn": 1}
        with TenantClient(endpoint) as operator:
            result = operator.policy_set("slots = 2\nthreads_per_model = 1\ninstances = 2\n")
            assert result["changed"] == ["instances"]
            on_loop(daemon, daemon.residency.settled())
            assert operator.status()["residency"]["instances"] == {"cnn": 2}
            (event,) = operator.events(event="model.instances")
        assert daemon.admission.memory.ledger.instances == {"cnn": event["instance_bytes"]}

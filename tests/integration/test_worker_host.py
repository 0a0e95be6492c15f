"""Integration: the worker's supervisor (:class:`tenantd.worker.WorkerHost`) on its own, with a real
worker process and real runtimes, no daemon: a model comes back after a crash with as many instances
as it had, and a model whose *load* crashes the worker (what a device-only format the probe cannot
try would do) is quarantined after two crashes while another model keeps being served."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tenantd.errors import ModelQuarantined, WorkerCrashed
from tenantd.worker import WorkerHost, WorkerRuntime
from tests.conftest import ModelFiles, direct_litert
from tests.support.faulty_runtime import faulty_model
from tests.support.waiting import wait_for

WAIT_S = 60.0


@pytest.fixture
def host() -> Iterator[WorkerHost]:
    events: list[tuple[object, dict[str, object]]] = []
    h = WorkerHost("cpu", watchdog_s=30.0, emit=lambda event, **f: events.append((event, f)))
    h.events = events  # type: ignore[attr-defined]
    try:
        yield h
    finally:
        h.close()


def test_a_restarted_worker_has_every_model_with_its_instances(host: WorkerHost, model_files: ModelFiles) -> None:
    model = WorkerRuntime(host, "litert", "cpu", num_threads=1, slots=2).load(model_files.mlp)
    model.add_instance()
    assert model.instances == 2
    x = np.ones((1, 32), np.float32)
    expected = direct_litert(model_files.mlp, x)["probs"]
    first = host.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: host.restarts == 1, "the restart")
    assert host.pid != first
    assert list(host.call({"op": "hello"}, None)["models"].values()) == [2]  # asked of the new worker
    assert np.array_equal(model.infer([x])[0], expected)


def test_a_model_whose_load_crashes_the_worker_is_quarantined(
    host: WorkerHost, model_files: ModelFiles, tmp_path: Path
) -> None:
    steady = WorkerRuntime(host, "litert", "cpu").load(model_files.mlp)
    bad = tmp_path / "bad.faulty"
    bad.write_bytes(faulty_model(load="crash"))
    faulty = WorkerRuntime(host, "faulty", "cpu")
    x = np.ones((1, 32), np.float32)
    for crash in (1, 2):
        with pytest.raises(WorkerCrashed, match="SIGSEGV"):
            faulty.load(bad)
        wait_for(lambda c=crash: host.restarts == c, f"restart {crash}")  # type: ignore[misc]
        assert np.array_equal(steady.infer([x])[0], direct_litert(model_files.mlp, x)["probs"])
    with pytest.raises(ModelQuarantined, match="2 crashes"):
        faulty.load(bad)
    assert host.status()["quarantined"] == ["bad.faulty"]
    kinds = [str(event) for event, _ in host.events]  # type: ignore[attr-defined]
    assert kinds.count("worker.crashed") == 2 and kinds.count("worker.quarantined") == 1


def test_calls_beyond_a_models_instances_wait_in_the_worker(host: WorkerHost, model_files: ModelFiles) -> None:
    """Three threads calling a one-instance model at once: each call waits its turn in the worker
    (none is refused), and every answer is its own input's, through each thread's own arenas."""
    model = WorkerRuntime(host, "litert", "cpu", num_threads=1, slots=3).load(model_files.mlp)
    inputs = [np.full((1, 32), v, np.float32) for v in (0.5, 1.0, 2.0)]
    expected = [direct_litert(model_files.mlp, x)["probs"] for x in inputs]
    failures: list[BaseException] = []

    def calls(i: int) -> None:
        try:
            for _ in range(200):
                assert np.array_equal(model.infer([inputs[i]])[0], expected[i])
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    threads = [threading.Thread(target=calls, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []

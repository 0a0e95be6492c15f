"""Integration: ``--timing twin`` holds the emulated device for the twin's modelled time (service,
plus the switch-in when the model changes) while the outputs are still computed on this CPU, and
the daemon agrees with the twin simulator on the same workload.

Timing checks are one-sided where the machine decides: a slot is never released before the
modelled time (the daemon waits for it on a monotonic clock, so this cannot flake), and the upper
bound is loose (seconds), since a loaded 2-core host may be slow to wake a thread."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.twinsim import Request, simulate_fcfs, summarise
from models import tiny
from tenantclient import AsyncTenantClient, TenantClient
from tenantd.config import Policy
from tenantd.devices.twin import get_twin
from tests.conftest import direct_litert
from tests.support.daemon import daemon_in_thread

X = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)
SLACK_MS = 2000.0  # per check: generous, a loaded host may be slow to schedule the slot thread
# Served under names the twin knows, so it takes them for these models (published EdgeTPU times).
NAMES = ("mobilenet_v2", "ssd_mobilenet_v2")


@pytest.fixture(scope="module")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("twin-models")
    paths = {}
    for i, name in enumerate(NAMES):
        path = root / f"{name}.tflite"
        path.write_bytes(tiny.sized_mlp(64 * 1024, seed=40 + i))
        paths[name] = path
    return paths


def _twin_plan(sequence: list[str]) -> list[float]:
    """The simulator's hold per request (service + switch) for ``sequence`` served in order."""
    t = get_twin("edgetpu")
    served = simulate_fcfs(
        [Request(m, 0.0) for m in sequence],
        lambda m: t.service(t.model(m)).ms,
        lambda m, prev: t.switch_ms(t.model(m), prev),
    )
    return [s.service_ms + s.switch_ms for s in served]


def test_twin_timing_holds_the_device_for_the_modelled_time(
    tmp_path: Path, endpoint: str, small_models: dict[str, Path]
) -> None:
    sequence = ["mobilenet_v2", "mobilenet_v2", "ssd_mobilenet_v2", "ssd_mobilenet_v2", "mobilenet_v2"]
    expected = _twin_plan(sequence)
    assert [round(x, 2) for x in expected] == [4.91 + 10.43, 4.91, 19.23 + 24.63, 19.23, 4.91 + 10.43]
    policy = Policy(profile="edgetpu")
    with daemon_in_thread(tmp_path / "state", endpoint, policy, timing="twin") as daemon:
        with TenantClient(endpoint, tenant="a") as a:
            for name, path in small_models.items():
                a.submit_model(path, name)
            results, walls = [], []
            for name in sequence:
                t0 = time.perf_counter()
                result = a.infer_detailed(name, X)
                walls.append((time.perf_counter() - t0) * 1e3)
                # Real outputs: computed on this CPU by the real runtime.
                assert np.array_equal(result.outputs["probs"], direct_litert(small_models[name], X)["probs"])
                results.append(result.timings)
            status = a.status()
        switch_events = daemon.events.tail(limit=100, event="switch")
    for timings, want, wall in zip(results, expected, walls, strict=True):
        assert timings["twin_ms"] == pytest.approx(want, abs=1e-3)
        assert timings["twin_source"] == "published"
        assert timings["device_ms"] >= want  # never released early
        assert timings["device_ms"] < want + SLACK_MS
        assert wall >= want  # the client waited at least the modelled device time
        # The CPU's own compute for this tiny model is far below the modelled device's.
        assert timings["compute_ms"] < timings["twin_ms"] or timings["twin_cpu_slower"]
    residency = status["residency"]
    assert residency["timing"] == "twin edgetpu usb3"
    assert residency["twin_cpu_slower"] == sum(t["twin_cpu_slower"] for t in results)
    # Switch events state the device's modelled switch, not this host's time: the two changes of
    # model. (Models stay loaded under the cache profile; the cold start's parameter streaming is
    # in the first request's twin_ms above, and is no switch between models.)
    assert sorted(e["overhead_ms"] for e in switch_events) == pytest.approx([10.43, 24.63])


def test_daemon_and_simulator_agree_on_a_burst(tmp_path: Path, endpoint: str, small_models: dict[str, Path]) -> None:
    """One tenant sends a burst at once; its queue is first come first served on the one slot, so
    the daemon serves it in the simulator's order: the same holds, switches and switch share, and
    the whole burst takes at least the simulated device time."""
    sequence = ["mobilenet_v2", "ssd_mobilenet_v2", "ssd_mobilenet_v2", "mobilenet_v2"] * 3
    t = get_twin("edgetpu")
    served = simulate_fcfs(
        [Request(m, 0.0) for m in sequence],
        lambda m: t.service(t.model(m)).ms,
        lambda m, prev: t.switch_ms(t.model(m), prev),
    )
    predicted = summarise(served, horizon_s=served[-1].end_s)

    async def burst() -> tuple[list[dict[str, object]], float]:
        async with AsyncTenantClient(endpoint, tenant="a") as a:
            for name, path in small_models.items():
                await a.submit_model(path, name)
            t0 = time.perf_counter()
            results = await asyncio.gather(*(a.infer_detailed(m, X) for m in sequence))
            return [r.timings for r in results], (time.perf_counter() - t0) * 1e3

    with daemon_in_thread(tmp_path / "state", endpoint, Policy(profile="edgetpu"), timing="twin"):
        timings, makespan_ms = asyncio.run(burst())
    holds = [float(x["twin_ms"]) for x in timings]  # type: ignore[arg-type]
    assert holds == pytest.approx([s.service_ms + s.switch_ms for s in served], abs=1e-3)
    switch_ms = sum(float(x["twin_switch_ms"]) for x in timings)  # type: ignore[arg-type]
    assert switch_ms / sum(holds) == pytest.approx(predicted.switch_share, abs=1e-6)
    device_ms = sum(float(x["device_ms"]) for x in timings)  # type: ignore[arg-type]
    simulated_ms = served[-1].end_s * 1e3
    assert simulated_ms <= device_ms < simulated_ms + SLACK_MS
    assert makespan_ms >= simulated_ms
    # The last request waited for all the others: its response is the simulated makespan or more.
    assert float(timings[-1]["total_ms"]) >= simulated_ms - float(timings[0]["queue_ms"]) - 1e-6  # type: ignore[arg-type]


def test_unknown_models_are_estimated_and_slots_share_one_modelled_device(
    tmp_path: Path, endpoint: str, small_models: dict[str, Path]
) -> None:
    """Under a profile with several slots the modelled device still runs one inference at a time:
    a burst from two tenants takes at least the sum of the modelled times. A model the twin's
    tables do not know is estimated from its file size, and says so."""
    policy = Policy(profile="jetson-nano", slots=2, threads_per_model=1)

    async def burst() -> tuple[list[dict[str, object]], float]:
        async with (
            AsyncTenantClient(endpoint, tenant="a") as a,
            AsyncTenantClient(endpoint, tenant="b") as b,
        ):
            await a.submit_model(small_models["mobilenet_v2"], "my-classifier")
            await b.submit_model(small_models["ssd_mobilenet_v2"], "ssd_mobilenet_v2")
            t0 = time.perf_counter()
            calls = [a.infer_detailed("my-classifier", X) for _ in range(4)]
            calls += [b.infer_detailed("ssd_mobilenet_v2", X) for _ in range(4)]
            results = await asyncio.gather(*calls)
            return [r.timings for r in results], (time.perf_counter() - t0) * 1e3

    with daemon_in_thread(tmp_path / "state", endpoint, policy, timing="twin"):
        timings, makespan_ms = asyncio.run(burst())
    mine, theirs = timings[:4], timings[4:]
    assert {t["twin_source"] for t in mine} == {"estimated"}
    assert {t["twin_source"] for t in theirs} == {"published"}
    assert all(float(t["twin_ms"]) == pytest.approx(72.3) for t in theirs)  # type: ignore[arg-type]
    assert all(float(t["twin_switch_ms"]) == 0.0 for t in timings)  # type: ignore[arg-type]
    modelled = sum(float(t["twin_ms"]) for t in timings)  # type: ignore[arg-type]
    assert all(0 < float(t["twin_ms"]) <= float(t["device_ms"]) for t in timings)  # type: ignore[arg-type]
    assert makespan_ms >= modelled  # two slots, but one modelled device
    assert makespan_ms < modelled + 4 * SLACK_MS

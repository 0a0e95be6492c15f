"""Integration: admission against device memory budgets with real models and measured footprints.

Footprints are never constants here: each test first probes a real model (the same throwaway
process the daemon uses) and sizes the emulated device's capacity from what it measured."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models import tiny
from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd.config import Policy
from tenantd.memory import host_memory
from tenantd.probe import ProbeResult, probe_model
from tests.support.daemon import daemon_in_thread

MiB = 2**20


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], ProbeResult]:
    """Four different 8 MiB-parameter models and the probe's measurement of one of them."""
    models = [tiny.sized_mlp(8 * MiB, seed=i) for i in range(4)]
    path = tmp_path_factory.mktemp("probe") / "m.tflite"
    path.write_bytes(models[0])
    probe = asyncio.run(probe_model("litert", path, threads=1, timeout_s=60))
    assert probe.ok and probe.footprint_bytes > 8 * MiB  # weights, at least
    return models, probe


def test_dedicated_budget_refuses_at_the_memory_bound(
    tmp_path: Path, endpoint: str, weights: tuple[list[bytes], ProbeResult]
) -> None:
    models, probe = weights
    overhead = int(probe.details["runtime_overhead_bytes"])
    reserve = 16 * MiB
    # Room for two of these models and half of a third, on an emulated NCS2 (dedicated memory).
    capacity = reserve + overhead + int(2.5 * probe.footprint_bytes)
    policy = Policy(profile="ncs2", capacity_bytes=capacity, reserve_bytes=reserve)
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon, TenantClient(endpoint, tenant="a") as a:
        a.submit_model(models[0], "m0")
        a.submit_model(models[1], "m1")
        with pytest.raises(E.AdmissionDenied) as refused:
            a.submit_model(models[2], "m2")
        details = refused.value.details
        assert details["budget_bytes"] == capacity - reserve
        assert details["used_bytes"] >= overhead + 2 * probe.footprint_bytes * 0.9
        assert details["shortfall_bytes"] > 0
        assert details["shortfall_bytes"] == details["footprint_bytes"] - details["free_bytes"]
        assert "short" in refused.value.message and "MiB" in refused.value.message
        assert [m.name for m in a.list_models()] == ["m0", "m1"]  # the refused model left no trace

        event = daemon.events.tail(event="model.refused")[-1]
        assert event["code"] == "ADMISSION_DENIED" and event["profile"] == "ncs2" and event["emulated"] is True
        assert event["models_resident"] == 2 and event["budget_bytes"] == capacity - reserve

        memory = a.status()["memory"]
        assert memory["profile"] == "ncs2" and memory["memory_model"] == "dedicated"
        assert memory["last_refusal"]["model"] == "m2" and "short" in memory["last_refusal"]["reason"]
        assert memory["models_admitted"] == 2
        # Charged once, from the daemon's own probe of its first model (a separate measurement).
        assert memory["runtime_overhead_bytes"]["litert"] == pytest.approx(overhead, rel=0.1)

        # Removing a model frees its charge, and the refused one now fits.
        a.remove_model("m0")
        a.submit_model(models[2], "m2")
        assert a.infer("m2", np.zeros((1, 256), np.float32))["probs"].shape == (1, 16)


class HostMemory:
    """The kernel's (total, available) reading as the daemon sees it, with another process's use
    added on demand: the kernel's own MemAvailable on this VM lags allocations by hundreds of MiB
    at times, so the daemon's reaction is tested against a reading the test controls (below), and
    against the real kernel separately (next test)."""

    def __init__(self) -> None:
        self.other = 0

    def __call__(self) -> tuple[int, int]:
        total, available = host_memory()
        return total, available - self.other


def shared_policy(probe: ProbeResult, headroom: int) -> Policy:
    vm = psutil.virtual_memory()
    reserve = 64 * MiB
    # An emulated Jetson whose DRAM is what this host uses now plus room for a few models.
    return Policy(
        profile="jetson-nano",
        capacity_bytes=vm.total - vm.available + reserve + int(probe.details["runtime_overhead_bytes"]) + headroom,
        reserve_bytes=reserve,
        budget_watch_s=0.1,
    )


def test_shared_budget_follows_the_hosts_memory(
    tmp_path: Path, endpoint: str, weights: tuple[list[bytes], ProbeResult]
) -> None:
    models, probe = weights
    policy = shared_policy(probe, 3 * probe.footprint_bytes + 1024 * MiB)
    host = HostMemory()
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon, TenantClient(endpoint, tenant="a") as a:
        daemon.admission.memory._read_memory = host
        a.submit_model(models[0], "m0")
        before = a.status()["memory"]
        assert before["memory_model"] == "shared" and before["free_bytes"] > probe.footprint_bytes

        # Another process takes all the free memory and 600 MiB more: the budget shrinks by that,
        # admission refuses, and the watcher says so by itself.
        host.other = before["free_bytes"] + 600 * MiB
        during = a.status()["memory"]
        assert during["budget_bytes"] == pytest.approx(max(0, before["budget_bytes"] - host.other), abs=200 * MiB)
        with pytest.raises(E.AdmissionDenied, match="shared budget"):
            a.submit_model(models[1], "m1")

        def logged(event: str, test: Callable[[dict[str, Any]], bool]) -> bool:
            for _ in range(200):
                if any(test(e) for e in daemon.events.tail(limit=1000, event=event)):
                    return True
                time.sleep(0.05)  # ok: polling the log for the watcher's periodic event
            return False

        assert logged("budget.changed", lambda e: e["budget_bytes"] <= before["budget_bytes"] - host.other // 2)
        assert logged("admission.over_budget", lambda e: e["free_bytes"] < 0)  # m0 no longer fits: kept, said

        # The process is gone: the budget comes back and the model fits again.
        host.other = 0
        assert a.status()["memory"]["budget_bytes"] == pytest.approx(before["budget_bytes"], abs=200 * MiB)
        assert logged("admission.within_budget", lambda e: e["free_bytes"] >= 0)
        a.submit_model(models[1], "m1")
        assert {m.name for m in a.list_models()} == {"m0", "m1"}


def test_a_real_host_process_shrinks_the_shared_budget(
    tmp_path: Path, endpoint: str, weights: tuple[list[bytes], ProbeResult]
) -> None:
    models, probe = weights
    policy = shared_policy(probe, 3 * probe.footprint_bytes + 1024 * MiB)
    with daemon_in_thread(tmp_path / "state", endpoint, policy), TenantClient(endpoint, tenant="a") as a:
        a.submit_model(models[0], "m0")
        before = a.status()["memory"]
        hog_bytes = before["free_bytes"] + 600 * MiB
        used_before = psutil.virtual_memory().total - psutil.virtual_memory().available
        hog = subprocess.Popen(
            [sys.executable, "-c", HOG, str(hog_bytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert hog.stdout is not None and hog.stdout.readline().strip() == "allocated"
            # The kernel's reading may lag the allocation; the daemon can only see what it reports.
            for _ in range(100):
                vm = psutil.virtual_memory()
                if vm.total - vm.available - used_before >= hog_bytes * 0.8:
                    break
                time.sleep(0.1)  # ok: polling the kernel's memory reading
            else:
                pytest.skip("this host's MemAvailable did not reflect an allocation of the hog's size within 10 s")
            during = a.status()["memory"]
            assert during["budget_bytes"] <= max(0, before["budget_bytes"] - hog_bytes // 2)
            with pytest.raises(E.AdmissionDenied, match="shared budget"):
                a.submit_model(models[1], "m1")
        finally:
            hog.kill()
            hog.wait()


# Allocates and touches N bytes (so they are resident), says so, and waits to be killed.
HOG = """
import sys
block = bytearray(int(sys.argv[1]))
for i in range(0, len(block), 4096):
    block[i] = 1
print("allocated", flush=True)
sys.stdin.read()
"""


def test_restart_recharges_the_ledger(tmp_path: Path, endpoint: str, weights: tuple[list[bytes], ProbeResult]) -> None:
    models, _ = weights
    policy = Policy(profile="ncs2")
    with daemon_in_thread(tmp_path / "state", endpoint, policy), TenantClient(endpoint, tenant="a") as a:
        a.submit_model(models[0], "m0")
        used = a.status()["memory"]["used_bytes"]
    with daemon_in_thread(tmp_path / "state", endpoint, policy), TenantClient(endpoint, tenant="a") as a:
        memory = a.status()["memory"]
        assert memory["models_admitted"] == 1
        # Restored from the stored probe figure; the live load can only have raised it.
        assert memory["used_bytes"] >= used * 0.9


def test_metrics_expose_the_emulated_profile_and_the_budget(
    tmp_path: Path, endpoint: str, weights: tuple[list[bytes], ProbeResult]
) -> None:
    models, _ = weights
    with (
        daemon_in_thread(tmp_path / "state", endpoint, Policy(profile="ncs2")),
        TenantClient(endpoint, tenant="a") as a,
    ):
        a.submit_model(models[0], "m0")
        a.infer("m0", np.zeros((1, 256), np.float32))
        text = a.metrics()
        memory = a.status()["memory"]
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    info = next(k for k in samples if k.startswith("tenantd_info{"))
    assert 'profile="ncs2"' in info and 'emulated="true"' in info and 'device="cpu"' in info
    assert float(samples['tenantd_requests_total{op="infer"}']) == 1
    assert float(samples["tenantd_memory_budget_bytes"]) == memory["budget_bytes"]
    assert float(samples["tenantd_models"]) == 1
    # Valid exposition, every family typed: prometheus_client's own parser reads it back.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["tenantd_models"].type == "gauge" and families["tenantd_requests"].type == "counter"
    assert all(f.type != "unknown" for f in families.values())

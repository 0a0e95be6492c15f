"""Integration: swapping models in and out of a device under a budget, with real reloads from the
store and measured switch overheads (the paper's EdgeTPU regime), next to the reject regime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from models import tiny
from tenantclient import TenantClient
from tenantd.config import Policy
from tenantd.probe import ProbeResult, probe_model
from tests.conftest import direct_litert
from tests.support.daemon import daemon_in_thread

MiB = 2**20
X = np.random.default_rng(7).standard_normal((1, 256)).astype(np.float32)


@pytest.fixture(scope="module")
def three_mib_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four models with 3 MiB of parameters each: two fit an EdgeTPU's 8 MiB cache, not three."""
    root = tmp_path_factory.mktemp("swap-models")
    paths = []
    for i in range(4):
        path = root / f"m{i}.tflite"
        path.write_bytes(tiny.sized_mlp(3 * MiB, seed=10 + i))
        paths.append(path)
    return paths


def test_edgetpu_cache_keeps_every_model_loaded_and_measures_switches(
    tmp_path: Path, endpoint: str, three_mib_models: list[Path]
) -> None:
    """Coral's cache model: the ~8 MB parameter cache holds one model's parameters; the next
    model's first invoke streams its own in (libedgetpu does it). So every admitted model stays
    loaded (four 3 MiB models, more than the cache holds), nothing is reloaded, and a switch is the
    first run after a different model, measured against that model's warm runs."""
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(profile="edgetpu")) as daemon:
        with TenantClient(endpoint, tenant="a") as a:
            for i, path in enumerate(three_mib_models):
                info = a.submit_model(path, f"m{i}")
                assert info.resident  # loaded at submission, and it stays loaded
            sequence = [0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3]
            switched = []
            for i in sequence:
                result = a.infer_detailed(f"m{i}", X)
                assert np.array_equal(result.outputs["probs"], direct_litert(three_mib_models[i], X)["probs"])
                assert "load_ms" not in result.timings  # never an interpreter rebuilt to "swap"
                switched.append(bool(result.timings["switch"]))
            status = a.status()
        # The first of each pair ran after another model (the very first after none).
        assert switched == [False, False] + [True, False] * 7
        residency = status["residency"]
        assert residency["swapping"] is None and residency["reloads"] == 0
        assert len(residency["loaded"]) == 4
        switches = daemon.events.tail(limit=1000, event="switch")
        assert len(switches) == 7 and not any(e["reload"] for e in switches)
        assert all(e["overhead_ms"] is not None for e in switches)  # warm medians seeded by the probe


def test_swap_keeps_loaded_models_within_a_dedicated_budget(tmp_path: Path, endpoint: str) -> None:
    models = [tiny.sized_mlp(8 * MiB, seed=20 + i) for i in range(3)]
    probe_path = tmp_path / "probe.tflite"
    probe_path.write_bytes(models[0])
    probe: ProbeResult = asyncio.run(probe_model("litert", probe_path, threads=1, timeout_s=60))
    assert probe.ok
    reserve = 16 * MiB
    capacity = reserve + int(probe.details["runtime_overhead_bytes"]) + int(2.5 * probe.footprint_bytes)
    common = {"profile": "ncs2", "capacity_bytes": capacity, "reserve_bytes": reserve, "slots": 1}

    # The same three models: refused at the memory bound under reject ...
    with daemon_in_thread(tmp_path / "reject", endpoint, Policy(**common)), TenantClient(endpoint, tenant="a") as a:
        a.submit_model(models[0], "m0")
        a.submit_model(models[1], "m1")
        with pytest.raises(Exception, match="ADMISSION_DENIED"):
            a.submit_model(models[2], "m2")

    # ... all admitted and served under swap, never over the budget.
    with daemon_in_thread(tmp_path / "swap", endpoint, Policy(overcommit="swap", **common)) as daemon:
        with TenantClient(endpoint, tenant="a") as a:
            for i, model in enumerate(models):
                a.submit_model(model, f"m{i}")
            for i in [0, 1, 2, 0, 1, 2, 2, 1, 0]:
                out = a.infer(f"m{i}", X)["probs"]
                assert out.shape == (1, 16)
                memory = a.status()["memory"]
                assert memory["used_bytes"] <= memory["budget_bytes"]
            residency = a.status()["residency"]
        assert residency["swapping"] == "footprint" and residency["evictions"] >= 3
        assert len(residency["loaded"]) <= 2
        assert daemon.events.tail(event="switch")[-1]["reload"] in (True, False)


def test_swapped_models_come_back_after_a_restart(tmp_path: Path, endpoint: str, three_mib_models: list[Path]) -> None:
    policy = Policy(profile="edgetpu")
    with daemon_in_thread(tmp_path / "state", endpoint, policy), TenantClient(endpoint, tenant="a") as a:
        for i, path in enumerate(three_mib_models[:3]):
            a.submit_model(path, f"m{i}")
        a.infer("m0", X)
    with daemon_in_thread(tmp_path / "state", endpoint, policy), TenantClient(endpoint, tenant="a") as a:
        assert {m.name for m in a.list_models()} == {"m0", "m1", "m2"}
        for i in range(3):
            assert np.array_equal(a.infer(f"m{i}", X)["probs"], direct_litert(three_mib_models[i], X)["probs"])


def test_the_ledger_charges_exactly_the_loaded_models_through_removes_and_replaces(
    tmp_path: Path, endpoint: str
) -> None:
    models = [tiny.sized_mlp(4 * MiB, seed=60 + i) for i in range(4)]
    policy = Policy(profile="ncs2", overcommit="swap", capacity_bytes=64 * MiB, reserve_bytes=0, slots=1)
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon, TenantClient(endpoint, tenant="a") as a:
        for i in range(3):
            a.submit_model(models[i], f"m{i}")
            a.infer(f"m{i}", X)
        a.remove_model("m0")
        a.submit_model(models[3], "m1", replace=True)  # replaces a loaded model
        a.infer("m2", X)
        loaded = set(a.status()["residency"]["loaded"])
        assert set(daemon.admission.memory.ledger.models) == loaded
        assert "m0" not in daemon.admission.memory.ledger.models


def test_a_restart_under_the_cache_profile_loads_every_model_again(
    tmp_path: Path, endpoint: str, three_mib_models: list[Path]
) -> None:
    policy = Policy(profile="edgetpu")
    with daemon_in_thread(tmp_path / "state", endpoint, policy), TenantClient(endpoint, tenant="a") as a:
        for i, path in enumerate(three_mib_models[:3]):
            a.submit_model(path, f"m{i}")
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        ledger = daemon.admission.memory.ledger
        assert set(ledger.models) == {"m0", "m1", "m2"}  # admitted against host memory
        assert not ledger.pending_models  # all loaded again at start-up, as they were
        assert set(daemon.executor.resident) == {"m0", "m1", "m2"}
        assert ledger.runtime_overhead["litert"] > 0

"""Integration: per-tenant quotas, the default deadline, and swap-aware vs round-robin switching
on the same request sequence, through a real daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from models import tiny
from tenantclient import AsyncTenantClient, TenantClient
from tenantclient import errors as E
from tenantd.config import Policy, TenantPolicy
from tenantd.daemon import Daemon
from tenantd.probe import probe_model
from tests.conftest import ModelFiles
from tests.support.daemon import daemon_in_thread
from tests.support.faulty_runtime import faulty_model

MiB = 2**20
X4 = np.ones((1, 4), np.float32)


def test_model_count_and_memory_quotas(tmp_path: Path, endpoint: str, model_files: ModelFiles) -> None:
    policy = Policy(
        tenants={
            "alice": TenantPolicy(max_models=1),
            "bob": TenantPolicy(memory_quota_bytes=12 * MiB),
        }
    )
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(model_files.mlp, "a1")
            with pytest.raises(E.AdmissionDenied, match="may have 1 model") as refused:
                alice.submit_model(model_files.mlp_b, "a2")
            assert refused.value.details == {"quota": "max_models", "limit": 1, "models": 1}
            alice.submit_model(model_files.mlp_b, "a1", replace=True)  # a replacement is not a new model
        with TenantClient(endpoint, tenant="bob") as bob:
            bob.submit_model(tiny.sized_mlp(2 * MiB, seed=1), "small")  # a few MiB measured
            with pytest.raises(E.AdmissionDenied, match="memory quota") as refused:
                bob.submit_model(tiny.sized_mlp(8 * MiB, seed=2), "big")
            details = refused.value.details
            assert details["quota"] == "memory_quota_bytes" and details["limit"] == 12 * MiB
            assert details["shortfall_bytes"] == details["used_bytes"] + details["footprint_bytes"] - 12 * MiB > 0
        with TenantClient(endpoint, tenant="carol") as carol:  # no quota of her own
            carol.submit_model(tiny.sized_mlp(8 * MiB, seed=2), "big")
        assert [e["quota"] for e in daemon.events.tail(event="model.refused")] == ["max_models", "memory_quota_bytes"]


def test_in_flight_quota(tmp_path: Path, endpoint: str) -> None:
    policy = Policy(slots=1, tenants={"alice": TenantPolicy(max_in_flight=2)})
    with daemon_in_thread(tmp_path / "state", endpoint, policy):

        async def run() -> list[object]:
            async with AsyncTenantClient(endpoint, tenant="alice") as alice:
                await alice.submit_model(faulty_model(infer="slow", sleep_ms=150), "slow", runtime="faulty")
                return await asyncio.gather(*(alice.infer("slow", X4) for _ in range(5)), return_exceptions=True)

        results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, E.QueueFull)]
    assert len(refused) >= 3 and all("in-flight" in r.message for r in refused)
    assert sum(isinstance(r, dict) for r in results) == 5 - len(refused)


def test_default_deadline_applies_to_requests_without_one(tmp_path: Path, endpoint: str) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(slots=1, default_deadline_ms=50)):

        async def run() -> list[object]:
            async with AsyncTenantClient(endpoint, tenant="alice") as alice:
                await alice.submit_model(faulty_model(infer="slow", sleep_ms=300), "slow", runtime="faulty")
                return await asyncio.gather(alice.infer("slow", X4), alice.infer("slow", X4), return_exceptions=True)

        first, second = asyncio.run(run())
    assert isinstance(first, dict)
    assert isinstance(second, E.DeadlineExceeded)  # waited behind the first for longer than 50 ms


async def queue_behind_a_blocker(daemon: Daemon, endpoint: str, models: list[bytes]) -> None:
    """Four tenants submit one model each; while a slow request holds the one slot, each queues
    five requests at once; all are answered."""
    clients = [AsyncTenantClient(endpoint, tenant=f"t{i}") for i in range(4)]
    for i, (client, model) in enumerate(zip(clients, models, strict=True)):
        await client.submit_model(model, f"m{i}")
    await clients[0].submit_model(faulty_model(infer="slow", sleep_ms=200), "blocker", runtime="faulty")
    x = np.zeros((1, 256), np.float32)
    blocker = asyncio.ensure_future(clients[0].infer("blocker", X4))
    while daemon.core.scheduler.running < 1:
        await asyncio.sleep(0)
    calls = [client.infer(f"m{i}", x) for _ in range(5) for i, client in enumerate(clients)]
    await asyncio.gather(blocker, *calls)
    for client in clients:
        await client.close()


def switches_for(discipline: str, tmp_path: Path, endpoint: str, models: list[bytes]) -> int:
    """Four tenants, one model each, on a swapping device whose memory holds fewer than four of
    them (an EdgeTPU no longer swaps: its models stay loaded); each tenant queues five requests
    behind a blocker, all at once; count the reloads."""
    path = tmp_path / f"probe-{discipline}.tflite"
    path.write_bytes(models[0])
    probe = asyncio.run(probe_model("litert", path, threads=1, timeout_s=60))
    assert probe.ok
    capacity = int(probe.details["runtime_overhead_bytes"]) + int(3.5 * probe.footprint_bytes)
    policy = Policy(
        profile="ncs2",
        overcommit="swap",
        capacity_bytes=capacity,
        reserve_bytes=0,
        slots=1,
        discipline=discipline,
        max_pass_over=4,
    )
    with daemon_in_thread(tmp_path / discipline, endpoint, policy) as daemon:
        before = daemon.executor.reloads
        asyncio.run(queue_behind_a_blocker(daemon, endpoint, models))
        return daemon.executor.reloads - before


def test_swap_aware_switches_less_than_round_robin_on_the_same_requests(tmp_path: Path, endpoint: str) -> None:
    models = [tiny.sized_mlp(3 * MiB, seed=40 + i) for i in range(4)]
    round_robin = switches_for("round-robin", tmp_path, endpoint, models)
    swap_aware = switches_for("swap-aware", tmp_path, endpoint, models)
    # Round-robin cycles four models through room for fewer: nearly every request reloads.
    assert round_robin >= 15
    assert swap_aware < round_robin / 2, (swap_aware, round_robin)


def edgetpu_switches_for(discipline: str, tmp_path: Path, endpoint: str, models: list[bytes]) -> int:
    """The EdgeTPU's cache holds one model's parameters: every model stays loaded and a switch is
    running another model than the last (Coral's compiler docs, "parameter data caching"). Four
    tenants queue five requests each behind a blocker, all at once; count the switches."""
    policy = Policy(profile="edgetpu", slots=1, discipline=discipline, max_pass_over=4)
    with daemon_in_thread(tmp_path / f"edgetpu-{discipline}", endpoint, policy) as daemon:
        before = daemon.executor.switches
        asyncio.run(queue_behind_a_blocker(daemon, endpoint, models))
        assert daemon.executor.reloads == 0  # nothing is swapped out on a cache device
        return daemon.executor.switches - before


def test_swap_aware_groups_a_cache_devices_requests_by_the_model_that_ran_last(tmp_path: Path, endpoint: str) -> None:
    models = [tiny.sized_mlp(1 * MiB, seed=60 + i) for i in range(4)]
    round_robin = edgetpu_switches_for("round-robin", tmp_path, endpoint, models)
    swap_aware = edgetpu_switches_for("swap-aware", tmp_path, endpoint, models)
    assert round_robin >= 15  # four models in turn: nearly every request is a switch
    assert swap_aware < round_robin / 2, (swap_aware, round_robin)


def test_policy_hot_reload(tmp_path: Path, endpoint: str, model_files: ModelFiles) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(profile="ncs2")) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(model_files.mlp, "m")
            with pytest.raises(E.Forbidden, match="only the operator"):
                alice.policy_set("queue_depth_per_tenant = 1\n")
        with TenantClient(endpoint) as operator:
            assert operator.policy_show()["policy"]["queue_depth_per_tenant"] == 64
            with pytest.raises(E.BadRequest, match="slots cannot change while the daemon runs"):
                operator.policy_set('profile = "ncs2"\nslots = 3\n')
            with pytest.raises(E.BadRequest, match="queue_depth_per_tenant"):
                operator.policy_set('profile = "ncs2"\nqueue_depth_per_tenant = "many"\n')
            applied = operator.policy_set(
                'profile = "ncs2"\nqueue_depth_per_tenant = 7\ncapacity_bytes = 1048576\nreserve_bytes = 0\n'
                "[tenants.alice]\nmax_models = 0\n"
            )
            assert applied["changed"] == ["capacity_bytes", "queue_depth_per_tenant", "reserve_bytes", "tenants"]
            notes = " ".join(applied["consequences"])
            assert "admitted models stay" in notes and "tenant 'alice' has 1 models" in notes
            assert operator.policy_show()["policy"]["queue_depth_per_tenant"] == 7
        assert daemon.core.scheduler.depth_per_tenant == 7
        with TenantClient(endpoint, tenant="alice") as alice:
            # Nothing was dropped: the model still serves; new models are refused by the new rules.
            assert alice.infer("m", np.zeros((1, 32), np.float32))["probs"].shape == (1, 10)
            with pytest.raises(E.AdmissionDenied):
                alice.submit_model(model_files.mlp_b, "m2")
        kinds = [e["event"] for e in daemon.events.tail(limit=50)]
        assert "policy.changed" in kinds and "admission.over_budget" in kinds and "quota.exceeded" in kinds


def test_quotas_hold_under_concurrent_submissions(tmp_path: Path, endpoint: str, model_files: ModelFiles) -> None:
    policy = Policy(tenants={"alice": TenantPolicy(max_models=1)})
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:

        async def run() -> list[object]:
            async with AsyncTenantClient(endpoint, tenant="alice") as alice:
                return await asyncio.gather(
                    *(alice.submit_model(model_files.mlp, f"m{i}") for i in range(4)), return_exceptions=True
                )

        results = asyncio.run(run())
        assert sum(not isinstance(r, Exception) for r in results) == 1
        assert all(isinstance(r, E.AdmissionDenied) for r in results if isinstance(r, Exception))
        assert len(daemon.catalog.models) == 1


def test_remove_racing_a_replace_leaves_store_memory_and_ledger_agreeing(
    tmp_path: Path, endpoint: str, model_files: ModelFiles
) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(profile="ncs2")) as daemon:

        async def run() -> None:
            async with AsyncTenantClient(endpoint, tenant="alice") as alice:
                await alice.submit_model(model_files.mlp, "m")
                await asyncio.gather(
                    alice.submit_model(model_files.mlp_b, "m", replace=True),
                    alice.remove_model("m"),
                    return_exceptions=True,
                )

        for _ in range(3):
            asyncio.run(run())
            stored = {r.name for r in daemon.store.list_models()}
            assert (
                stored
                == set(daemon.catalog.models)
                == set(daemon.admission.memory.ledger.models)
                == set(daemon.executor.resident)
            )
            with TenantClient(endpoint, tenant="alice") as alice:
                for name in stored:
                    alice.remove_model(name)

"""Integration: the clients' retries of QUEUE_FULL against a real daemon whose queue holds one
request per tenant (one slot, queue depth 1), and what is never retried."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from tenantclient import AsyncTenantClient, RetryPolicy, TenantClient
from tenantclient import errors as E
from tenantclient.retry import RETRIED_OPS
from tenantd.config import Policy
from tests.support.daemon import daemon_in_thread
from tests.support.faulty_runtime import faulty_model

X4 = np.ones((1, 4), np.float32)
ONE_DEEP = Policy(slots=1, queue_depth_per_tenant=1)
# Waits long enough, summed over the retries, for the slot to drain several 100 ms inferences.
PATIENT = RetryPolicy(retries=30, base_delay_s=0.05, max_delay_s=0.4, rng=random.Random(1))


def _queue_full_replies(status: dict[str, object]) -> int:
    errors = status.get("errors") or {}
    assert isinstance(errors, dict)
    return int(errors.get("QUEUE_FULL", 0))


def test_without_retries_a_full_queue_is_refused_and_with_them_every_request_is_served(
    tmp_path: Path, endpoint: str
) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, ONE_DEEP):

        async def burst(retry: RetryPolicy | None) -> list[object]:
            async with AsyncTenantClient(endpoint, tenant="alice", retry=retry) as alice:
                results = await asyncio.gather(*(alice.infer("slow", X4) for _ in range(5)), return_exceptions=True)
                return list(results)

        with TenantClient(endpoint, tenant="alice") as alice:
            alice.submit_model(faulty_model(infer="slow", sleep_ms=100), "slow", runtime="faulty")

        plain = asyncio.run(burst(None))
        refused = [r for r in plain if isinstance(r, E.QueueFull)]
        assert refused, plain  # one runs, one waits: the others find alice's queue full
        assert all(r.attempts == 1 for r in refused)

        with TenantClient(endpoint) as ops:
            before = _queue_full_replies(ops.status())
        retried = asyncio.run(burst(PATIENT))
        assert all(isinstance(r, dict) and np.array_equal(r["y"], 2 * X4) for r in retried), retried
        with TenantClient(endpoint) as ops:
            after = _queue_full_replies(ops.status())
        assert after > before  # served because refused requests were sent again, not by luck


def test_the_synchronous_client_retries_while_another_client_holds_the_queue(tmp_path: Path, endpoint: str) -> None:
    with daemon_in_thread(tmp_path / "state", endpoint, ONE_DEEP) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice:
            # Long enough that the holder's two are still there when the other clients call.
            alice.submit_model(faulty_model(infer="slow", sleep_ms=1500), "slow", runtime="faulty")

        async def run() -> tuple[list[object], object, object]:
            def sync_calls(retry: RetryPolicy | None) -> object:
                with TenantClient(endpoint, tenant="alice", retry=retry) as client:
                    try:
                        return client.infer("slow", X4)
                    except E.TenantError as exc:
                        return exc

            async with AsyncTenantClient(endpoint, tenant="alice") as holder:
                # One running, then one waiting (sent only once the first runs): alice's queue is full.
                scheduler = daemon.core.scheduler
                hold = [asyncio.ensure_future(holder.infer("slow", X4))]
                while scheduler.running < 1:
                    await asyncio.sleep(0.005)
                hold.append(asyncio.ensure_future(holder.infer("slow", X4)))
                while scheduler.queued < 1:
                    await asyncio.sleep(0.005)
                assert not any(h.done() for h in hold)
                plain, patient = await asyncio.gather(
                    asyncio.to_thread(sync_calls, None), asyncio.to_thread(sync_calls, PATIENT)
                )
                return await asyncio.gather(*hold, return_exceptions=True), plain, patient

        held, plain, patient = asyncio.run(run())
    assert all(isinstance(r, dict) for r in held)
    assert isinstance(plain, E.QueueFull) and plain.attempts == 1
    assert isinstance(patient, dict) and np.array_equal(patient["y"], 2 * X4)


def test_changes_are_never_retried_and_the_last_refusal_says_how_many_tries(tmp_path: Path, endpoint: str) -> None:
    assert "submit_model" not in RETRIED_OPS and "remove_model" not in RETRIED_OPS
    assert "policy_set" not in RETRIED_OPS and "pipeline_set" not in RETRIED_OPS
    quick = RetryPolicy(retries=2, base_delay_s=0.001, max_delay_s=0.002)
    with daemon_in_thread(tmp_path / "state", endpoint, ONE_DEEP) as daemon:
        with TenantClient(endpoint, tenant="alice", retry=quick) as alice:
            alice.submit_model(faulty_model(infer="slow", sleep_ms=10), "slow", runtime="faulty")
            # A refusal other than QUEUE_FULL/UNAVAILABLE is not retried: one try.
            with pytest.raises(E.AlreadyExists) as taken:
                alice.submit_model(faulty_model(), "slow", runtime="faulty")
            assert taken.value.attempts == 1
            daemon.lifecycle.draining = True  # what SIGTERM does first: new work gets UNAVAILABLE
            with pytest.raises(E.Unavailable) as draining:
                alice.infer("slow", X4)
            assert draining.value.attempts == 3  # the first try and two retries
            with pytest.raises(E.Unavailable) as not_retried:
                alice.submit_model(faulty_model(), "other", runtime="faulty")
            assert not_retried.value.attempts == 1  # a submission is never sent twice
            daemon.lifecycle.draining = False


def test_retry_policy_delays_are_jittered_and_bounded() -> None:
    policy = RetryPolicy(retries=8, base_delay_s=0.01, max_delay_s=0.1, rng=random.Random(7))
    for retry in range(8):
        delays = [policy.delay(retry) for _ in range(200)]
        cap = min(0.1, 0.01 * 2**retry)
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap / 2 and len(set(delays)) > 150  # spread over the range, not one value
    assert RetryPolicy(retries=2).should_retry("infer", "QUEUE_FULL", 1)
    assert not RetryPolicy(retries=2).should_retry("infer", "QUEUE_FULL", 2)
    assert not RetryPolicy(retries=2).should_retry("infer", "DEADLINE_EXCEEDED", 0)
    for bad in ({"retries": -1}, {"base_delay_s": 0.0}, {"base_delay_s": 3.0, "max_delay_s": 1.0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
    with pytest.raises(ValueError, match="may be retried"):
        RetryPolicy(codes=frozenset({"INTERNAL"}))
    with pytest.raises(TypeError):
        TenantClient("ipc:///nonexistent", retry=True)

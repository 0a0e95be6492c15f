"""The probe's memory limit (reliability issue item 4): a 2 KB .tflite with one ADD on
float32[1, 2**28] made the probe grow to 3.6-4.1 GiB before admission decided, and a larger shape
could exhaust the host. Now the probe may use only what the device's budget has free: a model
whose declared tensors alone are bigger is refused before it is loaded, and a runtime that
allocates past the limit fails to allocate inside the probe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tenantclient.errors as E
from models import tiny
from tenantclient import TenantClient
from tenantd.config import Policy
from tenantd.daemon import Daemon
from tenantd.modelfile import largest_declared_tensor
from tests.support.daemon import daemon_in_thread
from tests.support.faulty_runtime import faulty_model

GIB = 2**30


@pytest.fixture
def small_budget(tmp_path: Path, endpoint: str) -> Iterator[Daemon]:
    # An NCS2-sized dedicated budget: 512 MiB whatever the host has.
    policy = Policy(profile="ncs2", capacity_bytes=512 * 2**20, reserve_bytes=0, probe_timeout_s=60.0)
    with daemon_in_thread(tmp_path / "state", endpoint, policy) as daemon:
        yield daemon


def test_the_largest_declared_tensor_is_read_from_the_file() -> None:
    assert largest_declared_tensor(tiny.two_input((1, 2**28))) == ("a", GIB)
    assert largest_declared_tensor(tiny.two_input((1, 8))) == ("a", 32)
    assert largest_declared_tensor(b"not a tflite file") is None


def test_a_model_declaring_a_tensor_over_the_budget_is_refused_before_it_is_loaded(
    small_budget: Daemon, endpoint: str
) -> None:
    with TenantClient(endpoint, tenant="mallory") as mallory:
        with pytest.raises(E.AdmissionDenied, match=r"tensor 'a' alone needs 1024\.0 MiB") as refused:
            mallory.submit_model(tiny.two_input((1, 2**28)), "hog", runtime="litert")
        assert refused.value.details["memory_limit_bytes"] <= 512 * 2**20
        assert mallory.list_models() == []
        mallory.submit_model(tiny.two_input((1, 8)), "small", runtime="litert")  # the limit spares the rest
    probed = small_budget.events.tail(event="model.probed")
    assert [e["model"] for e in probed] == ["small"]  # the big one never got as far as a measurement


def test_a_runtime_allocating_past_the_limit_fails_inside_the_probe(small_budget: Daemon, endpoint: str) -> None:
    with TenantClient(endpoint, tenant="mallory") as mallory:
        with pytest.raises(E.AdmissionDenied, match="ran out of the probe's memory") as refused:
            mallory.submit_model(faulty_model(load="hog", hog_bytes=2 * GIB), "hog", runtime="faulty")
        assert refused.value.details["memory_limit_bytes"] <= 512 * 2**20
        assert mallory.list_models() == []

"""Integration: Prometheus metrics of a real daemon (real sockets, real LiteRT), scraped over HTTP
in both exposition formats and read back with prometheus_client's own parsers; the ``metrics``
operation (``tenantctl metrics``) shows the same registry."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_classic

from tenantclient import AsyncTenantClient, TenantClient
from tenantclient import errors as E
from tenantclient.cli import main as tenantctl
from tenantd.config import Policy
from tenantd.daemon import Daemon
from tenantd.metrics import FAMILIES, PROCESS_FAMILIES
from tests.conftest import ModelFiles
from tests.support.daemon import daemon_in_thread
from tests.support.faulty_runtime import faulty_model

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(daemon: Daemon, accept: str | None = None) -> tuple[str, str]:
    """GET /metrics over HTTP: (content type, body)."""
    assert daemon.metrics_server is not None
    request = urllib.request.Request(daemon.metrics_server.address, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return reply.headers["Content-Type"], reply.read().decode()


def samples(families: Any) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def daemon(tmp_path: Path, endpoint: str) -> Iterator[Daemon]:
    with daemon_in_thread(tmp_path / "state", endpoint, Policy(), metrics="127.0.0.1:0") as d:
        yield d


def test_scrape_in_both_formats_counts_per_tenant_model_and_code(
    daemon: Daemon, endpoint: str, model_files: ModelFiles
) -> None:
    x = np.ones((1, 32), np.float32)
    with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint, tenant="bob") as bob:
        alice.submit_model(model_files.mlp, "alice_mlp")
        bob.submit_model(model_files.mlp_b, "bob_mlp")
        for _ in range(7):
            alice.infer("alice_mlp", x)
        for _ in range(3):
            bob.infer("bob_mlp", np.ones((1, 16), np.float32))
        for _ in range(2):
            with pytest.raises(E.InputMismatch):
                alice.infer("alice_mlp", np.zeros((1, 3), np.float32))
        with pytest.raises(E.UnknownModel):
            alice.infer("no_such_model", x)
        with pytest.raises(E.Forbidden):
            bob.infer("alice_mlp", x)

    content_type, classic = scrape(daemon)
    assert content_type.startswith("text/plain; version=0.0.4")
    om_type, openmetrics = scrape(daemon, OPENMETRICS)
    assert om_type.startswith("application/openmetrics-text; version=1.0.0")
    assert openmetrics.endswith("# EOF\n")
    for found in (samples(parse_classic(classic)), samples(parse_openmetrics(openmetrics))):
        ok = "tenantd_inference_requests_total"
        assert value(found, ok, tenant="alice", model="alice_mlp", code="OK") == 7
        assert value(found, ok, tenant="bob", model="bob_mlp", code="OK") == 3
        assert value(found, ok, tenant="alice", model="alice_mlp", code="INPUT_MISMATCH") == 2
        # A name the daemon does not know is counted under "" (bounded labels), the tenant under its own.
        assert value(found, ok, tenant="alice", model="", code="UNKNOWN_MODEL") == 1
        assert value(found, ok, tenant="bob", model="alice_mlp", code="FORBIDDEN") == 1
        for histogram in ("queue", "compute", "total"):
            name = f"tenantd_inference_{histogram}_seconds"
            assert value(found, f"{name}_count", tenant="alice", model="alice_mlp") == 7
            assert value(found, f"{name}_count", tenant="bob", model="bob_mlp") == 3
            assert value(found, f"{name}_bucket", tenant="alice", model="alice_mlp", le="+Inf") == 7
            assert value(found, f"{name}_sum", tenant="alice", model="alice_mlp") > 0 or histogram == "queue"
        assert value(found, "tenantd_requests_total", op="infer") == 7 + 3 + 2 + 1 + 1
        assert value(found, "tenantd_requests_total", op="submit_model") == 2
        assert value(found, "tenantd_errors_total", code="INPUT_MISMATCH") == 2
        assert value(found, "tenantd_models") == 2 and value(found, "tenantd_models_loaded") == 2
        assert value(found, "process_resident_memory_bytes") > 0
    compute = samples(parse_classic(classic))
    total_sum = value(compute, "tenantd_inference_total_seconds_sum", tenant="alice", model="alice_mlp")
    assert total_sum >= value(compute, "tenantd_inference_compute_seconds_sum", tenant="alice", model="alice_mlp")


def test_the_metrics_operation_and_the_http_scrape_agree(
    daemon: Daemon, endpoint: str, model_files: ModelFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.submit_model(model_files.mlp, "m")
        for _ in range(4):
            alice.infer("m", np.ones((1, 32), np.float32))
    assert tenantctl(["--endpoint", endpoint, "metrics"]) == 0
    over_zmq = capsys.readouterr().out
    _, over_http = scrape(daemon)
    zmq_families = {f.name: f for f in parse_classic(over_zmq)}
    http_families = {f.name: f for f in parse_classic(over_http)}
    assert zmq_families.keys() == http_families.keys()
    # What no scrape changes is equal; uptime, CPU time and the metrics op's own count move on.
    for name in ("tenantd_inference_requests", "tenantd_inference_compute_seconds", "tenantd_models"):
        assert samples([zmq_families[name]]) == samples([http_families[name]])
    assert value(samples(parse_classic(over_zmq)), "tenantd_requests_total", op="metrics") == 1


def test_every_family_exposed_is_documented(daemon: Daemon, endpoint: str, model_files: ModelFiles) -> None:
    with TenantClient(endpoint, tenant="alice") as alice:
        alice.submit_model(model_files.mlp, "m")
        alice.infer("m", np.ones((1, 32), np.float32))
    _, text = scrape(daemon, OPENMETRICS)
    documented = {f.name for f in (*FAMILIES, *PROCESS_FAMILIES)}
    for family in parse_openmetrics(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert name in documented, f"{name} is exposed but not in tenantd.metrics.FAMILIES (nor the README)"


def test_queue_full_is_counted_under_its_tenant_and_model(tmp_path: Path, endpoint: str) -> None:
    policy = Policy(slots=1, queue_depth_per_tenant=1)
    with daemon_in_thread(tmp_path / "state", endpoint, policy, metrics="0") as daemon:

        async def flood() -> list[BaseException | dict[str, np.ndarray]]:
            async with AsyncTenantClient(endpoint, tenant="alice") as alice:
                await alice.submit_model(faulty_model(infer="slow", sleep_ms=1500), "slow", runtime="faulty")
                x = np.ones((1, 4), np.float32)  # non-zero: slow
                return await asyncio.gather(*(alice.infer("slow", x) for _ in range(4)), return_exceptions=True)

        outcomes = asyncio.run(flood())
        full = sum(isinstance(o, E.QueueFull) for o in outcomes)
        served = sum(isinstance(o, dict) for o in outcomes)
        assert full >= 1 and served >= 1 and full + served == 4, outcomes  # one slow request at a time
        found = samples(parse_classic(scrape(daemon)[1]))
    name = "tenantd_inference_requests_total"
    assert value(found, name, tenant="alice", model="slow", code="QUEUE_FULL") == full
    assert value(found, name, tenant="alice", model="slow", code="OK") == served
    assert value(found, "tenantd_inference_compute_seconds_count", tenant="alice", model="slow") == served


def test_switches_are_timed_and_a_removed_models_label_sets_go(
    tmp_path: Path, endpoint: str, model_files: ModelFiles
) -> None:
    with (
        daemon_in_thread(tmp_path / "state", endpoint, Policy(slots=1), metrics="0") as daemon,
        TenantClient(endpoint, tenant="alice") as alice,
    ):
        alice.submit_model(model_files.mlp, "a")
        alice.submit_model(model_files.mlp_b, "b")
        for _ in range(3):  # one slot alternating between two models: every run after the first is a switch
            alice.infer("a", np.ones((1, 32), np.float32))
            alice.infer("b", np.ones((1, 16), np.float32))
        switches = [e for e in alice.events(limit=100, event="switch") if e["overhead_ms"] is not None]
        found = samples(parse_classic(scrape(daemon)[1]))
        timed = sum(value(found, "tenantd_switch_overhead_seconds_count", tenant="alice", model=m) for m in ("a", "b"))
        assert timed == len(switches) >= 4
        assert value(found, "tenantd_switches_total") >= len(switches)

        alice.remove_model("a")
        after = samples(parse_classic(scrape(daemon)[1]))
        assert not [key for key in after if ("model", "a") in key[1]]  # every label set of "a" is gone
        assert value(after, "tenantd_inference_requests_total", tenant="alice", model="b", code="OK") == 3

        # A model of the same name again: its series start afresh and count (the daemon keeps each
        # label set's series between requests; a scrape that dropped them must not leave it
        # counting into series no longer exposed).
        alice.submit_model(model_files.mlp, "a")
        alice.infer("a", np.ones((1, 32), np.float32))
        again = samples(parse_classic(scrape(daemon)[1]))
        assert value(again, "tenantd_inference_requests_total", tenant="alice", model="a", code="OK") == 1
        assert value(again, "tenantd_inference_total_seconds_count", tenant="alice", model="a") == 1


def test_metrics_are_off_unless_asked_for_and_a_taken_port_is_a_config_error(tmp_path: Path, endpoint: str) -> None:
    with daemon_in_thread(tmp_path / "a", endpoint) as plain:
        assert plain.metrics_server is None
    with daemon_in_thread(tmp_path / "b", endpoint, metrics="127.0.0.1:0") as first:
        assert first.metrics_server is not None
        port = first.metrics_server.address.rsplit(":", 1)[1].split("/")[0]
        other = f"ipc://{tmp_path}/other.sock"
        with pytest.raises(RuntimeError, match=r"cannot serve metrics on 127\.0\.0\.1"):
            with daemon_in_thread(tmp_path / "c", other, metrics=f"127.0.0.1:{port}"):
                pass
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(first.metrics_server.address.replace("/metrics", "/nothing"), timeout=30)
        assert missing.value.code == 404

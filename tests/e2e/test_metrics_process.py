"""End to end: ``tenantd serve --metrics`` as a process; the ready line names the address, a
Prometheus-style scrape (OpenMetrics asked for, gzip accepted) reads what a tenant's requests did,
and a bad address stops the daemon with exit status 2 before it is ready."""

from __future__ import annotations

import gzip
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tenantclient import TenantClient
from tests.conftest import ModelFiles
from tests.support.daemon import DaemonDidNotStart, start_daemon_process

pytestmark = pytest.mark.e2e


def test_serve_with_metrics_is_scraped_as_prometheus_would(tmp_path: Path, model_files: ModelFiles) -> None:
    endpoint = f"ipc://{tmp_path}/d.sock"
    daemon = start_daemon_process(tmp_path / "state", endpoint, extra=["--metrics", "127.0.0.1:0"])
    try:
        address = daemon.ready_line.split("metrics=", 1)[1].split()[0]
        assert address.startswith("http://127.0.0.1:") and address.endswith("/metrics")
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            alice.submit_model(model_files.mlp, "kws")
            for _ in range(5):
                alice.infer("kws", np.ones((1, 32), np.float32))
        request = urllib.request.Request(
            address,
            headers={
                # What Prometheus 3 sends.
                "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.1",
                "Accept-Encoding": "gzip",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(reply.read()).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        served = [
            s.value
            for s in families["tenantd_inference_total_seconds"].samples
            if s.name.endswith("_count") and s.labels == {"tenant": "alice", "model": "kws"}
        ]
        assert served == [5]
        assert families["process_resident_memory_bytes"].samples[0].value > 0
    finally:
        assert daemon.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("value", ["127.0.0.1:http", "127.0.0.1:99999"])
def test_a_bad_metrics_address_is_a_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(DaemonDidNotStart) as failed:
        start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock", extra=["--metrics", value])
    assert failed.value.returncode == 2 and "is not HOST:PORT" in failed.value.stderr

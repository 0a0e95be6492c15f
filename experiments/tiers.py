"""Two tiers on one machine for the split-processing experiments: a cloud daemon on ``tcp://``
with CurveZMQ keys behind the link-emulating relay, and an edge daemon on ``ipc://`` whose
policy has an uplink to the relay with a key the cloud's operator issued to it.

Everything is done as users would: both daemons are ``tenantd serve`` subprocesses (started by
:func:`experiments.harness.daemon_process`), the edge's key is issued with ``tenantd keys add``,
models are submitted and pipelines defined with the client library. The relay is the one piece
in this process (a thread), so an experiment can change the link between measurements
(:meth:`Tiers.set_link`) while the daemons' connections stay up.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from experiments.harness import REPO, ExperimentError, daemon_process
from experiments.relay import Link, RelayThread, endpoint_address
from tenantclient import TenantClient

EDGE_TENANT = "app"  # the tenant whose pipelines run on the edge daemon
EDGE_IDENTITY = "edge"  # who the edge daemon is on the cloud daemon


def link_label(latency_ms: float, rate_mbps: float) -> str:
    return f"{latency_ms:g}ms/{rate_mbps:g}Mbps"


def parse_links(text: str) -> tuple[tuple[float, float], ...]:
    """``"40/2,20/10"`` -> ((40.0, 2.0), (20.0, 10.0)): one-way latency ms / rate Mbit/s pairs."""
    try:
        links = tuple(tuple(float(v) for v in item.split("/")) for item in text.split(",") if item)
    except ValueError:
        links = ()
    if not links or any(len(link) != 2 or link[0] < 0 or link[1] <= 0 for link in links):
        raise ExperimentError(f"--links {text!r}: use LATENCY_MS/RATE_MBPS pairs, e.g. 20/10,40/2")
    return links  # type: ignore[return-value]


@dataclass
class Tiers:
    edge: TenantClient  # as the tenant, on the edge daemon
    cloud: TenantClient  # as the edge daemon's identity, on the cloud daemon (direct, not relayed)
    cloud_relayed: TenantClient  # the same identity through the relay: the cloud-only baseline
    relay: RelayThread
    edge_endpoint: str
    cloud_endpoint: str

    def set_link(self, link: Link) -> None:
        """The same link both ways (one-way latency and rate each way)."""
        self.relay.set_links(link, link)


def _tenantd(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tenantd", *args], capture_output=True, text=True, cwd=REPO, check=False
    )
    if done.returncode != 0:
        raise ExperimentError(f"tenantd {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def two_tiers(workdir: Path, timeout_s: float = 120.0, uplink_timeout_ms: float = 60_000.0) -> Iterator[Tiers]:
    """Start the cloud daemon, the relay (unshaped until :meth:`Tiers.set_link`) and the edge daemon."""
    cloud_dir, edge_dir = workdir / "cloud", workdir / "edge"
    for scratch in (cloud_dir, edge_dir):  # daemons' state from an earlier run: start afresh
        shutil.rmtree(scratch, ignore_errors=True)
    cloud_state = cloud_dir / "state"
    cloud_state.mkdir(parents=True, exist_ok=True)
    issued = json.loads(_tenantd("keys", "add", EDGE_IDENTITY, "--state-dir", str(cloud_state), "--json"))
    edge_key = Path(issued["secret_key_file"])
    server_key = cloud_state / "keys" / "server.key"
    with ExitStack() as stack:
        cloud_endpoint = stack.enter_context(
            daemon_process(cloud_dir, extra=["--endpoint", "tcp://127.0.0.1:*", "--auth", "keys"])
        )
        relay = stack.enter_context(RelayThread(endpoint_address(cloud_endpoint), Link()))
        policy = (
            "[uplinks.cloud]\n"
            f"endpoint = {json.dumps(relay.endpoint)}\n"
            f"key_file = {json.dumps(str(edge_key))}\n"
            f"server_key = {json.dumps(str(server_key))}\n"
            f"timeout_ms = {uplink_timeout_ms!r}\n"
        )
        edge_endpoint = stack.enter_context(daemon_process(edge_dir, policy))
        keys = {"key_file": edge_key, "server_key": server_key}
        edge = stack.enter_context(TenantClient(edge_endpoint, tenant=EDGE_TENANT, timeout=timeout_s))
        cloud = stack.enter_context(TenantClient(cloud_endpoint, timeout=timeout_s, **keys))
        cloud_relayed = stack.enter_context(TenantClient(relay.endpoint, timeout=timeout_s, **keys))
        yield Tiers(edge, cloud, cloud_relayed, relay, edge_endpoint, cloud_endpoint)

"""A daemon with its KServe v2 front doors on, started through its CLI, and what tests of those
front doors share: where each door is bound, and tenants' headers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import DaemonProcess, start_daemon_process


@dataclass
class KServeDaemon:
    process: DaemonProcess
    http: str  # host:port, as tritonclient takes it
    grpc: str
    scheme: str  # "http" or "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.http}"


def _bound(ready_line: str, key: str) -> tuple[str, str]:
    """("http", "127.0.0.1:PORT") from ``... http=http://127.0.0.1:PORT ...``."""
    url = ready_line.split(f" {key}=", 1)[1].split()[0]
    scheme, _, address = url.partition("://")
    return scheme, address


@contextmanager
def kserve_daemon(
    tmp_path: Path, policy: str = "", auth: str | None = None, grpc: bool = True
) -> Iterator[KServeDaemon]:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy)
    extra = ["--http", "127.0.0.1:0"] + (["--grpc", "127.0.0.1:0"] if grpc else [])
    if auth is not None:
        extra += ["--auth", auth]
    endpoint = f"ipc://{tmp_path}/d.sock" if auth != "keys" else "tcp://127.0.0.1:*"
    process = start_daemon_process(tmp_path / "state", endpoint, policy_file, extra, log=tmp_path / "daemon.log")
    try:
        scheme, http = _bound(process.ready_line, "http")
        grpc_address = _bound(process.ready_line, "grpc")[1] if grpc else ""
        yield KServeDaemon(process, http, grpc_address, scheme)
    finally:
        assert process.stop() == 0, process.stderr()[-3000:]


def tenant(name: str) -> dict[str, str]:
    """Headers (or gRPC metadata) naming a tenant under --auth header."""
    return {"tenantd-tenant": name}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}

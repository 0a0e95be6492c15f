"""tenantd as a service, end to end: `tenantd serve` with no arguments under systemd's directory
variables, sd_notify on a real datagram socket (READY, RELOADING/READY on SIGHUP, STOPPING), a
policy set at run time that survives a restart and SIGHUP until the policy file is edited, JSON
logs on stderr, and the audit log."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantclient import TenantClient
from tenantclient.errors import TenantError
from tests.support.daemon import DaemonProcess, start_daemon_process

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(60)  # a bound on a hang, not a wait: every receive is of a datagram that must come
    yield sock
    sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


class Service:
    """The directories a systemd unit hands the daemon, in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.config, self.state, self.runtime = root / "etc", root / "lib", root / "run"
        self.config.mkdir()
        self.policy = self.config / "policy.toml"
        self.env = {
            "CONFIGURATION_DIRECTORY": str(self.config),
            "STATE_DIRECTORY": str(self.state),
            "RUNTIME_DIRECTORY": str(self.runtime),
            "NOTIFY_SOCKET": str(root / "notify"),
            # Whatever the test runner has set, the defaults must come from the directories above.
            "TENANTD_ENDPOINT": "",
            "TENANTD_STATE_DIR": "",
            "TENANTD_POLICY": "",
        }
        self.runs = 0

    def start(self) -> DaemonProcess:
        self.runs += 1
        return start_daemon_process(
            self.state,
            "",
            extra=["--log-format", "json"],  # after the subcommand
            log=self.config.parent / f"stderr{self.runs}.log",
            env=self.env,
            pass_paths=False,
        )


def show(daemon: DaemonProcess) -> tuple[int, str]:
    with TenantClient(daemon.endpoint) as operator:
        shown = operator.policy_show()
    return shown["policy"]["queue_depth_per_tenant"], shown["source"]


def sighup(daemon: DaemonProcess, notify: socket.socket) -> None:
    daemon.proc.send_signal(signal.SIGHUP)
    assert received(notify)["RELOADING"] == "1"
    assert received(notify)["READY"] == "1"  # sent once the reload is done


def stop(daemon: DaemonProcess, notify: socket.socket) -> list[dict[str, object]]:
    assert daemon.stop() == 0
    assert received(notify) == {"STOPPING": "1"}
    lines = daemon.stderr().splitlines()
    records = [json.loads(line) for line in lines]  # every stderr line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    return records


def test_a_service_starts_with_no_arguments_and_keeps_a_runtime_policy(tmp_path: Path, notify: socket.socket) -> None:
    service = Service(tmp_path)
    service.policy.write_text("# the operator's file\nqueue_depth_per_tenant = 64\n")
    daemon = service.start()
    assert daemon.endpoint == f"ipc://{service.runtime}/tenantd.sock"
    ready = received(notify)
    assert ready["READY"] == "1" and ready["MAINPID"] == str(daemon.proc.pid)
    try:
        assert show(daemon) == (64, "file")
        with TenantClient(daemon.endpoint) as operator:
            assert operator.policy_set("queue_depth_per_tenant = 32\n")["source"] == "runtime"
        sighup(daemon, notify)  # the file is unchanged: the runtime policy stays
        assert show(daemon) == (32, "runtime")
    finally:
        records = stop(daemon, notify)
    assert any(r.get("event") == "policy.changed" for r in records)  # audit events are logged with extras

    daemon = service.start()  # a restart keeps what was set at run time
    assert received(notify)["READY"] == "1"
    try:
        assert show(daemon) == (32, "runtime")
        service.policy.write_text("queue_depth_per_tenant = 16\n")  # the operator edits the file
        sighup(daemon, notify)
        assert show(daemon) == (16, "file")
        assert (service.state / "policy.override.toml.dropped").exists()
        service.policy.write_text("queue_depth_per_tenant = 16\nslots = 3\n")  # restart-only: refused
        sighup(daemon, notify)
        assert show(daemon) == (16, "file")
        service.policy.write_text("queue_depth_per_tenant = [")  # not TOML: refused
        sighup(daemon, notify)
        assert show(daemon) == (16, "file")
        with TenantClient(daemon.endpoint) as operator:
            with pytest.raises(TenantError, match="slots cannot change"):
                operator.policy_set("slots = 3\n")
            changes = operator.events(event="policy.changed")
    finally:
        records = stop(daemon, notify)
    assert [(c["changed"], c["source"]) for c in changes] == [
        (["queue_depth_per_tenant"], "runtime"),
        (["queue_depth_per_tenant"], "file"),
    ]
    refused = [r["msg"] for r in records if r["level"] == "ERROR"]
    assert len(refused) == 2 and all("policy not reloaded" in str(m) for m in refused)
    assert any("slots cannot change" in str(m) for m in refused)
    audit = [json.loads(line)["event"] for line in (service.state / "audit.jsonl").read_text().splitlines()]
    assert audit.count("policy.changed") == 2 and audit.count("start") == 2 and audit.count("stop") == 2


def test_a_missing_default_policy_file_means_every_default(tmp_path: Path, notify: socket.socket) -> None:
    service = Service(tmp_path)
    daemon = service.start()
    assert received(notify)["READY"] == "1"
    try:
        assert show(daemon) == (64, "file")
        service.policy.write_text("queue_depth_per_tenant = 8\n")  # created later: SIGHUP reads it
        sighup(daemon, notify)
        assert show(daemon) == (8, "file")
    finally:
        records = stop(daemon, notify)
    assert any("no policy file at" in str(r["msg"]) for r in records)

"""End to end: the daemon started as a process through its CLI, waited on by its ready line,
driven by the client library and by ``tenantctl`` as a user would."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tenantclient import AsyncTenantClient, TenantClient
from tenantclient import errors as E
from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import REPO, daemon_env, start_daemon_process
from tests.support.faulty_runtime import faulty_model

pytestmark = pytest.mark.e2e


def tenantctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantclient.cli", "--endpoint", endpoint, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=daemon_env(),
        cwd=REPO,
    )


def test_tenantctl_drives_the_daemon(tmp_path: Path, model_files: ModelFiles) -> None:
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock")
    try:
        assert daemon.ready_line.startswith(f"tenantd ready endpoint=ipc://{tmp_path}/d.sock device=cpu")
        submitted = tenantctl(daemon.endpoint, "submit", str(model_files.mlp), "--name", "kws", "--tenant", "alice")
        assert submitted.returncode == 0, submitted.stderr
        assert "submitted kws for tenant alice" in submitted.stdout

        listed = tenantctl(daemon.endpoint, "models")
        assert listed.returncode == 0 and "kws" in listed.stdout and "alice" in listed.stdout

        status = tenantctl(daemon.endpoint, "--json", "status")
        assert status.returncode == 0
        assert json.loads(status.stdout)["resident"] == ["kws"]

        taken = tenantctl(daemon.endpoint, "submit", str(model_files.mlp), "--name", "kws", "--tenant", "bob")
        assert taken.returncode == 1 and "FORBIDDEN" in taken.stderr

        events = tenantctl(daemon.endpoint, "events", "--limit", "100")
        for kind in ("start", "model.submitted", "model.probed", "model.admitted", "model.loaded", "request.error"):
            assert kind in events.stdout, kind

        new_policy = tmp_path / "new.toml"
        new_policy.write_text('discipline = "weighted-fair"\n[tenants.alice]\nweight = 3\n')
        applied = tenantctl(daemon.endpoint, "policy", "set", str(new_policy))
        assert applied.returncode == 0 and "changed: discipline, tenants" in applied.stdout, applied.stderr
        shown = tenantctl(daemon.endpoint, "policy", "show")
        assert 'discipline = "weighted-fair"' in shown.stdout  # as TOML, which policy set takes back

        removed = tenantctl(daemon.endpoint, "remove", "kws", "--tenant", "alice")
        assert removed.returncode == 0 and "removed kws" in removed.stdout
        assert "no models" in tenantctl(daemon.endpoint, "models").stdout
    finally:
        assert daemon.stop() == 0


def test_kill_minus_9_restart_restores_every_acknowledged_model(tmp_path: Path, model_files: ModelFiles) -> None:
    state = tmp_path / "state"
    endpoint = f"ipc://{tmp_path}/d.sock"
    x_a = np.random.default_rng(5).standard_normal((1, 32)).astype(np.float32)
    x_b = np.random.default_rng(6).standard_normal((1, 16)).astype(np.float32)
    first = start_daemon_process(state, endpoint)
    try:
        with TenantClient(first.endpoint, tenant="alice") as alice, TenantClient(first.endpoint, tenant="bob") as bob:
            alice.submit_model(model_files.mlp, "alice_mlp")
            bob.submit_model(model_files.mlp_b, "bob_mlp")
            bob.submit_model(model_files.two_input, "bob_pair")
        with TenantClient(first.endpoint) as operator:
            before = {m.name: m for m in operator.list_models()}
    finally:
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = start_daemon_process(state, endpoint)
    try:
        with TenantClient(second.endpoint) as operator:
            after = {m.name: m for m in operator.list_models()}
        assert set(after) == {"alice_mlp", "bob_mlp", "bob_pair"}
        for name, info in after.items():
            assert info.owner == before[name].owner and info.sha256 == before[name].sha256
            assert info.inputs == before[name].inputs and info.resident
        with TenantClient(second.endpoint, tenant="alice") as alice, TenantClient(second.endpoint, tenant="bob") as bob:
            assert np.array_equal(alice.infer("alice_mlp", x_a)["probs"], direct_litert(model_files.mlp, x_a)["probs"])
            assert np.array_equal(bob.infer("bob_mlp", x_b)["probs"], direct_litert(model_files.mlp_b, x_b)["probs"])
        restored = [
            e for e in second.state_dir.joinpath("events.jsonl").read_text().splitlines() if '"restored":true' in e
        ]
        assert len(restored) == 3
    finally:
        assert second.stop() == 0


def test_sigterm_answers_in_flight_requests_before_exiting(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("slots = 1\nqueue_depth_per_tenant = 16\n")
    daemon = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock", policy=policy)
    x = np.ones((1, 4), np.float32)
    signalled: list[bool] = []

    async def run() -> list[object]:
        async with AsyncTenantClient(daemon.endpoint, tenant="alice", timeout=60) as alice:
            await alice.submit_model(faulty_model(infer="slow", sleep_ms=100), "slow", runtime="faulty")
            calls = [asyncio.ensure_future(alice.infer("slow", x * i)) for i in range(6)]
            # Signal once the daemon has accepted the work (it is queued or running), not after a delay.
            while (await alice.status())["queued"] + (await alice.status())["running"] < 5:
                await asyncio.sleep(0)
            daemon.proc.send_signal(signal.SIGTERM)
            signalled.append(True)
            return await asyncio.gather(*calls, return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        # Only one SIGTERM: a second one racing the exit could meet the default handler after
        # the event loop has closed and removed its own.
        code = daemon.proc.wait(60) if daemon.proc.poll() is not None or signalled else daemon.stop()
    assert code == 0
    assert all(isinstance(r, dict) for r in results), results
    for i, r in enumerate(results):
        assert np.array_equal(r["y"], x * i * 2)  # type: ignore[index]
    last = json.loads(daemon.state_dir.joinpath("events.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "stop" and last["dropped_requests"] == 0


def tenantd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=daemon_env(),
        cwd=REPO,
    )


def test_tcp_uses_keys_by_default_and_tenantd_keys_manages_them(tmp_path: Path, model_files: ModelFiles) -> None:
    state = tmp_path / "state"
    for name, extra in (("ops", ["--operator"]), ("alice", [])):
        issued = tenantd("keys", "add", name, *extra, "--state-dir", str(state))
        assert issued.returncode == 0 and "issued a" in issued.stdout, issued.stderr
    # The client's CLI no longer writes the daemon's files; it says which command does.
    moved = tenantctl("unused", "keys", "add", "carol", "--state-dir", str(state))
    assert moved.returncode == 2 and f"tenantd keys add carol --state-dir {state}" in moved.stderr
    assert len(moved.stderr.strip().splitlines()) == 1
    listed = tenantd("keys", "list", "--state-dir", str(state), "--json")
    assert listed.returncode == 0 and sorted(json.loads(listed.stdout)) == ["operator:ops", "tenant:alice"]
    daemon = start_daemon_process(state, "tcp://127.0.0.1:*")
    server_key = str(state / "keys" / "server.key")
    secrets = state / "keys" / "issued"
    ops = ["--key", str(next(secrets.glob("operators/ops.key_secret"))), "--server-key", server_key]
    alice = ["--key", str(next(secrets.glob("tenants/alice.key_secret"))), "--server-key", server_key]
    try:
        assert daemon.endpoint.startswith("tcp://127.0.0.1:") and not daemon.endpoint.endswith("*")
        status = tenantctl(daemon.endpoint, *ops, "--json", "status")
        assert status.returncode == 0 and json.loads(status.stdout)["auth"] == "keys"
        submitted = tenantctl(
            daemon.endpoint, *alice, "submit", str(model_files.mlp), "--name", "m", "--tenant", "alice"
        )
        assert submitted.returncode == 0, submitted.stderr
        # No key: the handshake is refused and no reply comes.
        anonymous = tenantctl(daemon.endpoint, "--timeout", "1", "status")
        assert anonymous.returncode == 3
        # A key issued while the daemon runs counts once the operator reloads the keys.
        assert tenantd("keys", "add", "bob", "--state-dir", str(state)).returncode == 0
        reloaded = tenantctl(daemon.endpoint, *ops, "keys", "reload")
        assert reloaded.returncode == 0 and "tenant:bob" in reloaded.stdout
        bob = ["--key", str(secrets / "tenants" / "bob.key_secret"), "--server-key", server_key]
        listed = tenantctl(daemon.endpoint, *bob, "--json", "models")
        assert listed.returncode == 0 and json.loads(listed.stdout) == []  # bob sees none of alice's
    finally:
        assert daemon.stop() == 0


def test_header_identities_on_loopback_tcp_only_when_asked(tmp_path: Path) -> None:
    daemon = start_daemon_process(tmp_path / "state", "tcp://127.0.0.1:*", extra=["--auth", "header"])
    try:
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            assert alice.ping()["pong"] is True
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoint", "tcp://0.0.0.0:5599", "--auth", "header"], "reachable from other hosts"),
        (["--endpoint", "ipc:///tmp/x.sock", "--device", "tpu9"], "is not one tenantd knows"),
        (["--endpoint", "ipc:///tmp/x.sock", "--policy", "/nonexistent.toml"], "does not exist"),
        (["--endpoint", "ipc:///nonexistent/dir/d.sock"], "cannot bind ipc:///nonexistent/dir/d.sock"),
        (["--endpoint", "tcp://127.0.0.1:notaport"], "cannot bind"),
        (["--endpoint", "ipc:///tmp/x.sock", "--profile", "quantum"], "unknown device profile"),
    ],
    ids=["non-loopback", "unknown-device", "missing-policy", "bad-ipc-dir", "bad-port", "unknown-profile"],
)
def test_bad_configuration_exits_with_a_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tenantd", "serve", "--state-dir", str(tmp_path / "s"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
    )
    assert proc.returncode == 2 and message in proc.stderr and "tenantd ready" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_second_daemon_cannot_take_a_running_daemons_state_or_socket(tmp_path: Path) -> None:
    first = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock")
    try:
        for state, endpoint, message in (
            (tmp_path / "state", f"ipc://{tmp_path}/other.sock", "is in use by another tenantd"),
            (tmp_path / "other-state", f"ipc://{tmp_path}/d.sock", "is already served by another process"),
        ):
            second = subprocess.run(
                [sys.executable, "-m", "tenantd", "serve", "--endpoint", endpoint, "--state-dir", str(state)],
                capture_output=True,
                text=True,
                timeout=60,
                env=daemon_env(),
            )
            assert second.returncode == 2 and message in second.stderr, second.stderr
        with TenantClient(first.endpoint) as client:  # the first one is untouched
            assert client.ping()["pong"] is True
    finally:
        assert first.stop() == 0
    # Once it stopped, its state directory and socket path are free again.
    again = start_daemon_process(tmp_path / "state", f"ipc://{tmp_path}/d.sock")
    assert again.stop() == 0


def test_invalid_policy_names_the_key(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("slots = 0\nqueue_depht = 3\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tenantd",
            "serve",
            "--endpoint",
            f"ipc://{tmp_path}/s",
            "--state-dir",
            str(tmp_path / "s"),
            "--policy",
            str(policy),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
    )
    assert proc.returncode == 2
    assert "slots" in proc.stderr and "queue_depht" in proc.stderr


def test_done_when_ncs2_stops_at_the_memory_bound_and_edgetpu_switches(tmp_path: Path) -> None:
    """Issue 3's closing scenario, through the CLI: the same four models are refused at the memory
    bound of an emulated NCS2 and all served, kept loaded, with logged switches, on an emulated
    EdgeTPU."""
    from models import tiny

    paths = []
    for i in range(4):
        path = tmp_path / f"m{i}.tflite"
        path.write_bytes(tiny.sized_mlp(64 * 2**20, seed=i))  # ~132 MiB measured footprint each
        paths.append(path)
    ncs2 = start_daemon_process(tmp_path / "ncs2", f"ipc://{tmp_path}/ncs2.sock", policy=REPO / "policies/ncs2.toml")
    try:
        assert "profile=ncs2 emulated=true" in ncs2.ready_line
        codes = [tenantctl(ncs2.endpoint, "submit", str(p), "--name", p.stem, "--tenant", "alice") for p in paths]
        assert [c.returncode for c in codes] == [0, 0, 0, 1]
        assert "ADMISSION_DENIED" in codes[3].stderr and "short" in codes[3].stderr
        status = tenantctl(ncs2.endpoint, "status").stdout
        assert "profile ncs2 (emulated on this device)" in status and "last refused: model 'm3' needs" in status
    finally:
        assert ncs2.stop() == 0

    edgetpu = start_daemon_process(
        tmp_path / "edgetpu", f"ipc://{tmp_path}/edgetpu.sock", policy=REPO / "policies/edgetpu.toml"
    )
    try:
        for p in paths:
            assert tenantctl(edgetpu.endpoint, "submit", str(p), "--name", p.stem, "--tenant", "alice").returncode == 0
        x = np.zeros((1, 256), np.float32)
        with TenantClient(edgetpu.endpoint, tenant="alice") as alice:
            for _ in range(2):
                for p in paths:
                    alice.infer(p.stem, x)
        switches = tenantctl(edgetpu.endpoint, "--json", "events", "--event", "switch").stdout
        events = json.loads(switches)
        # Two rounds over four models: every run after the first follows another model.
        assert len(events) == 7 and not any(e["reload"] for e in events)
        assert all(e["overhead_ms"] is not None for e in events)
        assert "mean switch overhead" in tenantctl(edgetpu.endpoint, "status").stdout
    finally:
        assert edgetpu.stop() == 0


def serve_once(state: Path, endpoint: str) -> subprocess.CompletedProcess[str]:
    """``tenantd serve`` that is expected to stop before it is ready."""
    return subprocess.run(
        [sys.executable, "-m", "tenantd", "serve", "--endpoint", endpoint, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
        cwd=REPO,
    )


def test_an_emptied_database_stops_the_daemon_and_every_model_file_is_kept(
    tmp_path: Path, model_files: ModelFiles
) -> None:
    """The issue: tenantd.db truncated to zero bytes while the daemon was stopped. It must not start
    with no models and garbage-collect every model file: it exits 3 with one line saying what is
    wrong and how to recover, and restoring the database from a backup brings every model back."""
    state, endpoint = tmp_path / "state", f"ipc://{tmp_path}/d.sock"
    daemon = start_daemon_process(state, endpoint)
    try:
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            for name, path in (("a", model_files.mlp), ("b", model_files.mlp_b), ("c", model_files.two_input)):
                alice.submit_model(path, name)
    finally:
        assert daemon.stop() == 0
    db = state / "tenantd.db"
    backup = tmp_path / "tenantd.db.backup"
    backup.write_bytes(db.read_bytes())  # after a clean stop the database file holds everything
    blobs = {p: p.read_bytes() for p in (state / "blobs").rglob("*") if p.is_file()}
    assert len(blobs) == 3
    db.write_bytes(b"")

    for _ in range(2):  # and again: the refusal itself changed nothing
        proc = serve_once(state, endpoint)
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr and "tenantd ready" not in proc.stdout
        (message,) = [line for line in proc.stderr.splitlines() if line.startswith("tenantd: ")]
        assert f"{db} is empty (0 bytes)" in message and "restore tenantd.db from a backup" in message
        assert "the 3 model file(s) under" in message and "nothing was deleted" in message
        assert {p: p.read_bytes() for p in (state / "blobs").rglob("*") if p.is_file()} == blobs
        assert db.stat().st_size == 0

    db.write_bytes(backup.read_bytes())  # the recovery the message names
    again = start_daemon_process(state, endpoint)
    try:
        with TenantClient(again.endpoint, tenant="alice") as alice:
            assert sorted(m.name for m in alice.list_models()) == ["a", "b", "c"]
            x = np.full((1, 32), 0.25, np.float32)
            assert np.array_equal(alice.infer("a", x)["probs"], direct_litert(model_files.mlp, x)["probs"])
    finally:
        assert again.stop() == 0


def test_a_garbage_database_stops_the_daemon_with_a_clear_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "tenantd.db").write_bytes(b"\x00garbage, not SQLite\xff" * 200)
    proc = serve_once(state, f"ipc://{tmp_path}/d.sock")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith("tenantd: ")]
    assert "is not a readable SQLite database (file is not a database)" in message


def test_a_damaged_model_file_is_named_at_start_up_and_in_status(tmp_path: Path, model_files: ModelFiles) -> None:
    state, endpoint = tmp_path / "state", f"ipc://{tmp_path}/d.sock"
    first = start_daemon_process(state, endpoint)
    try:
        with TenantClient(first.endpoint, tenant="alice") as alice, TenantClient(first.endpoint, tenant="bob") as bob:
            sha = alice.submit_model(model_files.mlp, "alice_mlp").sha256
            bob.submit_model(model_files.mlp_b, "bob_mlp")
    finally:
        assert first.stop() == 0
    blob = next((state / "blobs").rglob(sha))
    size = blob.stat().st_size
    blob.write_bytes(blob.read_bytes()[: size // 2])  # cut short, as by a full disk

    second = start_daemon_process(state, endpoint)
    try:
        reason = f"its file {blob} has {size // 2} bytes, but {size} were stored"
        with TenantClient(second.endpoint) as operator:
            assert operator.status()["damaged_models"] == [{"model": "alice_mlp", "tenant": "alice", "reason": reason}]
            (event,) = operator.events(event="model.damaged")
            assert (event["model"], event["tenant"], event["reason"]) == ("alice_mlp", "alice", reason)
        x_a = np.full((1, 32), 0.5, np.float32)
        with TenantClient(second.endpoint, tenant="alice") as alice, TenantClient(second.endpoint, tenant="bob") as bob:
            with pytest.raises(E.RuntimeFailed, match="could not be loaded"):
                alice.infer("alice_mlp", x_a)
            x_b = np.full((1, 16), 0.5, np.float32)
            assert np.array_equal(bob.infer("bob_mlp", x_b)["probs"], direct_litert(model_files.mlp_b, x_b)["probs"])
            # Submitting it again repairs the file; the model is served and no longer listed.
            alice.submit_model(model_files.mlp, "alice_mlp", replace=True)
            assert np.array_equal(alice.infer("alice_mlp", x_a)["probs"], direct_litert(model_files.mlp, x_a)["probs"])
            assert alice.status()["damaged_models"] == []
    finally:
        assert second.stop() == 0
    assert f"model alice_mlp of tenant alice is damaged, not loaded: {reason}" in second.stderr()

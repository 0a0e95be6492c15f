"""End to end: ``tenantctl`` as a process against ``tenantd serve`` as a process, for the rough
edges an operator meets first: global flags after the command, a closed pipe, hints in flags'
words, unknown event kinds, a wrong server key, and the ``ping``/``infer`` smoke test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tenantclient import TenantClient
from tenantd import auth
from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import REPO, DaemonProcess, daemon_env, start_daemon_process

pytestmark = pytest.mark.e2e


def tenantctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantclient.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=daemon_env(),
        cwd=REPO,
        input=stdin,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles) -> Iterator[DaemonProcess]:
    """One daemon for the module; alice owns "mlp" (the tiny MLP) and "wake" (a real trained model)."""
    root = tmp_path_factory.mktemp("tenantctl")
    policy = root / "policy.toml"
    policy.write_text('switch_events = "all"\n')  # an event per switch: the long output tests need
    daemon = start_daemon_process(root / "state", f"ipc://{root}/tenantd.sock", policy=policy)
    try:
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            alice.submit_model(model_files.mlp, "mlp")
            alice.submit_model(model_files.wakeword, "wake")
        yield daemon
    finally:
        daemon.stop()


def test_global_flags_go_before_or_after_the_command(served: DaemonProcess) -> None:
    endpoint = served.endpoint
    for argv in (
        ["--endpoint", endpoint, "--json", "status"],
        ["status", "--json", "--endpoint", endpoint],  # the issue's `tenantctl status --json`
        ["--json", "status", "--endpoint", endpoint],
        ["--endpoint", endpoint, "status", "--json", "--timeout", "20", "--retries", "2"],
    ):
        done = tenantctl(*argv)
        assert done.returncode == 0, (argv, done.stderr)
        assert json.loads(done.stdout)["endpoint"] == endpoint
    # In a group too, and a flag given before the command is not reset by the command's parser.
    shown = tenantctl("--json", "policy", "show", "--endpoint", endpoint)
    assert shown.returncode == 0 and "policy" in json.loads(shown.stdout)
    grouped = tenantctl("policy", "--json", "show", "--endpoint", endpoint)
    assert grouped.returncode == 0 and "policy" in json.loads(grouped.stdout)
    listed = tenantctl("--json", "models", "--tenant", "alice", "--endpoint", endpoint)
    assert sorted(m["name"] for m in json.loads(listed.stdout)) == ["mlp", "wake"]
    assert tenantctl("status", "--retries", "-1", "--endpoint", endpoint).returncode == 2


def test_a_reader_that_stops_reading_is_not_an_error(served: DaemonProcess) -> None:
    # Far more than a pipe holds (64 KiB): alternating two models makes a switch event per request
    # (the daemon logs every switch: switch_events = "all").
    with TenantClient(served.endpoint, tenant="alice") as alice:
        for _ in range(600):
            alice.infer("mlp", np.ones((1, 32), np.float32))
            alice.infer("wake", np.zeros((1, 3, 40), np.int8))
    command = [sys.executable, "-m", "tenantclient.cli", "--endpoint", served.endpoint]
    for args in (["--json", "events", "--limit", "2000"], ["events", "--limit", "2000"]):
        full = tenantctl("--endpoint", served.endpoint, *args)
        assert full.returncode == 0 and len(full.stdout) > 2**17, full.stderr
        piped = subprocess.run(
            ["bash", "-c", 'set -o pipefail; "$@" | head -1', "bash", *command, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=daemon_env(),
            cwd=REPO,
        )
        assert piped.returncode == 0, piped.stderr  # pipefail: tenantctl's own status counts
        assert piped.stderr == "" and piped.stdout.count("\n") == 1


def test_hints_name_flags_and_unknown_event_kinds_are_an_error(served: DaemonProcess, model_files: ModelFiles) -> None:
    again = tenantctl(
        "--endpoint", served.endpoint, "submit", str(model_files.mlp), "--name", "mlp", "--tenant", "alice"
    )
    assert again.returncode == 1
    assert "ALREADY_EXISTS" in again.stderr and "add --replace to replace it" in again.stderr
    assert "replace=True" not in again.stderr

    unknown = tenantctl("events", "--event", "nosuch", "--endpoint", served.endpoint)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "BAD_REQUEST: no event kind 'nosuch'" in unknown.stderr
    assert "switch" in unknown.stderr and "model.refused" in unknown.stderr
    known = tenantctl("--json", "events", "--event", "model.loaded", "--endpoint", served.endpoint)
    assert known.returncode == 0 and {e["event"] for e in json.loads(known.stdout)} == {"model.loaded"}


def test_ping_and_infer_from_numpy_files(served: DaemonProcess, model_files: ModelFiles, tmp_path: Path) -> None:
    ping = tenantctl("ping", "--endpoint", served.endpoint)
    assert ping.returncode == 0 and ping.stdout.startswith(f"pong from {served.endpoint}: tenantd ")

    x = np.random.default_rng(3).standard_normal((1, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    ran = tenantctl(
        "infer", "mlp", str(tmp_path / "x.npy"), "--tenant", "alice", "--out", str(out), "--endpoint", served.endpoint
    )
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"^probs +float32 +\[1, 10\]$", ran.stdout, re.MULTILINE), ran.stdout
    assert re.search(r"^timings: queue [\d.]+ ms, .*compute [\d.]+ ms.*round trip [\d.]+ ms$", ran.stdout, re.MULTILINE)
    with np.load(out) as written:
        expected = direct_litert(model_files.mlp, x)
        assert set(written.files) == set(expected)
        for name, array in expected.items():
            np.testing.assert_allclose(written[name], array, rtol=1e-5, atol=1e-6)

    # A .npz file gives inputs by name; --json prints shapes, dtypes and timings.
    with TenantClient(served.endpoint, tenant="alice") as alice:
        (spec,) = next(m for m in alice.list_models() if m.name == "mlp").inputs
    savez: Any = np.savez  # its stubs read a ** mapping as its allow_pickle flag
    savez(tmp_path / "named.npz", **{spec.name: x})
    named = tenantctl(
        "--json", "infer", "mlp", str(tmp_path / "named.npz"), "--tenant", "alice", "--endpoint", served.endpoint
    )
    assert named.returncode == 0, named.stderr
    answer = json.loads(named.stdout)
    assert answer["outputs"] == {"probs": {"dtype": "float32", "shape": [1, 10]}}
    assert answer["timings"]["compute_ms"] >= 0 and answer["timings"]["round_trip_ms"] > 0

    wrong = tenantctl("infer", "mlp", str(tmp_path / "x.npy"), "--tenant", "bob", "--endpoint", served.endpoint)
    assert wrong.returncode == 1 and "FORBIDDEN" in wrong.stderr
    (tmp_path / "x.txt").write_text("1 2 3")
    assert tenantctl("infer", "mlp", str(tmp_path / "x.txt"), "--endpoint", served.endpoint).returncode == 2
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    bad = tenantctl("infer", "mlp", str(tmp_path / "bad.npy"), "--endpoint", served.endpoint)
    assert bad.returncode == 2 and "is not a numpy .npy file" in bad.stderr


def test_a_wrong_server_key_says_the_handshake_failed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = auth.add_tenant(state, "alice")
    elsewhere = auth.KeyRing.load(tmp_path / "elsewhere")
    elsewhere.server_keys()
    daemon = start_daemon_process(state, "tcp://127.0.0.1:*")
    try:
        right = ["--key", str(secret), "--server-key", str(state / "keys" / "server.key")]
        assert tenantctl("ping", *right, "--endpoint", daemon.endpoint).returncode == 0
        # A 60 s timeout: were the failure not seen at the handshake, this would end 3 (no reply).
        wrong = ["--key", str(secret), "--server-key", str(elsewhere.server_public_key_file), "--timeout", "60"]
        refused = tenantctl("ping", *wrong, "--endpoint", daemon.endpoint)
        assert refused.returncode == 1, refused.stderr
        assert "the handshake with" in refused.stderr and "the server key is not this daemon's" in refused.stderr
        stranger = auth.add_tenant(tmp_path / "elsewhere", "mallory")
        unknown = ["--key", str(stranger), "--server-key", str(state / "keys" / "server.key"), "--timeout", "60"]
        refused = tenantctl("status", *unknown, "--endpoint", daemon.endpoint)
        assert refused.returncode == 1 and "refused this client's key" in refused.stderr
    finally:
        daemon.stop()

"""Integration: CurveZMQ tenant identity through a real daemon. The key, not the header, says who
a request is from; unknown keys are refused at the handshake; operator-only commands."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from tenantclient import AsyncTenantClient, TenantClient
from tenantclient import errors as E
from tenantd import auth
from tenantd.config import Policy
from tenantd.daemon import Daemon
from tests.conftest import ModelFiles
from tests.support.daemon import daemon_in_thread

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


@pytest.fixture
def keyed(tmp_path: Path, endpoint: str) -> Iterator[tuple[Daemon, Path, dict[str, Path]]]:
    state = tmp_path / "state"
    issued = {name: auth.add_tenant(state, name) for name in ("alice", "bob")}
    issued["ops"] = auth.add_tenant(state, "ops", "operator")
    with daemon_in_thread(state, endpoint, Policy(), auth="keys") as daemon:
        yield daemon, state / "keys" / "server.key", issued


def client(endpoint: str, server_key: Path, key: Path, tenant: str | None = None, timeout: float = 10) -> TenantClient:
    return TenantClient(endpoint, tenant=tenant, key_file=key, server_key=server_key, timeout=timeout)


def test_the_key_decides_the_tenant(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, model_files: ModelFiles
) -> None:
    daemon, server_key, keys = keyed
    x = np.zeros((1, 32), np.float32)
    with client(endpoint, server_key, keys["alice"]) as alice:  # no tenant named: the key says
        info = alice.submit_model(model_files.mlp, "m")
        assert info.owner == "alice"
        assert alice.infer("m", x)["probs"].shape == (1, 10)
    with client(endpoint, server_key, keys["bob"]) as bob:
        with pytest.raises(E.Forbidden, match="belongs to another tenant"):
            bob.infer("m", x)
        assert bob.list_models() == []  # bob cannot see alice's models
        with pytest.raises(E.Forbidden):
            bob.remove_model("m")
        with pytest.raises(E.Forbidden):
            bob.events()  # the event log names every tenant: operator only
    # Naming another tenant in the header does not make bob alice.
    with client(endpoint, server_key, keys["bob"], tenant="alice") as bob_as_alice:
        with pytest.raises(E.Forbidden, match="belongs to tenant 'bob', not 'alice'"):
            bob_as_alice.infer("m", x)
    assert daemon.catalog.models["m"].owner == "alice"


def test_unknown_keys_are_refused(keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, tmp_path: Path) -> None:
    _, server_key, _ = keyed
    stranger = auth.add_tenant(tmp_path / "elsewhere", "mallory")  # a valid key the daemon never saw
    with client(endpoint, server_key, stranger, timeout=5.0) as mallory, pytest.raises(E.KeyRefused):
        mallory.ping()  # the handshake fails; the client's socket monitor sees it


def test_operator_only_commands(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, model_files: ModelFiles
) -> None:
    daemon, server_key, keys = keyed
    with client(endpoint, server_key, keys["alice"]) as alice:
        alice.submit_model(model_files.mlp, "m")
        with pytest.raises(E.Forbidden, match="only the operator"):
            alice.policy_set("queue_depth_per_tenant = 3\n")
        with pytest.raises(E.Forbidden, match="only the operator"):
            alice.reload_keys()
    with client(endpoint, server_key, keys["ops"]) as ops:
        assert ops.policy_set("queue_depth_per_tenant = 3\n")["changed"] == ["queue_depth_per_tenant"]
        assert {m.name for m in ops.list_models()} == {"m"}  # the operator sees every tenant's models
        assert any(e["event"] == "policy.changed" for e in ops.events())
        ops.remove_model("m")  # and may remove any
        assert "m" not in daemon.catalog.models


def test_keys_added_and_withdrawn_while_running(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, tmp_path: Path
) -> None:
    _, server_key, keys = keyed
    carol = auth.add_tenant(tmp_path / "state", "carol")
    with client(endpoint, server_key, keys["ops"]) as ops:
        assert "tenant:carol" in ops.reload_keys()
    with client(endpoint, server_key, carol) as c:
        assert c.ping()["pong"] is True
        auth.remove(tmp_path / "state", "carol")
        with client(endpoint, server_key, keys["ops"]) as ops:
            ops.reload_keys()
        # Her open connection stays up, but its requests are refused from now on.
        with pytest.raises(E.Forbidden, match="not registered"):
            c.ping()


def test_a_tenant_sees_the_device_but_not_the_other_tenants(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, model_files: ModelFiles
) -> None:
    _, server_key, keys = keyed
    with client(endpoint, server_key, keys["alice"]) as alice:
        alice.submit_model(model_files.mlp, "a")
    with client(endpoint, server_key, keys["bob"]) as bob:
        bob.submit_model(model_files.mlp_b, "b")
        status = bob.status()
        assert status["tenants"] == ["bob"] and status["resident"] == ["b"]
        assert status["residency"]["loaded"] == ["b"] and status["models"] == 1
        assert status["memory"]["models_admitted"] == 2  # the device's figures stay whole
        with pytest.raises(E.Forbidden):
            bob.policy_show()  # every tenant's quotas are in it
    with client(endpoint, server_key, keys["ops"]) as ops:
        assert ops.status()["tenants"] == ["alice", "bob"]


def test_a_refused_key_fails_every_call_at_once_instead_of_hanging(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, tmp_path: Path
) -> None:
    _, server_key, _ = keyed
    stranger = auth.add_tenant(tmp_path / "elsewhere", "mallory")
    with client(endpoint, server_key, stranger, timeout=5.0) as mallory:
        for _ in range(3):  # after the handshake failed the socket has no peer to send to
            with pytest.raises(E.KeyRefused, match="refused this client's key"):
                mallory.ping()


def test_a_wrong_server_key_is_named_as_soon_as_the_handshake_fails(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, tmp_path: Path
) -> None:
    """A registered key with another daemon's server key: the daemon cannot read the client's
    greeting and hangs up, so no reply would ever come. The clients say why (KeyRefused) instead
    of timing out; the long timeout makes a regression show as RequestTimeout, not as a slow test."""
    _, _, keys = keyed
    other_daemon = auth.KeyRing.load(tmp_path / "elsewhere")
    other_daemon.server_keys()  # creates its key pair
    wrong_server = other_daemon.server_public_key_file
    with client(endpoint, wrong_server, keys["alice"], timeout=60.0) as lost:
        for _ in range(2):
            with pytest.raises(E.KeyRefused, match="the server key is not this daemon's"):
                lost.ping()

    async def run() -> None:
        async with AsyncTenantClient(endpoint, key_file=keys["alice"], server_key=wrong_server, timeout=60) as lost:
            with pytest.raises(E.KeyRefused, match=r"handshake .* failed"):
                await lost.ping()

    asyncio.run(run())


def test_a_replaced_key_loses_its_open_connection(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, tmp_path: Path
) -> None:
    _, server_key, keys = keyed
    with client(endpoint, server_key, keys["alice"]) as old:
        assert old.list_models() == []
        fresh = auth.add_tenant(tmp_path / "state", "alice", replace=True)  # key rotation
        with client(endpoint, server_key, keys["ops"]) as ops:
            ops.reload_keys()
        with pytest.raises(E.Forbidden, match="not registered"):
            old.list_models()
    with client(endpoint, server_key, fresh) as new:
        assert new.list_models() == []


def test_the_async_client_says_its_key_was_refused(
    keyed: tuple[Daemon, Path, dict[str, Path]], endpoint: str, tmp_path: Path
) -> None:
    import asyncio

    from tenantclient import AsyncTenantClient

    _, server_key, keys = keyed
    stranger = auth.add_tenant(tmp_path / "elsewhere", "mallory")

    async def run() -> None:
        async with AsyncTenantClient(endpoint, key_file=stranger, server_key=server_key, timeout=5) as mallory:
            for _ in range(2):
                with pytest.raises(E.KeyRefused):
                    await mallory.ping()
        async with AsyncTenantClient(endpoint, key_file=keys["alice"], server_key=server_key) as alice:
            assert (await alice.ping())["pong"] is True  # a registered key is unaffected

    asyncio.run(run())

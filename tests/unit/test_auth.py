"""Unit tests for tenantd.auth: the keys folder, and real CURVE handshakes answered by the ZAP handler.

Every socket test runs a real ROUTER (configured as the daemon's will be) and real DEALER clients in
another context over ipc://. A refusal is observed where it happens, on the client's socket monitor
(EVENT_HANDSHAKE_FAILED_*); the ROUTER is then polled briefly to confirm nothing got through.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from tenantd.auth import (
    AuthConfigError,
    Authenticator,
    Identity,
    KeyRing,
    add_tenant,
    identity_of,
    remove,
)
from tenantwire.curve import ZAP_DOMAIN, KeyFileError, configure_client, configure_server, load_public_key

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq was built without CURVE support")

ARRIVE_MS = 5000  # a message that must arrive: generous, only a failure waits this long
REFUSED_MS = 500  # after a failed handshake, how long the ROUTER is watched for a message that must not come
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

ALICE = Identity("alice", "tenant")
OPS = Identity("ops", "operator")


@dataclass
class Server:
    state_dir: Path
    endpoint: str
    keyring: KeyRing
    authenticator: Authenticator
    router: zmq.Socket[bytes]
    public_key: bytes

    @property
    def target(self) -> tuple[str, bytes]:
        return self.endpoint, self.public_key


@dataclass
class Certs:
    alice: Path
    ops: Path
    mallory: Path  # a valid certificate that was never registered


class Clients:
    """DEALER sockets in their own context (as a tenant's process would have), with monitors."""

    def __init__(self) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sockets: list[zmq.Socket[bytes]] = []
        self.monitors: dict[zmq.Socket[bytes], zmq.Socket[bytes]] = {}

    def connect(self, endpoint: str, server_key: bytes, cert: Path | None) -> zmq.Socket[bytes]:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        self.monitors[sock] = sock.get_monitor_socket()
        if cert is not None:
            configure_client(sock, cert, server_key)
        sock.connect(endpoint)
        return sock

    def wait_for_refusal(self, sock: zmq.Socket[bytes]) -> Mapping[str, object]:
        """The client's handshake-failed event (the refusal itself), or a test failure."""
        monitor = self.monitors[sock]
        deadline = time.monotonic() + ARRIVE_MS / 1000
        while (remaining := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(remaining * 1000) + 1):
                break
            event = recv_monitor_message(monitor)
            if event["event"] & HANDSHAKE_FAILED:
                return event
            assert event["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED, "the handshake succeeded"
        pytest.fail(f"no handshake failure reported within {ARRIVE_MS} ms")

    def close(self) -> None:
        for sock in self.sockets:
            sock.disable_monitor()
            self.monitors[sock].close(linger=0)
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def certs(tmp_path: Path, state_dir: Path) -> Certs:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _, mallory = zmq.auth.create_certificates(elsewhere, "mallory")
    return Certs(
        alice=add_tenant(state_dir, "alice"),
        ops=add_tenant(state_dir, "ops", role="operator"),
        mallory=Path(mallory),
    )


@pytest.fixture
def server(tmp_path: Path, state_dir: Path, certs: Certs) -> Iterator[Server]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    keyring = KeyRing.load(state_dir)
    authenticator = Authenticator(context, keyring)
    authenticator.start()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    keys = keyring.server_keys()
    configure_server(router, keys)
    endpoint = f"ipc://{tmp_path}/auth.sock"
    router.bind(endpoint)
    try:
        yield Server(state_dir, endpoint, keyring, authenticator, router, keys[0])
    finally:
        router.close(linger=0)
        authenticator.stop()
        context.term()


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    yield c
    c.close()


def exchange(server: Server, client: zmq.Socket[bytes], payload: bytes = b"hello") -> list[Identity | None]:
    """Send a request, answer it, and return the identity read from each frame the ROUTER got."""
    client.send_multipart([b"", payload])
    assert server.router.poll(ARRIVE_MS), "the message from an accepted key did not arrive"
    frames = server.router.recv_multipart(copy=False)
    assert frames[-1].bytes == payload
    server.router.send_multipart([frames[0], b"", b"reply to " + payload])
    assert client.poll(ARRIVE_MS), "the reply did not come back"
    assert client.recv_multipart() == [b"", b"reply to " + payload]
    return [identity_of(frame) for frame in frames]


def assert_nothing_arrives(router: zmq.Socket[bytes]) -> None:
    assert router.poll(REFUSED_MS) == 0, "a message from a refused connection reached the server"


# ------------------------------------------------------------------ handshakes


def test_a_tenant_key_is_identified_as_that_tenant(server: Server, clients: Clients, certs: Certs) -> None:
    identities = exchange(server, clients.connect(*server.target, certs.alice))
    # Every frame carries the metadata, the ROUTER's routing-id frame and the delimiter included.
    assert identities == [ALICE, ALICE, ALICE]
    assert identities[0] is not None and identities[0].user_id == "tenant:alice"
    assert server.authenticator.accepted == 1


def test_an_operator_key_is_identified_as_an_operator(server: Server, clients: Clients, certs: Certs) -> None:
    identity = exchange(server, clients.connect(*server.target, certs.ops))[-1]
    assert identity == OPS
    assert identity is not None and identity.is_operator and identity.user_id == "operator:ops"


def test_an_unregistered_key_is_refused(server: Server, clients: Clients, certs: Certs) -> None:
    mallory = clients.connect(*server.target, certs.mallory)
    mallory.send_multipart([b"", b"let me in"])
    event = clients.wait_for_refusal(mallory)
    assert event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    assert event["value"] == 400  # the ZAP status code, passed on to the client
    assert_nothing_arrives(server.router)
    assert server.authenticator.refused == 1
    # The server is up and still serving registered keys.
    assert exchange(server, clients.connect(*server.target, certs.alice))[-1] == ALICE


def test_a_client_without_curve_keys_is_refused(server: Server, clients: Clients) -> None:
    plain = clients.connect(*server.target, None)
    plain.send_multipart([b"", b"hello"])
    clients.wait_for_refusal(plain)
    assert_nothing_arrives(server.router)


def test_without_a_running_authenticator_every_key_is_refused(
    tmp_path: Path, state_dir: Path, certs: Certs, clients: Clients
) -> None:
    """Fail closed: libzmq's default is to let any CURVE key in when no ZAP handler is bound."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        keyring = KeyRing.load(state_dir)
        configure_server(router, keyring.server_keys())
        endpoint = f"ipc://{tmp_path}/unguarded.sock"
        router.bind(endpoint)
        alice = clients.connect(endpoint, keyring.server_keys()[0], certs.alice)
        alice.send_multipart([b"", b"hello"])
        clients.wait_for_refusal(alice)
        assert_nothing_arrives(router)
    finally:
        router.close(linger=0)
        context.term()


def test_a_key_added_while_running_is_accepted_after_reload(server: Server, clients: Clients, state_dir: Path) -> None:
    bob_cert = add_tenant(state_dir, "bob")
    early = clients.connect(*server.target, bob_cert)
    early.send_multipart([b"", b"too early"])
    clients.wait_for_refusal(early)  # not loaded yet: the running ring decides
    assert_nothing_arrives(server.router)

    server.authenticator.reload()
    assert server.keyring.identity_for(load_public_key(state_dir / "keys/tenants/bob.key")) == Identity("bob", "tenant")
    # A refused socket does not reconnect (libzmq ends the session): a new connection is needed.
    assert exchange(server, clients.connect(*server.target, bob_cert))[-1] == Identity("bob", "tenant")


def test_a_removed_key_is_refused_for_new_connections_only(
    server: Server, clients: Clients, certs: Certs, state_dir: Path, tmp_path: Path
) -> None:
    connected = clients.connect(*server.target, certs.alice)
    assert exchange(server, connected)[-1] == ALICE
    tenants_copy = Path(shutil.copy(certs.alice, tmp_path / "alice.key_secret"))  # the tenant keeps its own

    remove(state_dir, "alice")
    server.authenticator.reload()
    assert ALICE not in server.keyring
    assert not (state_dir / "keys/issued/tenants/alice.key_secret").exists()

    again = clients.connect(*server.target, tenants_copy)
    again.send_multipart([b"", b"hello"])
    clients.wait_for_refusal(again)
    assert_nothing_arrives(server.router)
    # ZAP ran when the first connection was made; libzmq keeps it open and labelled. The daemon
    # enforces a removal on open connections by checking `identity in keyring` per message.
    identity = exchange(server, connected, b"still here")[-1]
    assert identity == ALICE and identity not in server.keyring


def test_one_authenticator_per_context(server: Server) -> None:
    second = Authenticator(server.authenticator.context, server.keyring)
    with pytest.raises(AuthConfigError, match="already bound"):
        second.start()
    second.stop()  # never started: nothing to do


def test_zap_requests_are_refused_unless_curve_in_our_domain(server: Server) -> None:
    auth = server.authenticator
    alice_raw = zmq.utils.z85.decode(load_public_key(server.state_dir / "keys/tenants/alice.key"))
    base = [b"1.0", b"7", ZAP_DOMAIN.encode(), b"127.0.0.1", b""]
    alice_z85 = load_public_key(server.state_dir / "keys/tenants/alice.key")
    # The User-Id carries the key too, so the daemon can tell a withdrawn or replaced key per message.
    accepted = [b"1.0", b"7", b"200", b"OK", b"tenant:alice:" + alice_z85, b""]
    assert auth.handle([*base, b"CURVE", alice_raw]) == accepted

    def status(request: list[bytes]) -> tuple[bytes, bytes, bytes]:
        reply = auth.handle(request)
        return reply[2], reply[3], reply[4]

    assert status([*base, b"CURVE", os.urandom(32)]) == (b"400", b"unknown key", b"")
    assert status([b"1.0", b"7", b"other", b"", b"", b"CURVE", alice_raw])[:2] == (b"400", b"unknown domain")
    assert status([*base, b"PLAIN", b"alice", b"secret"])[0] == b"400"
    assert status([*base, b"NULL"])[0] == b"400"
    assert status([b"0.9", b"7", *base[2:], b"CURVE", alice_raw])[0] == b"400"
    assert status([b"1.0", b"7"])[0] == b"400"


def test_identity_of_an_unauthenticated_message_is_none(tmp_path: Path) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        router.bind(f"ipc://{tmp_path}/plain.sock")
        dealer.connect(f"ipc://{tmp_path}/plain.sock")
        dealer.send(b"hello")
        assert router.poll(ARRIVE_MS)
        assert [identity_of(f) for f in router.recv_multipart(copy=False)] == [None, None]
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        context.term()


def test_user_id_format_round_trips() -> None:
    for identity in (ALICE, OPS, Identity("a.b-c_9", "tenant")):
        assert Identity.parse(identity.user_id) == identity
    assert str(ALICE) == "tenant:alice"
    for bad in ("alice", "tenant:", "admin:alice", "tenant:-x", ""):
        assert Identity.parse(bad) is None
    # A key fingerprint after the name (z85 may itself hold colons) is not part of the identity.
    assert Identity.parse("tenant:a:k3y:with:colons") == Identity("a", "tenant")


# ------------------------------------------------------------------ the keys folder


def test_server_keys_are_created_once_with_a_private_secret(state_dir: Path) -> None:
    ring = KeyRing.load(state_dir)
    keys_dir = state_dir / "keys"
    assert not (keys_dir / "server.key_secret").exists()  # created on first use, not on load
    public, secret = ring.server_keys()
    assert stat.S_IMODE((keys_dir / "server.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) & 0o077 == 0
    assert zmq.auth.load_certificate(keys_dir / "server.key_secret") == (public, secret)
    assert zmq.auth.load_certificate(ring.server_public_key_file) == (public, None)
    assert zmq.curve_public(secret) == public

    assert KeyRing.load(state_dir).server_keys() == (public, secret)  # reused, not regenerated
    (keys_dir / "server.key").unlink()
    assert ring.server_keys() == (public, secret)  # the public file is rewritten from the secret
    assert load_public_key(keys_dir / "server.key") == public

    (keys_dir / "server.key_secret").chmod(0o644)
    with pytest.raises(AuthConfigError, match=r"server\.key_secret.*chmod 600"):
        ring.server_keys()


def test_add_tenant_issues_a_secret_certificate_and_registers_its_public_key(state_dir: Path) -> None:
    secret_file = add_tenant(state_dir, "alice")
    assert secret_file == state_dir / "keys/issued/tenants/alice.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(secret_file)
    assert secret is not None and zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(state_dir / "keys/tenants/alice.key") == (public, None)
    assert KeyRing.load(state_dir).identity_for(public) == ALICE

    add_tenant(state_dir, "alice", role="operator")  # the same name in another role is another identity
    ring = KeyRing.load(state_dir)
    assert ring.identities() == [Identity("alice", "operator"), ALICE]

    with pytest.raises(AuthConfigError, match=r"already registered.*tenants/alice\.key"):
        add_tenant(state_dir, "alice")
    assert add_tenant(state_dir, "alice", replace=True) == secret_file  # a new key
    ring.reload()
    assert ring.identity_for(public) is None
    assert ring.identity_for(load_public_key(secret_file)) == ALICE

    with pytest.raises(AuthConfigError, match="not valid"):
        add_tenant(state_dir, "../evil")
    with pytest.raises(AuthConfigError, match="role 'admin'"):
        add_tenant(state_dir, "carol", role="admin")

    remove(state_dir, "alice", role="operator")
    with pytest.raises(AuthConfigError, match=r"no operator named 'alice'.*operators/alice\.key"):
        remove(state_dir, "alice", role="operator")
    assert KeyRing.load(state_dir).identities() == [ALICE]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _public_cert(key: bytes) -> str:
    return f'metadata\ncurve\n    public-key = "{key.decode()}"\n'


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("garbage", "not a ZeroMQ certificate"),
        ("short key", "not a 40-character z85"),
        ("not z85", "not a 40-character z85"),
        ("z85 overflow", "not a 40-character z85"),
        ("secret registered", "holds a secret key"),
        ("name with a space", "name 'has space' is not valid"),
        ("name starting with a dash", "name '-x' is not valid"),
        ("name too long", "is not valid"),
        ("duplicate", r"same public key as .*tenants/alice\.key"),
        ("a directory", "cannot be read"),
    ],
)
def test_an_invalid_keys_folder_raises_naming_the_file(state_dir: Path, case: str, message: str) -> None:
    add_tenant(state_dir, "alice")
    tenants = state_dir / "keys/tenants"
    alice_public = load_public_key(tenants / "alice.key")
    bad = {
        "garbage": lambda: _write(tenants / "bob.key", "not a certificate\n"),
        "short key": lambda: _write(tenants / "bob.key", _public_cert(b"abc")),
        "not z85": lambda: _write(tenants / "bob.key", _public_cert(b"~" * 40)),
        "z85 overflow": lambda: _write(tenants / "bob.key", _public_cert(b"#" * 40)),
        "secret registered": lambda: Path(shutil.copy(add_tenant(state_dir, "bob"), tenants / "carol.key")),
        "name with a space": lambda: _write(tenants / "has space.key", _public_cert(zmq.curve_keypair()[0])),
        "name starting with a dash": lambda: _write(tenants / "-x.key", _public_cert(zmq.curve_keypair()[0])),
        "name too long": lambda: _write(tenants / f"{'a' * 65}.key", _public_cert(zmq.curve_keypair()[0])),
        "duplicate": lambda: _write(state_dir / "keys/operators/root.key", _public_cert(alice_public)),
        "a directory": lambda: _mkdir(tenants / "dir.key"),
    }[case]()
    with pytest.raises(AuthConfigError, match=message) as raised:
        KeyRing.load(state_dir)
    assert str(bad) in str(raised.value)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_a_failed_reload_keeps_the_keys_loaded_before(state_dir: Path) -> None:
    add_tenant(state_dir, "alice")
    ring = KeyRing.load(state_dir)
    _write(state_dir / "keys/tenants/bob.key", "oops")
    with pytest.raises(AuthConfigError, match=r"bob\.key"):
        ring.reload()
    assert ring.identities() == [ALICE]


def test_other_files_in_the_keys_folder_are_ignored(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_tenant(state_dir, "alice")
    _write(state_dir / "keys/tenants/README", "public keys go here\n")
    _write(state_dir / "keys/tenants/.alice.key.swp", "editor junk")
    assert KeyRing.load(state_dir).identities() == [ALICE]
    assert "ignoring" in caplog.text and "README" in caplog.text and ".swp" not in caplog.text


def test_configure_client_needs_a_secret_certificate_and_a_server_key(state_dir: Path) -> None:
    add_tenant(state_dir, "alice")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        server_key = KeyRing.load(state_dir).server_keys()[0]
        with pytest.raises(KeyFileError, match=r"tenants/alice\.key holds no secret key"):
            configure_client(sock, state_dir / "keys/tenants/alice.key", server_key)
        with pytest.raises(KeyFileError, match="server's public key"):
            configure_client(sock, state_dir / "keys/issued/tenants/alice.key_secret", b"short")
        with pytest.raises(KeyFileError, match="cannot be read"):
            configure_client(sock, state_dir / "missing.key_secret", server_key)
        configure_client(sock, state_dir / "keys/issued/tenants/alice.key_secret", server_key)  # accepted
    finally:
        sock.close(linger=0)
        context.term()

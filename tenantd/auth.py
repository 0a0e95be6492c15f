"""Tenant identity: CurveZMQ keys, the keys folder, and the ZAP handler that maps a key to a tenant.

This module owns everything that decides *who* sent a message, so that the daemon can trust the
sender rather than the tenant named in a request header. Operators register public keys as
standard ``zmq.auth`` certificates under ``<state-dir>/keys/tenants/NAME.key`` and
``<state-dir>/keys/operators/NAME.key`` (:func:`add_tenant` generates a pair and writes them);
:class:`KeyRing` reads that folder, strictly (a bad file, a bad name or a key registered twice is
an :class:`AuthConfigError` naming the file), and owns the daemon's own server keypair in
``<state-dir>/keys/server.key`` / ``server.key_secret`` (created on first use, secret mode 0600).
:class:`Authenticator` answers libzmq's ZAP requests for one :class:`zmq.Context`: it accepts a
CURVE handshake only for a key in the ring (unknown keys fail the handshake, so their messages never
reach the daemon) and labels the connection with a ZAP User-Id ``ROLE:NAME`` (``tenant:alice``,
``operator:ops``) that libzmq attaches to every message received on it, where :func:`identity_of`
reads it back. :func:`configure_server` and :func:`configure_client` set the socket options on
either side.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import zmq
import zmq.auth
from zmq.utils import z85

from tenantd.config import ConfigError
from tenantwire.curve import (
    RAW_KEY_LENGTH,
    SECRET_SUFFIX,
    ZAP_DOMAIN,
    KeyFileError,
    read_certificate,
    z85_key,
)
from tenantwire.protocol import NAME_RE

log = logging.getLogger("tenantd.auth")

Role = Literal["tenant", "operator"]
ROLES: tuple[Role, ...] = ("tenant", "operator")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27: one ZAP handler per context
ZAP_VERSION = b"1.0"

KEYS_DIR = "keys"
ROLE_DIRS: dict[Role, str] = {"tenant": "tenants", "operator": "operators"}
ISSUED_DIR = "issued"
SERVER_PUBLIC_FILE = "server.key"
SERVER_SECRET_FILE = "server.key_secret"
PUBLIC_SUFFIX = ".key"

_REFUSALS_REMEMBERED = 1024  # distinct refused keys logged at WARNING before the memory is reset


class AuthConfigError(ConfigError, KeyFileError):
    """The keys folder (or a key file handed to a client) is invalid; the message names the file."""


class KeyExists(AuthConfigError):
    """:func:`add_tenant` without ``replace``: that name already has a key."""


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return read_certificate(path)
    except KeyFileError as exc:
        raise AuthConfigError(str(exc)) from None


@dataclass(frozen=True, order=True)
class Identity:
    """Who holds a registered key: a tenant, or an operator (who may administer the daemon)."""

    name: str
    role: Role

    @property
    def user_id(self) -> str:
        """The ZAP User-Id for this identity: ``ROLE:NAME``, e.g. ``tenant:alice``. Names cannot
        contain ``:``, so the first colon always separates the role."""
        return f"{self.role}:{self.name}"

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @classmethod
    def parse(cls, user_id: str) -> Identity | None:
        """The identity a :attr:`user_id` names, or None if it is not one of ours. A key
        fingerprint after a second colon (``ROLE:NAME:KEY``, see :func:`key_of`) is ignored."""
        role, sep, rest = user_id.partition(":")
        name = rest.partition(":")[0]
        checked = _role_or_none(role)
        if not sep or checked is None or not NAME_RE.fullmatch(name):
            return None
        return cls(name, checked)

    def __str__(self) -> str:
        return self.user_id


# ---------------------------------------------------------------------------------- key files


def _role_or_none(role: str) -> Role | None:
    if role == "tenant":
        return "tenant"
    if role == "operator":
        return "operator"
    return None


def _check_role(role: str) -> Role:
    checked = _role_or_none(role)
    if checked is None:
        raise AuthConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return checked


def _check_name(name: str, role: Role) -> None:
    if not NAME_RE.fullmatch(name):
        raise AuthConfigError(f"{role} name {name!r} is not valid (it must match {NAME_RE.pattern})")


def _write_certificate(path: Path, public: bytes, secret: bytes | None, *, replace: bool) -> None:
    """Write a certificate in ``zmq.auth``'s format, atomically; a secret one is created with mode
    0600 and never exists with a wider one. Without ``replace``, an existing file raises
    FileExistsError and is left as it is."""
    now = datetime.now()
    if secret is None:
        banner = "ZeroMQ CURVE Public Certificate\n#   Exchange securely; this file holds no secret."
    else:
        banner = "ZeroMQ CURVE **Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS."
    text = f"#   ****  Generated on {now} by tenantd  ****\n#   {banner}\n\nmetadata\ncurve\n"
    text += f'    public-key = "{public.decode("ascii")}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret is not None else 0o644)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the path exists: never overwrite a key by accident
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keys_dir(state_dir: Path | str) -> Path:
    """``<state-dir>/keys`` (mode 0700: it holds the server's secret) and its role folders."""
    keys = Path(state_dir) / KEYS_DIR
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in ROLE_DIRS.values():
        (keys / folder).mkdir(exist_ok=True)
    return keys


def _read_keys(keys_dir: Path) -> dict[bytes, Identity]:
    keys: dict[bytes, Identity] = {}
    files: dict[bytes, Path] = {}
    for role, folder in ROLE_DIRS.items():
        directory = keys_dir / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.name.startswith("."):
                continue  # editors' and our own temporary files
            if not path.name.endswith(PUBLIC_SUFFIX):
                log.warning(
                    "ignoring %s: %s keys are registered as NAME%s public certificates%s",
                    path,
                    role,
                    PUBLIC_SUFFIX,
                    " (and a secret certificate does not belong on the daemon)"
                    if path.name.endswith(SECRET_SUFFIX)
                    else "",
                )
                continue
            name = path.name[: -len(PUBLIC_SUFFIX)]
            if not NAME_RE.fullmatch(name):
                raise AuthConfigError(
                    f"key file {path}: {role} name {name!r} is not valid (it must match {NAME_RE.pattern})"
                )
            public, secret = _read_certificate(path)
            if secret is not None:
                raise AuthConfigError(
                    f"key file {path} holds a secret key: register only the public certificate "
                    f"(NAME{PUBLIC_SUFFIX}); the {role} keeps NAME{SECRET_SUFFIX}"
                )
            if public in keys:
                raise AuthConfigError(
                    f"key file {path} registers the same public key as {files[public]}: each tenant and "
                    "operator needs a key of its own"
                )
            keys[public] = Identity(name, role)
            files[public] = path
    return keys


def _server_keys(keys_dir: Path) -> tuple[bytes, bytes]:
    secret_file = keys_dir / SERVER_SECRET_FILE
    public_file = keys_dir / SERVER_PUBLIC_FILE
    if not secret_file.exists():
        new_public, new_secret = zmq.curve_keypair()
        try:
            _write_certificate(secret_file, new_public, new_secret, replace=False)
            log.info("created the daemon's CURVE keypair in %s", secret_file)
        except FileExistsError:
            pass  # created meanwhile by another process: use that one
    mode = secret_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthConfigError(
            f"key file {secret_file} is accessible to other users (mode {stat.filemode(mode)}); "
            f"run: chmod 600 {secret_file}"
        )
    public, secret = _read_certificate(secret_file)
    if secret is None:
        raise AuthConfigError(f"key file {secret_file} holds no secret-key line")
    if not public_file.exists() or _read_certificate(public_file)[0] != public:
        if public_file.exists():
            log.warning("%s did not match %s; rewriting it from the secret", public_file, secret_file)
        _write_certificate(public_file, public, None, replace=True)
    return public, secret


class KeyRing:
    """The registered public keys of one state directory, by key.

    Lookups are safe from any thread: :meth:`reload` builds a new map and swaps it in whole, and
    leaves the old one in place when the folder is invalid."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.keys_dir = self.state_dir / KEYS_DIR
        self._keys: dict[bytes, Identity] = {}
        self._identities: frozenset[Identity] = frozenset()

    @classmethod
    def load(cls, state_dir: Path | str) -> KeyRing:
        """Read ``<state-dir>/keys`` (created, empty, if absent). Raises :class:`AuthConfigError`."""
        ring = cls(state_dir)
        ring.reload()
        return ring

    def reload(self) -> None:
        """Re-read the keys folder; on error, raise and keep the keys loaded before."""
        keys = _read_keys(_keys_dir(self.state_dir))
        self._keys, self._identities = keys, frozenset(keys.values())
        log.info("loaded %d key(s) from %s", len(keys), self.keys_dir)

    def server_keys(self) -> tuple[bytes, bytes]:
        """The daemon's (public, secret) z85 keypair, created on first use."""
        return _server_keys(_keys_dir(self.state_dir))

    @property
    def server_public_key_file(self) -> Path:
        """The certificate to hand to clients: it holds the server's public key only."""
        return self.keys_dir / SERVER_PUBLIC_FILE

    def identity_for(self, public_key: bytes) -> Identity | None:
        """Who holds ``public_key`` (z85 text, or its 32 raw bytes as ZAP sends them), or None."""
        return self._keys.get(z85_key(bytes(public_key)))

    def identities(self) -> list[Identity]:
        return sorted(self._keys.values())

    def __contains__(self, identity: object) -> bool:
        """Whether ``identity`` is still registered (a removed key's open connections are not cut
        by libzmq: check this per message to enforce a removal at once)."""
        return identity in self._identities

    def __len__(self) -> int:
        return len(self._keys)


def add_tenant(state_dir: Path | str, name: str, role: str = "tenant", *, replace: bool = False) -> Path:
    """Generate a keypair for a tenant (or, with ``role="operator"``, an operator): register its
    public key in the keys folder and return the path of its secret certificate,
    ``<state-dir>/keys/issued/<role>s/<name>.key_secret`` (mode 0600), for the operator to hand to
    its holder (and then delete). A running daemon sees the key after :meth:`Authenticator.reload`.
    An existing registration raises :class:`AuthConfigError` unless ``replace`` (a new key)."""
    checked = _check_role(role)
    _check_name(name, checked)
    keys = _keys_dir(state_dir)
    public_file = keys / ROLE_DIRS[checked] / f"{name}{PUBLIC_SUFFIX}"
    if public_file.exists() and not replace:
        raise KeyExists(f"{checked} {name!r} is already registered ({public_file}); pass replace=True")
    issued = keys / ISSUED_DIR / ROLE_DIRS[checked]
    issued.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret_file = issued / f"{name}{SECRET_SUFFIX}"
    public, secret = zmq.curve_keypair()
    # The secret first: a key is never registered without its holder's certificate existing.
    _write_certificate(secret_file, public, secret, replace=True)
    try:
        _write_certificate(public_file, public, None, replace=replace)
    except FileExistsError:
        secret_file.unlink(missing_ok=True)
        raise AuthConfigError(f"{checked} {name!r} is already registered ({public_file})") from None
    log.info("registered %s %s (%s); its secret certificate is %s", checked, name, public_file, secret_file)
    return secret_file


def remove(state_dir: Path | str, name: str, role: str = "tenant") -> None:
    """Unregister a tenant's or operator's key (and delete its issued secret certificate, if still
    there). A running daemon refuses the key for new connections after :meth:`Authenticator.reload`."""
    checked = _check_role(role)
    _check_name(name, checked)
    keys = Path(state_dir) / KEYS_DIR
    public_file = keys / ROLE_DIRS[checked] / f"{name}{PUBLIC_SUFFIX}"
    try:
        public_file.unlink()
    except FileNotFoundError:
        raise AuthConfigError(f"no {checked} named {name!r} is registered ({public_file} does not exist)") from None
    (keys / ISSUED_DIR / ROLE_DIRS[checked] / f"{name}{SECRET_SUFFIX}").unlink(missing_ok=True)
    log.info("removed %s %s (%s)", checked, name, public_file)


# ---------------------------------------------------------------------------------- ZAP handler


class Authenticator:
    """The ZAP handler of one :class:`zmq.Context`: a thread answering libzmq's authentication
    requests on ``inproc://zeromq.zap.01`` from a :class:`KeyRing`.

    A CURVE handshake for the domain ``tenantd`` is accepted exactly when the client's key is in
    the ring, with User-Id ``ROLE:NAME``; every other request (unknown key, another mechanism or
    domain) is refused with status 400, so the handshake fails and the client's messages never
    arrive. ZAP runs once per connection: :meth:`reload` changes who may connect from then on, but
    does not cut connections already made."""

    def __init__(self, context: zmq.Context[Any], keyring: KeyRing, *, domain: str = ZAP_DOMAIN) -> None:
        self.context = context
        self.keyring = keyring
        self.domain = domain.encode()
        self.accepted = 0
        self.refused = 0
        self._refusals_logged: set[bytes] = set()
        self._thread: threading.Thread | None = None
        self._stop_pipe: zmq.Socket[bytes] | None = None

    def start(self) -> None:
        """Bind the ZAP endpoint and start answering. Call before the server socket binds: libzmq
        only consults a handler that exists when a client's handshake arrives."""
        if self._thread is not None:
            raise RuntimeError("the authenticator is already running")
        zap: zmq.Socket[bytes] = self.context.socket(zmq.REP, socket_class=zmq.Socket)
        zap.setsockopt(zmq.LINGER, 0)
        try:
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            zap.close()
            if exc.errno == errno.EADDRINUSE:
                raise AuthConfigError(
                    f"another ZAP handler is already bound to {ZAP_ENDPOINT} in this context; "
                    "one Authenticator per zmq.Context"
                ) from None
            raise
        pipe_endpoint = f"inproc://tenantd.auth.stop.{id(self):x}"
        stop_pipe: zmq.Socket[bytes] = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        stop_pipe.setsockopt(zmq.LINGER, 0)
        stop_pipe.bind(pipe_endpoint)
        stop_listener: zmq.Socket[bytes] = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        stop_listener.setsockopt(zmq.LINGER, 0)
        stop_listener.connect(pipe_endpoint)
        self._stop_pipe = stop_pipe
        self._thread = threading.Thread(target=self._run, args=(zap, stop_listener), name="tenantd-zap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the handler's sockets (before ``context.term()``, which would
        otherwise wait for them). Idempotent."""
        if self._thread is None or self._stop_pipe is None:
            return
        self._stop_pipe.send(b"")
        self._thread.join()
        self._stop_pipe.close()
        self._thread = None
        self._stop_pipe = None

    def reload(self) -> None:
        """Re-read the keys folder (see :meth:`KeyRing.reload`); new connections use the new keys."""
        self.keyring.reload()

    def __enter__(self) -> Authenticator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, zap: zmq.Socket[bytes], stop_listener: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(stop_listener, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if stop_listener in ready:
                    return
                if zap in ready:
                    request = zap.recv_multipart()
                    try:
                        reply = self.handle(request)
                    except Exception:  # a bug here must not leave libzmq waiting for a reply
                        log.exception("error answering a ZAP request")
                        request_id = request[1] if len(request) > 1 else b""
                        reply = [ZAP_VERSION, request_id, b"500", b"internal error", b"", b""]
                    zap.send_multipart(reply)
        finally:
            zap.close()
            stop_listener.close()

    def handle(self, request: Sequence[bytes]) -> list[bytes]:
        """The ZAP reply (RFC 27) to one request; runs on the handler's thread."""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            request_id = request[1] if len(request) > 1 else b""
            return self._refuse(request_id, b"malformed ZAP request", None, b"")
        request_id, domain, address, _routing_id, mechanism = request[1:6]
        credentials = request[6:]
        if domain != self.domain:
            return self._refuse(request_id, b"unknown domain", None, address)
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != RAW_KEY_LENGTH:
            return self._refuse(request_id, b"CURVE keys required", None, address)
        key = z85.encode(credentials[0])
        identity = self.keyring.identity_for(key)
        if identity is None:
            return self._refuse(request_id, b"unknown key", key, address)
        self.accepted += 1
        log.debug("accepted %s (key %s, peer %s)", identity, key.decode(), address.decode(errors="replace"))
        # ROLE:NAME:KEY: the key lets the daemon notice, per message, that it was withdrawn or
        # replaced (libzmq keeps an authenticated connection open either way).
        return [ZAP_VERSION, request_id, b"200", b"OK", identity.user_id.encode() + b":" + key, b""]

    def _refuse(self, request_id: bytes, reason: bytes, key: bytes | None, address: bytes) -> list[bytes]:
        self.refused += 1
        # The same stranger may knock many times (new sockets, new clients): say so once per key.
        tag = key or reason
        if tag not in self._refusals_logged:
            if len(self._refusals_logged) >= _REFUSALS_REMEMBERED:
                self._refusals_logged.clear()
            self._refusals_logged.add(tag)
            level = logging.WARNING
        else:
            level = logging.DEBUG
        log.log(
            level,
            "refused a connection: %s%s (peer %r)",
            reason.decode(),
            f" {key.decode()}" if key else "",
            address.decode(errors="replace"),
        )
        return [ZAP_VERSION, request_id, b"400", reason, b"", b""]


# ---------------------------------------------------------------------------------- sockets


def identity_of(frame: zmq.Frame) -> Identity | None:
    """The identity libzmq attached to a received message (any frame of it, the ROUTER's routing
    id included), or None when its connection was not authenticated by an :class:`Authenticator`.
    ``frame`` must come from ``recv(copy=False)`` / ``recv_multipart(copy=False)``: bytes carry no
    metadata."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:  # EINVAL: no such property (NULL mechanism, or no User-Id given)
        return None
    if not isinstance(user_id, str):
        return None
    return Identity.parse(user_id)


def key_of(frame: zmq.Frame) -> bytes | None:
    """The z85 public key of the connection a received message came on, as the Authenticator
    stamped it in the User-Id (``ROLE:NAME:KEY``), or None."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    if not isinstance(user_id, str):
        return None
    parts = user_id.split(":", 2)
    return parts[2].encode() if len(parts) == 3 and parts[2] else None

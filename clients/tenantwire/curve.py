"""CurveZMQ for tenantd's sockets: key files and the socket options of either side.

The daemon's keys folder and its ZAP handler belong to the daemon (:mod:`tenantd.auth`); what a
client needs to open an encrypted, authenticated connection (read its certificate, trust the
server's public key, set the socket options) lives here, so the client does not need the daemon.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger("tenantwire.curve")

ZAP_DOMAIN = "tenantd"
SECRET_SUFFIX = ".key_secret"

_Z85_KEY_LENGTH = 40  # a 32-byte CURVE key, z85-encoded
RAW_KEY_LENGTH = 32


class KeyFileError(ValueError):
    """A key file (or a key) is unreadable or not a CURVE key; the message names the file."""


def is_z85_key(key: bytes) -> bool:
    if len(key) != _Z85_KEY_LENGTH:
        return False
    try:
        return len(z85.decode(key)) == RAW_KEY_LENGTH
    except (KeyError, ValueError, struct.error):  # a character outside z85, or a chunk over 2**32
        return False


def z85_key(key: bytes) -> bytes:
    """A key as z85 bytes, from either its z85 text or its 32 raw bytes."""
    if len(key) == RAW_KEY_LENGTH:
        return z85.encode(key)
    return key


def read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a ``zmq.auth`` certificate, both checked to be CURVE keys."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, IndexError):  # IndexError: a key line cut short ("public-key" and nothing)
        raise KeyFileError(
            f"key file {path} is not a ZeroMQ certificate (no public-key line); write it with "
            "`tenantd keys add` or zmq.auth.create_certificates"
        ) from None
    if not is_z85_key(public):
        raise KeyFileError(f"key file {path}: the public-key is not a 40-character z85 CURVE key")
    if secret is not None and not is_z85_key(secret):
        raise KeyFileError(f"key file {path}: the secret-key is not a 40-character z85 CURVE key")
    return public, secret


def load_public_key(path: Path | str) -> bytes:
    """The z85 public key in a certificate file (public or secret), e.g. the daemon's
    ``keys/server.key`` that an operator hands to clients."""
    return read_certificate(Path(path))[0]


def configure_server(socket: zmq.Socket[Any], keys: tuple[bytes, bytes]) -> None:
    """Make ``socket`` a CURVE server with the daemon's ``(public, secret)`` keys, authenticated
    in the ``tenantd`` ZAP domain. Call before ``bind``. With ZAP enforced, a context without a
    running :class:`Authenticator` refuses every client instead of accepting any key."""
    public, secret = keys
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    try:
        # Without this, libzmq lets every CURVE client in when no ZAP handler is bound.
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    except (zmq.ZMQError, AttributeError):
        log.warning(
            "this libzmq (%s) cannot enforce ZAP: start the Authenticator before binding, or any key will be accepted",
            zmq.zmq_version(),
        )


def configure_client(socket: zmq.Socket[Any], client_cert_path: Path, server_public_key: bytes) -> None:
    """Make ``socket`` a CURVE client holding the secret certificate ``client_cert_path`` (issued
    by ``tenantd keys add``) and trusting the server key ``server_public_key`` (z85, e.g. from
    :func:`load_public_key` on the daemon's ``keys/server.key``). Call before ``connect``.

    A refused key is not an error on the client's side: the handshake fails and requests go
    unanswered, and the socket does not recover: after the key is registered, connect a new one.
    A socket monitor sees ``EVENT_HANDSHAKE_FAILED_AUTH`` (value 400)."""
    path = Path(client_cert_path)
    public, secret = read_certificate(path)
    if secret is None:
        raise KeyFileError(
            f"key file {path} holds no secret key: a client needs its secret certificate (NAME{SECRET_SUFFIX})"
        )
    server_key = z85_key(bytes(server_public_key))
    if not is_z85_key(server_key):
        raise KeyFileError("the server's public key is not a z85 CURVE key (40 characters)")
    socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.CURVE_SERVERKEY, server_key)

"""systemd's readiness protocol (sd_notify), written out: a unit with ``Type=notify`` learns that the
daemon is serving (``READY=1``), reloading on SIGHUP (``RELOADING=1`` then ``READY=1``) and
draining (``STOPPING=1``) from datagrams sent to the AF_UNIX socket named in ``NOTIFY_SOCKET``.

The protocol is newline-separated ``KEY=VALUE`` assignments in one datagram; a name starting
with ``@`` is in the abstract namespace (a leading NUL byte). Where ``NOTIFY_SOCKET`` is unset
(not run by systemd) every call does nothing. A failed send is logged, never raised: systemd
not hearing a status must not stop a daemon that is serving.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("tenantd")


def _address(name: str) -> str | bytes:
    return b"\0" + name[1:].encode() if name.startswith("@") else name


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments to the service manager; True if one was listening."""
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    if not (name.startswith("/") or name.startswith("@")):
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket name: not notified", name)
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, _address(name))
    except OSError as exc:
        log.warning("could not tell the service manager %s: %s", " ".join(assignments), exc)
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) tell this reload from an older one.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")

"""Where tenantd keeps its policy, its state and its socket when told nothing, so that
``tenantd serve`` runs as a service with no arguments and ``tenantctl`` finds that daemon.

It lives in the wire package because the daemon and ``tenantctl`` must agree on the socket.
Each default is looked up in this order, the first that is set winning:

1. the ``TENANTD_POLICY`` / ``TENANTD_STATE_DIR`` / ``TENANTD_ENDPOINT`` environment variable;
2. the directory systemd hands a service (``$CONFIGURATION_DIRECTORY``, ``$STATE_DIRECTORY``,
   ``$RUNTIME_DIRECTORY``, set by ``ConfigurationDirectory=`` etc. in the unit), which is how the
   unit's dedicated, non-root user gets the system paths;
3. as root: ``/etc/tenantd/policy.toml``, ``/var/lib/tenantd``, ``ipc:///run/tenantd/tenantd.sock``;
4. as any other user, the XDG base directories: ``$XDG_CONFIG_HOME/tenantd/policy.toml``
   (``~/.config``), ``$XDG_STATE_HOME/tenantd`` (``~/.local/state``) and
   ``$XDG_RUNTIME_DIR/tenantd/tenantd.sock`` (``/tmp/tenantd-UID/tenantd.sock`` without one).

Command-line flags override all of these. Only the standard library is used here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEM_POLICY = Path("/etc/tenantd/policy.toml")
SYSTEM_STATE_DIR = Path("/var/lib/tenantd")
SYSTEM_SOCKET = Path("/run/tenantd/tenantd.sock")
POLICY_FILE = "policy.toml"
SOCKET_FILE = "tenantd.sock"


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _root(euid: int | None) -> bool:
    return (os.geteuid() if euid is None else euid) == 0


def _systemd_dir(env: Mapping[str, str], name: str) -> Path | None:
    # systemd sets a colon-separated list when the unit names several directories: the first is ours.
    value = env.get(name, "").split(":")[0]
    return Path(value) if value else None


def _xdg(env: Mapping[str, str], name: str, fallback: str) -> Path:
    value = env.get(name)
    # The XDG spec: a relative path in these variables is invalid and is to be ignored.
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def default_policy(env: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """The policy file ``tenantd serve`` reads when given no ``--policy``."""
    env = _env(env)
    if env.get("TENANTD_POLICY"):
        return Path(env["TENANTD_POLICY"])
    systemd = _systemd_dir(env, "CONFIGURATION_DIRECTORY")
    if systemd is not None:
        return systemd / POLICY_FILE
    if _root(euid):
        return SYSTEM_POLICY
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "tenantd" / POLICY_FILE


def default_state_dir(env: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """The state directory (model store, event logs, keys) when given no ``--state-dir``."""
    env = _env(env)
    if env.get("TENANTD_STATE_DIR"):
        return Path(env["TENANTD_STATE_DIR"])
    systemd = _systemd_dir(env, "STATE_DIRECTORY")
    if systemd is not None:
        return systemd
    if _root(euid):
        return SYSTEM_STATE_DIR
    return _xdg(env, "XDG_STATE_HOME", ".local/state") / "tenantd"


def user_socket(env: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """This user's socket: ``$XDG_RUNTIME_DIR/tenantd/tenantd.sock``, or one in /tmp named by uid."""
    env = _env(env)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "tenantd" / SOCKET_FILE
    uid = os.geteuid() if euid is None else euid
    return Path(f"/tmp/tenantd-{uid}") / SOCKET_FILE


def default_endpoint(env: Mapping[str, str] | None = None, euid: int | None = None) -> str:
    """The endpoint ``tenantd serve`` binds when given no ``--endpoint``."""
    env = _env(env)
    if env.get("TENANTD_ENDPOINT"):
        return env["TENANTD_ENDPOINT"]
    systemd = _systemd_dir(env, "RUNTIME_DIRECTORY")
    if systemd is not None:
        return f"ipc://{systemd / SOCKET_FILE}"
    if _root(euid):
        return f"ipc://{SYSTEM_SOCKET}"
    return f"ipc://{user_socket(env, euid)}"


def client_endpoint(env: Mapping[str, str] | None = None, euid: int | None = None) -> str:
    """The endpoint ``tenantctl`` talks to when given no ``--endpoint``: ``TENANTD_ENDPOINT``; as
    root the system socket; otherwise this user's own daemon if its socket exists, else the system
    daemon if its socket exists (an operator in the service's group), else this user's socket."""
    env = _env(env)
    if env.get("TENANTD_ENDPOINT"):
        return env["TENANTD_ENDPOINT"]
    if _root(euid):
        return f"ipc://{SYSTEM_SOCKET}"
    own = user_socket(env, euid)
    if not own.exists() and SYSTEM_SOCKET.exists():
        return f"ipc://{SYSTEM_SOCKET}"
    return f"ipc://{own}"


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint; None for any other transport."""
    return Path(endpoint.removeprefix("ipc://")) if endpoint.startswith("ipc://") else None

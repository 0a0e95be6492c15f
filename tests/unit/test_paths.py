"""Default paths (tenantwire.paths): what `tenantd serve` with no arguments uses, and the socket
tenantctl finds, for root, for a systemd service and for an ordinary user."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tenantwire import paths

HOME = Path.home()


def test_root_gets_the_system_paths() -> None:
    assert paths.default_policy({}, euid=0) == Path("/etc/tenantd/policy.toml")
    assert paths.default_state_dir({}, euid=0) == Path("/var/lib/tenantd")
    assert paths.default_endpoint({}, euid=0) == "ipc:///run/tenantd/tenantd.sock"
    assert paths.client_endpoint({}, euid=0) == "ipc:///run/tenantd/tenantd.sock"


def test_a_user_gets_the_xdg_paths() -> None:
    env = {"XDG_CONFIG_HOME": "/c", "XDG_STATE_HOME": "/s", "XDG_RUNTIME_DIR": "/r"}
    assert paths.default_policy(env, euid=1000) == Path("/c/tenantd/policy.toml")
    assert paths.default_state_dir(env, euid=1000) == Path("/s/tenantd")
    assert paths.default_endpoint(env, euid=1000) == "ipc:///r/tenantd/tenantd.sock"


def test_a_user_without_xdg_variables_gets_the_xdg_fallbacks() -> None:
    # A relative XDG path is invalid by the spec and ignored, like an unset one.
    env = {"XDG_CONFIG_HOME": "relative"}
    assert paths.default_policy(env, euid=1000) == HOME / ".config/tenantd/policy.toml"
    assert paths.default_state_dir({}, euid=1000) == HOME / ".local/state/tenantd"
    assert paths.default_endpoint({}, euid=1000) == "ipc:///tmp/tenantd-1000/tenantd.sock"


def test_systemd_directories_win_over_the_user_defaults() -> None:
    """The unit's dedicated user is not root: systemd's directories give it the system paths."""
    env = {
        "CONFIGURATION_DIRECTORY": "/etc/tenantd",
        "STATE_DIRECTORY": "/var/lib/tenantd:/var/lib/other",
        "RUNTIME_DIRECTORY": "/run/tenantd",
        "XDG_RUNTIME_DIR": "/r",
    }
    assert paths.default_policy(env, euid=998) == Path("/etc/tenantd/policy.toml")
    assert paths.default_state_dir(env, euid=998) == Path("/var/lib/tenantd")
    assert paths.default_endpoint(env, euid=998) == "ipc:///run/tenantd/tenantd.sock"


def test_environment_variables_win_over_everything() -> None:
    env = {
        "TENANTD_POLICY": "/p.toml",
        "TENANTD_STATE_DIR": "/st",
        "TENANTD_ENDPOINT": "tcp://127.0.0.1:5555",
        "STATE_DIRECTORY": "/var/lib/tenantd",
        "CONFIGURATION_DIRECTORY": "/etc/tenantd",
        "RUNTIME_DIRECTORY": "/run/tenantd",
    }
    for euid in (0, 1000):
        assert paths.default_policy(env, euid) == Path("/p.toml")
        assert paths.default_state_dir(env, euid) == Path("/st")
        assert paths.default_endpoint(env, euid) == "tcp://127.0.0.1:5555"
        assert paths.client_endpoint(env, euid) == "tcp://127.0.0.1:5555"


def test_tenantctl_finds_the_users_daemon_else_the_system_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "run/tenantd/tenantd.sock"
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "user")}
    own = tmp_path / "user/tenantd/tenantd.sock"
    assert paths.client_endpoint(env, euid=1000) == f"ipc://{own}"  # neither runs: the user's own
    system.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(system))
        assert paths.client_endpoint(env, euid=1000) == f"ipc://{system}"  # only the service runs
        own.parent.mkdir(parents=True)
        with socket.socket(socket.AF_UNIX) as mine:
            mine.bind(str(own))
            assert paths.client_endpoint(env, euid=1000) == f"ipc://{own}"  # both: the user's own


def test_ipc_path() -> None:
    assert paths.ipc_path("ipc:///run/tenantd/tenantd.sock") == Path("/run/tenantd/tenantd.sock")
    assert paths.ipc_path("tcp://127.0.0.1:5555") is None

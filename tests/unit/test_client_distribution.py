"""The client distribution (clients/pyproject.toml) and the daemon's (setup.cfg) agree: the same
version, the same two client packages and tenantctl, and every lower bound of the client met by
the daemon's exact pin, so the daemon's environment is one the client supports."""

from __future__ import annotations

import configparser
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENT = tomllib.loads((REPO / "clients" / "pyproject.toml").read_text())["project"]
DAEMON = configparser.ConfigParser()
DAEMON.read(REPO / "setup.cfg")


def _requirements(text: str) -> dict[str, str]:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return {re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0].lower(): line for line in lines}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def test_same_version_packages_and_command() -> None:
    assert CLIENT["version"] == DAEMON["metadata"]["version"]
    daemon_packages = set(DAEMON["options"]["packages"].split())
    client_pyproject = tomllib.loads((REPO / "clients" / "pyproject.toml").read_text())
    assert set(client_pyproject["tool"]["setuptools"]["packages"]) == {"tenantwire", "tenantclient"} <= daemon_packages
    assert f"tenantctl = {CLIENT['scripts']['tenantctl']}" in DAEMON["options.entry_points"]["console_scripts"]


def test_client_needs_only_the_wire_packages_dependencies_with_lower_bounds_the_daemon_pins_meet() -> None:
    client = {re.split(r"[>=<]", r, maxsplit=1)[0].lower(): r for r in CLIENT["dependencies"]}
    assert set(client) == {"pyzmq", "msgpack", "numpy"}  # what tenantwire imports (test_client_imports)
    pins = _requirements(DAEMON["options"]["install_requires"])
    for name, requirement in client.items():
        assert re.fullmatch(rf"{name}>=[\d.]+", requirement), f"{requirement}: a lower bound only, no pin"
        pinned = pins[name].split("==", 1)[1]
        assert _version(pinned) >= _version(requirement.split(">=", 1)[1]), f"daemon pin {pins[name]} < {requirement}"
    (lz4,) = CLIENT["optional-dependencies"]["lz4"]
    assert _version(pins["lz4"].split("==", 1)[1]) >= _version(lz4.split(">=", 1)[1])

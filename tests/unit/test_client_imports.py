"""The client side installs without the daemon: tenantwire needs only pyzmq, msgpack and numpy,
and tenantclient only tenantwire besides. Checked in a fresh interpreter, by what importing
them actually loads, so an import buried in a module that is not used by tests still counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tenantclient
import tenantwire

# The daemon and what only it needs; none may be loaded by a client.
DAEMON_ONLY = ("tenantd", "pydantic", "ai_edge_litert", "openvino", "onnxruntime", "psutil")
# Besides the standard library, the only top-level modules either package may load.
WIRE_DEPENDENCIES = {"tenantwire", "zmq", "msgpack", "numpy"}
CLIENT_DEPENDENCIES = WIRE_DEPENDENCIES | {"tenantclient"}
WIRE_MODULES = ["tenantwire", *(f"tenantwire.{m}" for m in ("protocol", "errors", "tensors", "curve", "irbundle"))]
CLIENT_MODULES = ["tenantclient", *(f"tenantclient.{m}" for m in ("cli", "errors", "operations", "client", "retry"))]

PROBE = """
import importlib, json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _loaded_by(*modules: str) -> list[str]:
    """Modules newly in sys.modules after importing ``modules`` in a fresh interpreter that sees
    the same tenantwire and tenantclient as this test."""
    roots = {str(Path(package.__file__ or "").parents[1]) for package in (tenantwire, tenantclient)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sorted(roots)))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def _third_party(loaded: list[str]) -> set[str]:
    tops = {name.partition(".")[0] for name in loaded}
    # Cython's runtime registers modules of its own when pyzmq's extension loads.
    return {t for t in tops if t not in sys.stdlib_module_names and not t.startswith(("_cython_", "cython_runtime"))}


@pytest.mark.parametrize(
    ("modules", "allowed"),
    [(WIRE_MODULES, WIRE_DEPENDENCIES), (CLIENT_MODULES, CLIENT_DEPENDENCIES)],
    ids=["tenantwire", "tenantclient"],
)
def test_client_packages_load_nothing_of_the_daemon(modules: list[str], allowed: set[str]) -> None:
    loaded = _loaded_by(*modules)
    assert set(modules) <= set(loaded)  # imported here, not already by the interpreter's start-up
    daemon_side = sorted(m for m in loaded if m.partition(".")[0] in DAEMON_ONLY)
    assert daemon_side == [], f"importing {modules[0]} loads {daemon_side}"
    assert _third_party(loaded) <= allowed

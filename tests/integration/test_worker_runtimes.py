"""Integration: a real device worker answers which runtimes its Python has (the ``runtimes`` op),
by the registry's own requirement check, importing an adapter only when asked to inspect it."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tenantd.runtimes import get_runtime_class, runtime_requires, runtime_target
from tenantd.worker import WorkerHost


@pytest.fixture
def host() -> Iterator[WorkerHost]:
    h = WorkerHost("cpu", watchdog_s=30.0)
    try:
        yield h
    finally:
        h.close()


def _ask(host: WorkerHost, runtimes: dict[str, dict[str, object]]) -> dict[str, object]:
    return host.call({"op": "runtimes", "runtimes": runtimes}, None)


def test_the_worker_says_what_it_has_and_what_it_lacks(host: WorkerHost) -> None:
    pytest.importorskip("ai_edge_litert")
    litert = {"requires": list(runtime_requires("litert")), "target": runtime_target("litert")}
    reply = _ask(
        host,
        {
            "litert": {**litert, "inspect": True},
            "plain": litert,  # not inspected: nothing imported, no version
            "absent": {"requires": ["no_such_vendor_package_xyz", "json"], "target": "x:Y"},
            "nolib": {"requires": ["lib:no_such_library_xyz"], "target": "x:Y"},
            "broken": {"requires": ["json"], "target": "no_such_adapter_xyz:Runtime", "inspect": True},
        },
    )
    assert reply["python"] == sys.executable
    answers = reply["runtimes"]
    assert isinstance(answers, dict)
    cls = get_runtime_class("litert")
    assert answers["litert"] == {
        "installed": True,
        "missing": [],
        "version": cls.version(),
        "device_kinds": list(cls.device_kinds),
    }
    assert answers["plain"] == {"installed": True, "missing": []}
    assert answers["absent"] == {"installed": False, "missing": ["no_such_vendor_package_xyz"]}
    assert answers["nolib"] == {"installed": False, "missing": ["lib:no_such_library_xyz"]}
    assert answers["broken"]["installed"] is False
    assert "ModuleNotFoundError" in answers["broken"]["reason"]

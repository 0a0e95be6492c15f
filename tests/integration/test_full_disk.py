"""A full state disk (reliability issue item 7): submissions answer STORAGE_FULL, a retryable code,
instead of INTERNAL; the daemon stays up, serves what it has, loses nothing, and takes the same
submission once space is freed. The disk is real: a small tmpfs mounted for the test (root only;
skipped with the reason elsewhere), filled to the last byte with an ordinary file."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import tenantclient.errors as E
from tenantclient import TenantClient
from tenantd.events import Event
from tests.conftest import ModelFiles
from tests.support.daemon import daemon_in_thread


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_a_full_disk_is_storage_full_and_nothing_is_lost(
    small_disk: Path, endpoint: str, model_files: ModelFiles
) -> None:
    x = np.zeros((1, 32), np.float32)
    with daemon_in_thread(small_disk / "state", endpoint) as daemon:
        with TenantClient(endpoint, tenant="alice") as alice, TenantClient(endpoint, tenant="bob") as bob:
            alice.submit_model(model_files.mlp, "a")
            expected = alice.infer("a", x)["probs"]
            filler = fill(small_disk)

            with pytest.raises(E.StorageFull, match="state disk is full") as refused:
                bob.submit_model(model_files.mlp_b, "b")
            assert refused.value.code == "STORAGE_FULL"
            # Everything that needs no disk goes on: inference, status, listing.
            assert np.array_equal(alice.infer("a", x)["probs"], expected)
            status = alice.status()
            assert status["errors"]["STORAGE_FULL"] == 1 and status["models"] == 1
            # The event log fills the rest of its last page, then loses lines, and says how many.
            for _ in range(16):
                daemon.events.emit(Event.MODEL_REMOVED, model="x", note="y" * 1024)
            assert daemon.events.lost > 0
            assert alice.ping()["pong"] is True

            filler.unlink()
            bob.submit_model(model_files.mlp_b, "b")  # the same submission, once there is room
            with TenantClient(endpoint) as operator:
                assert {(m.name, m.owner) for m in operator.list_models()} == {("a", "alice"), ("b", "bob")}
    with daemon_in_thread(small_disk / "state", endpoint), TenantClient(endpoint) as operator:
        assert {(m.name, m.owner) for m in operator.list_models()} == {("a", "alice"), ("b", "bob")}
        with TenantClient(endpoint, tenant="alice") as alice:  # both survived a restart
            assert np.array_equal(alice.infer("a", x)["probs"], expected)

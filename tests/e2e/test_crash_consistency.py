"""Crash consistency (reliability issue): kill -9 the daemon while tenants submit models, restart it
on the same state directory, and check that what was acknowledged survived whole.

Each round, three tenants' clients submit (and now and then remove) models concurrently, each
tenant one request at a time over a few names. At a seeded moment (after a seeded number of
acknowledgements, plus a seeded offset that lands anywhere in a submission: upload, probe, load,
commit, reply) the daemon is killed with SIGKILL and started again on the same state directory.
Then, for every name a client touched:

* a submission acknowledged before the kill is served: listed with its owner and file (sha256),
  and giving the same outputs as LiteRT run directly on that file;
* an acknowledged removal stays removed;
* a request in flight at the kill may have happened or not, but nothing in between: no model is
  listed whose file is missing or cut short (``status.damaged_models``), and the store holds no
  file that no model uses once the daemon has started (its start-up collects those).

The rounds run on one state directory, each starting from what the previous one left, so later
kills land on a store that earlier ones already crashed: 5 rounds in the default suite, more with
``pytest -m slow``.
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from models import tiny
from tenantclient import AsyncTenantClient, TenantClient
from tenantclient.errors import TenantError
from tenantd.store import sha256_hex
from tests.conftest import direct_litert
from tests.support.daemon import DaemonProcess, start_daemon_process

pytestmark = pytest.mark.e2e

TENANTS = ("alice", "bob", "carol")
NAMES_PER_TENANT = 3
VARIANTS = 6  # distinct model files, so a name's file says which submission it holds
DEFAULT_ROUNDS = 5
SLOW_ROUNDS = 30
X = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(1, 8)

REMOVED = "removed"  # a name's state after an acknowledged removal


@dataclass
class Ledger:
    """What the clients know. ``acked``: per name, the last acknowledged outcome (a file's sha256,
    or REMOVED). ``maybe``: per name, outcomes of requests sent but not answered when the daemon
    died: each may or may not have happened."""

    acked: dict[str, str] = field(default_factory=dict)
    maybe: dict[str, set[str]] = field(default_factory=dict)
    acks: int = 0

    def allowed(self, name: str) -> set[str]:
        return {self.acked.get(name, REMOVED), *self.maybe.get(name, ())}


@dataclass(frozen=True)
class Variants:
    files: dict[str, Path]  # sha256 -> a model file

    @classmethod
    def build(cls, root: Path) -> Variants:
        files = {}
        for i in range(VARIANTS):
            data = tiny.mlp(8, [8], 3, seed=100 + i)
            path = root / f"variant{i}.tflite"
            path.write_bytes(data)
            files[sha256_hex(data)] = path
        return cls(files)


async def submit_until_cancelled(
    endpoint: str, tenant: str, rng: random.Random, variants: Variants, ledger: Ledger, acked: asyncio.Event
) -> None:
    """One tenant's client: submissions (replacing), and a removal now and then, one at a time."""
    shas = sorted(variants.files)
    async with AsyncTenantClient(endpoint, tenant=tenant) as client:
        while True:
            name = f"{tenant}_{rng.randrange(NAMES_PER_TENANT)}"
            outcome = REMOVED if rng.random() < 0.15 else rng.choice(shas)
            ledger.maybe.setdefault(name, set()).add(outcome)
            try:
                if outcome == REMOVED:
                    await client.remove_model(name)
                else:
                    info = await client.submit_model(variants.files[outcome].read_bytes(), name, replace=True)
                    assert info.sha256 == outcome and info.owner == tenant
            except TenantError as exc:
                if outcome != REMOVED or exc.code != "UNKNOWN_MODEL":
                    raise
            ledger.maybe[name].discard(outcome)  # answered: it happened
            ledger.acked[name] = outcome
            ledger.acks += 1
            acked.set()


async def submit_and_kill(daemon: DaemonProcess, rng: random.Random, variants: Variants, ledger: Ledger) -> None:
    acked = asyncio.Event()
    clients = [
        asyncio.create_task(
            submit_until_cancelled(daemon.endpoint, t, random.Random(rng.random()), variants, ledger, acked)
        )
        for t in TENANTS
    ]
    try:
        target = ledger.acks + rng.randint(1, 6)
        while ledger.acks < target:
            acked.clear()
            done, _ = await asyncio.wait(
                [asyncio.ensure_future(acked.wait()), *clients], timeout=120, return_when=asyncio.FIRST_COMPLETED
            )
            failed = [t for t in done if t in clients]
            if failed:
                failed[0].result()  # a client's error (none is expected before the kill)
            assert done, "no acknowledgement within 120 s"
        # The kill moment: a seeded offset into whatever submissions are in flight (a probe and a
        # load take ~0.2 s each here). Not a wait for anything.
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        daemon.proc.kill()
        daemon.proc.wait()
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)


def check_restored(daemon: DaemonProcess, variants: Variants, ledger: Ledger) -> None:
    """Every name holds an outcome it may hold, whole; then the ledger is what was found."""
    with TenantClient(daemon.endpoint) as operator:
        listed = {m.name: m for m in operator.list_models()}
        assert operator.status()["damaged_models"] == []
    for name in sorted({*ledger.acked, *ledger.maybe, *listed}):
        found = listed[name].sha256 if name in listed else REMOVED
        assert found in ledger.allowed(name), (
            f"{name}: found {found}, but the last acknowledged was {ledger.acked.get(name, REMOVED)} "
            f"and {sorted(ledger.maybe.get(name, ()))} were in flight"
        )
        if found != REMOVED:
            assert listed[name].owner == name.split("_", 1)[0]
            with TenantClient(daemon.endpoint, tenant=listed[name].owner) as client:
                got = client.infer(name, X)["probs"]
            assert np.array_equal(got, direct_litert(variants.files[found], X)["probs"]), name
        ledger.acked[name] = found
    ledger.maybe.clear()
    # Start-up removed the files of submissions that never committed; every other file is a model's.
    on_disk = {p.name for p in (daemon.state_dir / "blobs").rglob("*") if p.is_file()}
    assert on_disk == {m.sha256 for m in listed.values()}, "files in the store that no model uses, or the reverse"


def crash_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    variants = Variants.build(tmp_path)
    state, endpoint = tmp_path / "state", f"ipc://{tmp_path}/d.sock"
    ledger = Ledger()
    daemon = start_daemon_process(state, endpoint, log=tmp_path / "daemon0.log")
    try:
        for round_ in range(1, rounds + 1):
            asyncio.run(submit_and_kill(daemon, rng, variants, ledger))
            assert daemon.proc.returncode == -signal.SIGKILL
            daemon = start_daemon_process(state, endpoint, log=tmp_path / f"daemon{round_}.log")
            check_restored(daemon, variants, ledger)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    for log in sorted(tmp_path.glob("daemon*.log")):
        assert "Traceback" not in log.read_text(), log


def test_acknowledged_submissions_survive_kill_minus_9(tmp_path: Path) -> None:
    crash_rounds(tmp_path, DEFAULT_ROUNDS, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_acknowledged_submissions_survive_many_kills(tmp_path: Path) -> None:
    crash_rounds(tmp_path, SLOW_ROUNDS, seed=2)

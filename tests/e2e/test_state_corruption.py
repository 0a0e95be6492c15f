"""Damaged state files (reliability issue): for each file of the state directory, the daemon either
starts and serves (saying what is damaged where it matters) or refuses to start with one clear
``tenantd: ...`` line and a non-zero exit. Never a traceback, never a model file deleted.

Where each file is covered (the daemon's handling, as a process, is tested here unless said):

* ``tenantd.db``: missing, empty, garbage, cut short, failing SQLite's check, another schema:
  ``tests/unit/test_store.py``; the daemon's exit and message for an emptied and a garbage
  database: ``test_daemon_process.py``. Not repeated here.
* ``tenantd.db-wal``: emptied, garbage, torn; on a new store and on one whose older models were
  checkpointed into ``tenantd.db``.
* ``events.jsonl`` and ``events.jsonl.1``: torn lines, garbage, binary junk, a huge line, a huge
  event; lines the wire cannot carry or json cannot read (``test_events.py``: a torn last line).
* ``keys/`` under ``--auth keys``: garbage, binary junk, a bad name, unreadable, cut short; at
  start-up and on ``reload_keys`` (``test_auth.py``: every key ring error, in process).
* ``lock``: garbage, left by a killed daemon, a directory (held by a live daemon:
  ``test_daemon_process.py``).
* a model file in ``blobs/``: cut short, ``test_daemon_process.py``; missing or the wrong size,
  ``test_store.py``; the right size with bytes changed, here.
* ``blobs/**/.incoming-*``, left by a crash mid-write (``test_store.py``: the collection itself).

Cases the daemon got wrong when these tests were written (a damaged WAL costing acknowledged
models' files, events replies lost or INTERNAL, a huge log line stalling the daemon, a key file
cut short, a directory at ``lock``) were strict xfails with their repro until fixed; a new one is
added the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq

from models import tiny
from tenantclient import TenantClient
from tenantclient import errors as E
from tenantd import auth
from tests.conftest import ModelFiles, direct_litert
from tests.support.daemon import DaemonDidNotStart, DaemonProcess, start_daemon_process

pytestmark = pytest.mark.e2e

EXIT_CONFIG, EXIT_STORE = 2, 3  # tenantd serve's exit statuses (tenantd/cli.py)
X_MLP = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(1, 32)


@dataclass
class State:
    dir: Path
    endpoint: str
    logs: Iterator[Path]
    started: list[DaemonProcess] = field(default_factory=list)  # killed at teardown if still running

    def start(self, *extra: str) -> DaemonProcess:
        daemon = start_daemon_process(self.dir, self.endpoint, extra=list(extra), log=next(self.logs))
        self.started.append(daemon)
        return daemon

    def refused(self, *extra: str) -> DaemonDidNotStart:
        """Start the daemon, expecting it to refuse; returns its exit status and stderr."""
        try:
            daemon = self.start(*extra)
        except DaemonDidNotStart as refusal:
            return refusal
        daemon.stop()
        raise AssertionError(f"the daemon started: {daemon.ready_line}")

    def model_files(self) -> dict[str, bytes]:
        """Every model file in the state directory by name: in blobs/, or set aside in orphans/."""
        folders = [self.dir / "blobs", self.dir / "orphans"]
        return {p.name: p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    logs = (tmp_path / f"daemon{i}.log" for i in range(1000))
    state = State(tmp_path / "state", f"ipc://{tmp_path}/d.sock", logs)
    yield state
    for daemon in state.started:  # a test that failed before stopping its daemon
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def assert_refused_clearly(refusal: DaemonDidNotStart, status: int, fragment: str) -> None:
    assert refusal.returncode == status, refusal
    assert "Traceback" not in refusal.stderr, refusal.stderr[-3000:]
    (line,) = [line for line in refusal.stderr.splitlines() if line.startswith("tenantd: ")]
    assert fragment in line, line


def stop_cleanly(daemon: DaemonProcess) -> str:
    assert daemon.stop() == 0
    log = daemon.stderr()
    assert "Traceback" not in log, log[-3000:]
    return log


def submit(daemon: DaemonProcess, tenant: str, model: Path | bytes, name: str) -> str:
    with TenantClient(daemon.endpoint, tenant=tenant) as client:
        return client.submit_model(model, name).sha256


# --------------------------------------------------------------------------- tenantd.db-wal

WAL_HEADER = 32
WAL_FRAME_HEADER = 24


def wal_frames(wal: bytes) -> tuple[int, list[tuple[int, bool]]]:
    """(page size, [(offset of each frame, whether it ends a transaction)]) of a SQLite WAL."""
    page = struct.unpack(">I", wal[8:12])[0]
    frames = []
    for offset in range(WAL_HEADER, len(wal) - WAL_FRAME_HEADER - page + 1, WAL_FRAME_HEADER + page):
        frames.append((offset, struct.unpack(">I", wal[offset + 4 : offset + 8])[0] != 0))
    return page, frames


def damage_wal(wal: Path, damage: str, *, keep_first_commit: bool) -> None:
    data = wal.read_bytes()
    page, frames = wal_frames(data)
    if damage == "emptied":
        wal.write_bytes(b"")
    elif damage == "garbage":
        wal.write_bytes(random.Random(1).randbytes(len(data)))
    else:  # torn: cut inside a frame, as a crash or a full disk leaves it
        if keep_first_commit:
            after = next(offset for offset, commit in frames if commit) + WAL_FRAME_HEADER + page
        else:
            after = frames[-1][0]  # the last transaction loses its commit frame
        wal.write_bytes(data[: after + page // 2])


def new_store_killed(state: State, model_files: ModelFiles) -> dict[Path, bytes]:
    """A new store's daemon killed after two submissions: everything is still in the WAL."""
    daemon = state.start()
    submit(daemon, "alice", model_files.mlp, "a")
    submit(daemon, "alice", model_files.mlp_b, "b")
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (state.dir / "tenantd.db-wal").stat().st_size > 0
    return state.model_files()


@pytest.mark.parametrize("damage", ["emptied", "garbage", "torn"])
def test_a_damaged_wal_of_a_new_store_stops_the_daemon_and_keeps_the_model_files(
    state: State, model_files: ModelFiles, damage: str
) -> None:
    files = new_store_killed(state, model_files)
    damage_wal(state.dir / "tenantd.db-wal", damage, keep_first_commit=True)
    try:
        daemon = state.start()
    except DaemonDidNotStart as refusal:
        assert_refused_clearly(refusal, EXIT_STORE, "nothing was deleted")
    else:  # starting is fine too, if it serves what it still has and deletes nothing
        stop_cleanly(daemon)
    assert state.model_files() == files


@pytest.mark.parametrize("damage", ["emptied", "garbage", "torn"])
def test_a_damaged_wal_never_costs_an_acknowledged_models_file(
    state: State, model_files: ModelFiles, damage: str
) -> None:
    daemon = state.start()
    submit(daemon, "alice", model_files.mlp, "a")
    stop_cleanly(daemon)  # a clean stop checkpoints the WAL into tenantd.db
    daemon = state.start()
    submit(daemon, "alice", model_files.mlp_b, "c")  # committed to the WAL only
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    files = state.model_files()
    damage_wal(state.dir / "tenantd.db-wal", damage, keep_first_commit=False)
    try:
        daemon = state.start()
    except DaemonDidNotStart as refusal:
        assert_refused_clearly(refusal, EXIT_STORE, "nothing was deleted")
    else:
        with TenantClient(daemon.endpoint, tenant="alice") as alice:
            assert np.array_equal(alice.infer("a", X_MLP)["probs"], direct_litert(model_files.mlp, X_MLP)["probs"])
        stop_cleanly(daemon)
    assert state.model_files() == files


# --------------------------------------------------------------------------- events.jsonl, events.jsonl.1


def event_line(i: int, **extra: object) -> str:
    return json.dumps({"ts": 1.0 + i, "event": "model.removed", "pid": 1, "model": f"intact{i}", **extra})


EVENT_DAMAGE: dict[str, str] = {
    "torn lines": event_line(90)[:25] + "\n" + event_line(91)[:-3],
    "garbage": 'not json at all\n{"ts": \n}}}\n[1, 2\n"a string"\n17\n\n   \n',
    "binary junk": random.Random(5).randbytes(4096).replace(b"\n", b" ").decode("latin-1"),
    "a huge line": "\0" * (4 * 2**20),  # a run of NULs, as a crash can leave at the end of a file
}


@pytest.mark.parametrize("file", ["events.jsonl", "events.jsonl.1"])
@pytest.mark.parametrize("damage", list(EVENT_DAMAGE))
def test_a_damaged_event_log_is_read_past(state: State, file: str, damage: str) -> None:
    """Every intact event is still read, in order; the damaged lines are skipped; new events are
    written on a line of their own."""
    state.dir.mkdir()
    lines = [event_line(0), event_line(1), EVENT_DAMAGE[damage], event_line(2), EVENT_DAMAGE[damage]]
    (state.dir / file).write_text("\n".join(lines), encoding="latin-1")  # no newline at the end: torn
    daemon = state.start()
    with TenantClient(daemon.endpoint) as operator:
        removed = [e["model"] for e in operator.events(limit=100, event="model.removed")]
        assert removed == ["intact0", "intact1", "intact2"]
        assert [e["event"] for e in operator.events(limit=1, event="start")] == ["start"]
        assert operator.ping()["pong"] is True
    stop_cleanly(daemon)


def test_a_line_longer_than_any_event_is_skipped_without_hiding_older_ones(state: State) -> None:
    """A line over 1 MiB (events.MAX_LINE_BYTES) is no event this daemon wrote: reading skips it
    without holding it whole, and the events before it are still served (when it was read as an
    event, it filled the page and hid every older one until it rotated out)."""
    state.dir.mkdir()
    lines = [event_line(0), event_line(1, pad="p" * (2 * 2**20)), event_line(2)]
    (state.dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    daemon = state.start()
    with TenantClient(daemon.endpoint) as operator:
        page = operator.call("events", {"limit": 100, "event": "model.removed"}).result
        assert [e["model"] for e in page["events"]] == ["intact0", "intact2"] and page["omitted"] == 0
    stop_cleanly(daemon)


@pytest.mark.parametrize("file", ["events.jsonl", "events.jsonl.1"])
def test_an_event_the_wire_cannot_carry_is_still_answered(state: State, file: str) -> None:
    state.dir.mkdir()
    (state.dir / file).write_text(event_line(0) + "\n" + event_line(1, big=10**21) + "\n")
    daemon = state.start()
    try:
        with TenantClient(daemon.endpoint, timeout=2) as operator:  # an events page takes milliseconds here
            removed = [e["model"] for e in operator.events(limit=100, event="model.removed")]
        assert removed[0] == "intact0"  # the other one left out, or carried some other way
    finally:
        stop_cleanly(daemon)


@pytest.mark.parametrize("file", ["events.jsonl", "events.jsonl.1"])
def test_a_deeply_nested_event_line_is_read_past(state: State, file: str) -> None:
    state.dir.mkdir()
    (state.dir / file).write_text(event_line(0) + "\n" + "[" * 100_000 + "\n" + event_line(1) + "\n")
    daemon = state.start()
    try:
        with TenantClient(daemon.endpoint, timeout=2) as operator:
            removed = [e["model"] for e in operator.events(limit=100, event="model.removed")]
        assert removed == ["intact0", "intact1"]
    finally:
        stop_cleanly(daemon)


def test_a_huge_line_in_the_event_log_does_not_stall_the_daemon(state: State) -> None:
    state.dir.mkdir()
    (state.dir / "events.jsonl").write_bytes(event_line(0).encode() + b"\n" + b"\0" * (32 * 2**20))
    daemon = state.start()

    def read_events() -> None:
        with TenantClient(daemon.endpoint, timeout=5) as operator, contextlib.suppress(E.RequestTimeout):
            operator.events(limit=100)  # back to the first event, through the huge line

    reader = threading.Thread(target=read_events)
    try:
        with TenantClient(daemon.endpoint, tenant="alice", timeout=2) as alice:
            reader.start()
            # Polling the daemon's counter: the events request is being read (status writes no event).
            deadline = time.monotonic() + 10
            while not alice.status()["requests"].get("events") and time.monotonic() < deadline:
                time.sleep(0.01)  # ok: polling a daemon counter (the comment above)
            with pytest.raises(E.UnknownModel):  # an error reply writes request.error to the log
                alice.remove_model("no-such-model")
    finally:
        daemon.stop(signal.SIGKILL)
        reader.join()


# --------------------------------------------------------------------------- keys/ under --auth keys


def keyed_state(state: State) -> Path:
    """A keys folder with a tenant and an operator, and the daemon's keypair; returns keys/."""
    auth.add_tenant(state.dir, "alice")
    auth.add_tenant(state.dir, "ops", "operator")
    auth.KeyRing.load(state.dir).server_keys()
    return state.dir / "keys"


def damage_keys(keys: Path, damage: str) -> Path:
    """Put one damaged key file into ``keys``; returns it."""
    tenants = keys / "tenants"
    good = (tenants / "alice.key").read_text()
    if damage == "garbage":
        bad = tenants / "bob.key"
        bad.write_text("this is not a certificate\n= = =\n")
    elif damage == "binary junk":
        bad = tenants / "bob.key"
        bad.write_bytes(random.Random(2).randbytes(300))
    elif damage == "a bad name":
        bad = tenants / "bob smith.key"
        bad.write_text(good.replace("alice", "bob"))
    elif damage == "unreadable (dangling link)":
        bad = tenants / "bob.key"
        bad.symlink_to(keys / "nowhere")
    elif damage == "unreadable (a directory)":
        bad = tenants / "bob.key"
        bad.mkdir()
    elif damage == "unreadable (mode 000)":
        bad = tenants / "bob.key"  # a valid key of its own, that the daemon cannot read
        bad.write_text(good.replace(good.split('"')[1], zmq.curve_keypair()[0].decode()))
        bad.chmod(0)
    elif damage == "cut short in its key line":
        bad = tenants / "bob.key"
        bad.write_text(good[: good.index("public-key") + len("public-key")])
    elif damage == "the daemon's own secret key cut short":
        bad = keys / auth.SERVER_SECRET_FILE
        text = bad.read_text()
        bad.write_text(text[: text.index("secret-key") + len("secret-key")])
    else:
        raise AssertionError(damage)
    return bad


UNREADABLE_AS_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
KEY_DAMAGE = [
    ("garbage", "is not a ZeroMQ certificate"),
    ("binary junk", "is not a ZeroMQ certificate"),
    ("a bad name", "tenant name 'bob smith' is not valid"),
    ("unreadable (dangling link)", "cannot be read"),
    ("unreadable (a directory)", "cannot be read"),
    pytest.param("unreadable (mode 000)", "cannot be read", marks=UNREADABLE_AS_ROOT),
]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        *KEY_DAMAGE,
        ("cut short in its key line", "bob.key"),
        ("the daemon's own secret key cut short", "server.key_secret"),
    ],
)
def test_a_damaged_key_file_stops_the_daemon_naming_it(state: State, damage: str, fragment: str) -> None:
    bad = damage_keys(keyed_state(state), damage)
    files = state.model_files()
    refusal = state.refused("--auth", "keys")
    assert_refused_clearly(refusal, EXIT_CONFIG, fragment)
    assert str(bad) in refusal.stderr
    assert state.model_files() == files


def keys_reload(daemon: DaemonProcess, keys: Path) -> list[str]:
    with TenantClient(
        daemon.endpoint, key_file=keys / "issued/operators/ops.key_secret", server_key=keys / "server.key"
    ) as operator:
        return operator.reload_keys()


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [*KEY_DAMAGE, ("cut short in its key line", "bob.key")],
)
def test_a_damaged_key_file_is_not_reloaded_and_the_old_keys_stay(state: State, damage: str, fragment: str) -> None:
    keys = keyed_state(state)
    daemon = state.start("--auth", "keys")
    try:
        bad = damage_keys(keys, damage)
        with pytest.raises(E.BadRequest, match="keys not reloaded, the old ones stay") as refused:
            keys_reload(daemon, keys)
        assert fragment in str(refused.value)
        with TenantClient(
            daemon.endpoint, key_file=keys / "issued/tenants/alice.key_secret", server_key=keys / "server.key"
        ) as alice:
            assert alice.ping()["pong"] is True
        if bad.is_dir() and not bad.is_symlink():
            bad.rmdir()
        else:
            bad.unlink()
        assert sorted(keys_reload(daemon, keys)) == ["operator:ops", "tenant:alice"]
    finally:
        stop_cleanly(daemon)


# --------------------------------------------------------------------------- lock


@pytest.mark.parametrize("left", ["garbage", "by a killed daemon"])
def test_a_lock_file_left_behind_does_not_stop_the_daemon(state: State, model_files: ModelFiles, left: str) -> None:
    daemon = state.start()
    submit(daemon, "alice", model_files.mlp, "a")
    if left == "by a killed daemon":
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    else:
        stop_cleanly(daemon)
        (state.dir / "lock").write_bytes(random.Random(3).randbytes(500))
    before = (state.dir / "lock").read_bytes()
    daemon = state.start()
    after = (state.dir / "lock").read_bytes()
    assert after.isdigit() and after != before  # the new daemon's pid, over what was left
    with TenantClient(daemon.endpoint, tenant="alice") as alice:
        assert np.array_equal(alice.infer("a", X_MLP)["probs"], direct_litert(model_files.mlp, X_MLP)["probs"])
    stop_cleanly(daemon)


def test_a_lock_that_is_not_a_file_stops_the_daemon_with_one_line(state: State) -> None:
    (state.dir / "lock").mkdir(parents=True)
    assert_refused_clearly(state.refused(), EXIT_CONFIG, "lock")


# --------------------------------------------------------------------------- blobs/


def test_model_files_with_bytes_changed_never_take_the_daemon_down(state: State, model_files: ModelFiles) -> None:
    """A model file of the right size whose bytes changed passes the size check at start-up (the
    store does not hash gigabytes before serving; tenantd/store.py): the runtime's own checks must
    then refuse it, or it is served as it now is, while the other models are served unharmed."""
    daemon = state.start()
    damaged = {f"m{i}": submit(daemon, "alice", tiny.mlp(32, [64], 10, seed=40 + i), f"m{i}") for i in range(4)}
    submit(daemon, "bob", model_files.mlp_b, "intact")
    stop_cleanly(daemon)
    for i, sha in enumerate(damaged.values()):
        blob = next((state.dir / "blobs").rglob(sha))
        data = bytearray(blob.read_bytes())
        rng = random.Random(i)
        if i == 0:
            data[4:8] = b"XXXX"  # the TFLite file identifier
        # Then bytes in the root tables (offsets, vector lengths), and anywhere.
        for _ in range((0, 8, 64, 512)[i]):
            data[rng.randrange(min(len(data), 256) if i == 1 else len(data))] = rng.randrange(256)
        blob.write_bytes(bytes(data))
    daemon = state.start()
    with TenantClient(daemon.endpoint, tenant="alice") as alice, TenantClient(daemon.endpoint, tenant="bob") as bob:
        for name in damaged:
            try:
                alice.infer(name, X_MLP)
            except E.RuntimeFailed:
                pass  # refused, and said so
        x = X_MLP[:, :16]
        assert np.array_equal(bob.infer("intact", x)["probs"], direct_litert(model_files.mlp_b, x)["probs"])
    log = stop_cleanly(daemon)
    assert "model m0 of tenant alice could not be loaded" in log  # the identifier's damage, at least


def test_stray_temporary_model_files_are_removed_and_the_models_kept(state: State, model_files: ModelFiles) -> None:
    """``.incoming-*`` files are what a crash in the middle of writing a model file leaves."""
    daemon = state.start()
    sha = submit(daemon, "alice", model_files.mlp, "a")
    stop_cleanly(daemon)
    shard = state.dir / "blobs" / "sha256" / sha[:2]
    strays = [
        shard / ".incoming-k2j3h4",  # beside a model file
        state.dir / "blobs" / "sha256" / "ff" / ".incoming-0000aa",  # in a shard no model uses
        shard / ".incoming-empty",
    ]
    strays[1].parent.mkdir(exist_ok=True)
    strays[0].write_bytes(model_files.mlp.read_bytes()[:1000])  # a model file cut short mid-write
    strays[1].write_bytes(random.Random(4).randbytes(5000))
    strays[2].write_bytes(b"")
    kept = (shard / sha).read_bytes()
    daemon = state.start()
    with TenantClient(daemon.endpoint, tenant="alice") as alice:
        assert np.array_equal(alice.infer("a", X_MLP)["probs"], direct_litert(model_files.mlp, X_MLP)["probs"])
        assert alice.status()["damaged_models"] == []
    stop_cleanly(daemon)
    assert [p for p in strays if p.exists()] == []
    assert (shard / sha).read_bytes() == kept

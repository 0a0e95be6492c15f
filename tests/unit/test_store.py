"""Unit tests for tenantd.store: content-addressed blobs, model metadata, durability."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantd.errors import NameTaken, NotOwner, StorageFull
from tenantd.store import SCHEMA_VERSION, ModelRecord, Store, StoreUnusable
from tenantwire.tensors import TensorSpec

REPO_ROOT = Path(__file__).parents[2]

INPUTS = (
    TensorSpec("input", "float32", (1, -1, 3)),
    TensorSpec("mask", "int8", (4,), quantization=(0.5, -3)),
)
OUTPUTS = (TensorSpec("logits", "float16", (1, 10)),)


def make_record(name: str, owner: str, sha: str, size: int = 10, **overrides: object) -> ModelRecord:
    fields: dict[str, object] = {
        "name": name,
        "owner": owner,
        "sha256": sha,
        "size_bytes": size,
        "runtime": "litert",
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "footprint_bytes": 4096,
        "load_ms": 1.25,
        "first_infer_ms": 0.5,
        "filename": f"{name}.tflite",
        "probe": {"ops": 3, "delegate": None, "nested": {"a": [1, 2]}},
        "created_at": 1_700_000_000.123456,
    }
    fields.update(overrides)
    return ModelRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path)
    yield s
    s.close()


def _blob_files(s: Store) -> set[str]:
    return {p.name for p in s.blob_dir.glob("*/*")}


# --------------------------------------------------------------------------- blobs


def test_put_blob_is_content_addressed(store: Store) -> None:
    data = b"model bytes \x00\x01\x02"
    sha, path = store.put_blob(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert path == store.blob_dir / sha[:2] / sha
    assert path.read_bytes() == data
    assert store.blob_path(sha) == path


def test_put_blob_accepts_memoryview(store: Store) -> None:
    data = bytearray(b"abc" * 100)
    sha, path = store.put_blob(memoryview(data))
    assert sha == hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == bytes(data)


def test_put_blob_is_idempotent(store: Store) -> None:
    data = b"same content"
    sha1, path1 = store.put_blob(data)
    mtime = path1.stat().st_mtime_ns
    sha2, path2 = store.put_blob(bytes(data))
    assert (sha1, path1) == (sha2, path2)
    assert path2.stat().st_mtime_ns == mtime  # not rewritten
    assert _blob_files(store) == {sha1}
    assert not list(store.blob_dir.glob("*/.incoming-*"))


def test_different_content_gets_different_blobs(store: Store) -> None:
    sha_a, path_a = store.put_blob(b"a")
    sha_b, path_b = store.put_blob(b"b")
    assert sha_a != sha_b
    assert path_a.read_bytes() == b"a"
    assert path_b.read_bytes() == b"b"
    assert _blob_files(store) == {sha_a, sha_b}


# --------------------------------------------------------------------------- models


def test_add_get_list_remove_round_trip(store: Store) -> None:
    sha, _ = store.put_blob(b"model-1")
    record = make_record("m1", "alice", sha)
    store.add_model(record)

    got = store.get_model("m1")
    assert got == record
    assert got is not None
    assert got.inputs == INPUTS
    assert got.inputs[1].quantization == (0.5, -3)
    assert got.outputs == OUTPUTS
    assert got.probe == {"ops": 3, "delegate": None, "nested": {"a": [1, 2]}}
    assert got.filename == "m1.tflite"
    assert got.state == "admitted"

    assert store.list_models() == [record]
    assert store.list_models("alice") == [record]
    assert store.list_models("bob") == []
    assert store.list_tenants() == ["alice"]

    removed = store.remove_model("m1")
    assert removed == record
    assert store.get_model("m1") is None
    assert store.list_models() == []
    assert store.remove_model("m1") is None


def test_get_unknown_model_is_none(store: Store) -> None:
    assert store.get_model("nope") is None


def test_list_models_filters_by_owner_and_orders_by_creation(store: Store) -> None:
    sha, _ = store.put_blob(b"shared")
    late = make_record("zeta", "alice", sha, created_at=300.0)
    early = make_record("beta", "alice", sha, created_at=100.0)
    bobs = make_record("alpha", "bob", sha, created_at=200.0)
    for r in (late, early, bobs):
        store.add_model(r)
    assert [r.name for r in store.list_models()] == ["beta", "alpha", "zeta"]
    assert [r.name for r in store.list_models("alice")] == ["beta", "zeta"]
    assert [r.name for r in store.list_models("bob")] == ["alpha"]
    assert store.list_tenants() == ["alice", "bob"]


def test_add_existing_name_same_owner_needs_replace(store: Store) -> None:
    sha1, _ = store.put_blob(b"v1")
    sha2, _ = store.put_blob(b"v2")
    store.add_model(make_record("m", "alice", sha1))
    with pytest.raises(NameTaken):
        store.add_model(make_record("m", "alice", sha2))
    assert store.get_model("m").sha256 == sha1  # type: ignore[union-attr]

    store.add_model(make_record("m", "alice", sha2, size=2), replace=True)
    got = store.get_model("m")
    assert got is not None
    assert got.sha256 == sha2
    assert got.size_bytes == 2
    assert len(store.list_models()) == 1


@pytest.mark.parametrize("replace", [False, True])
def test_add_name_owned_by_another_tenant_is_forbidden(store: Store, replace: bool) -> None:
    sha1, _ = store.put_blob(b"alice's")
    sha2, _ = store.put_blob(b"bob's")
    store.add_model(make_record("m", "alice", sha1))
    with pytest.raises(NotOwner) as info:
        store.add_model(make_record("m", "bob", sha2), replace=replace)
    # The reply goes to bob: it says the name is taken without naming its owner.
    assert "another tenant" in str(info.value) and "alice" not in str(info.value)
    got = store.get_model("m")
    assert got is not None and got.owner == "alice" and got.sha256 == sha1


def test_add_fails_if_blob_missing(store: Store) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(FileNotFoundError):
        store.add_model(make_record("m", "alice", missing))
    assert store.get_model("m") is None
    assert store.list_tenants() == []


def test_remove_keeps_blob_still_referenced_by_another_model(store: Store) -> None:
    sha, path = store.put_blob(b"shared weights")
    store.add_model(make_record("a", "alice", sha))
    store.add_model(make_record("b", "bob", sha))
    store.release_blob(sha)  # the submission is over; the models reference the file now

    store.remove_model("a")
    assert path.exists(), "blob deleted while model 'b' still uses it"
    assert store.get_model("b") is not None

    store.remove_model("b")
    assert not path.exists()
    assert _blob_files(store) == set()


def test_remove_deletes_unshared_blob_only(store: Store) -> None:
    sha_a, path_a = store.put_blob(b"a")
    sha_b, path_b = store.put_blob(b"b")
    store.add_model(make_record("a", "alice", sha_a))
    store.add_model(make_record("b", "alice", sha_b))
    store.release_blob(sha_a)
    store.release_blob(sha_b)
    store.remove_model("a")
    assert not path_a.exists()
    assert path_b.exists()


def test_discard_blob_if_unreferenced(store: Store) -> None:
    sha, path = store.put_blob(b"used")
    store.add_model(make_record("m", "alice", sha))
    store.release_blob(sha)
    assert store.discard_blob_if_unreferenced(sha) is False
    assert path.exists()
    orphan, orphan_path = store.put_blob(b"orphan")
    assert store.discard_blob_if_unreferenced(orphan) is False  # held: its submission is running
    assert orphan_path.exists()
    store.release_blob(orphan)  # the submission failed: nothing references the file
    assert not orphan_path.exists()
    assert store.discard_blob_if_unreferenced(orphan) is True


def test_collect_garbage_removes_orphans_and_temp_files(tmp_path: Path) -> None:
    crashed = Store(tmp_path)
    kept, kept_path = crashed.put_blob(b"referenced")
    crashed.add_model(make_record("m", "alice", kept))
    orphan, orphan_path = crashed.put_blob(b"orphaned by a crash mid-submit")
    crashed.close()  # the daemon died mid-submit: its holds died with it
    store = Store(tmp_path)
    temp = kept_path.parent / ".incoming-abc123"
    temp.write_bytes(b"half a file")
    other_temp = orphan_path.parent / ".incoming-zzz"
    other_temp.write_bytes(b"")

    removed = store.collect_garbage()

    assert orphan in removed
    assert kept not in removed
    assert kept_path.read_bytes() == b"referenced"
    assert not orphan_path.exists()
    # Set aside, not deleted: a lost commit and a crash mid-submit look the same from here.
    assert (tmp_path / "orphans" / orphan).read_bytes() == b"orphaned by a crash mid-submit"
    assert not temp.exists()
    assert not other_temp.exists()
    assert _blob_files(store) == {kept}
    assert store.get_model("m") is not None
    # Nothing left to collect the second time.
    assert store.collect_garbage() == []
    store.close()


def test_a_held_file_survives_removal_of_another_model_with_the_same_content(store: Store) -> None:
    """Alice removes her model while bob submits the same bytes: bob's file must not vanish."""
    sha, path = store.put_blob(b"popular public model")
    store.add_model(make_record("alice_m", "alice", sha))
    store.release_blob(sha)
    bob_sha, _ = store.put_blob(b"popular public model")  # bob's submission starts (held)
    store.remove_model("alice_m")
    assert path.exists(), "removed while bob's submission was probing it"
    store.add_model(make_record("bob_m", "bob", bob_sha))
    store.release_blob(bob_sha)
    assert path.exists() and store.get_model("bob_m") is not None


# --------------------------------------------------------------------------- durability


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    first = Store(tmp_path)
    sha, _ = first.put_blob(b"durable")
    record = make_record("m", "alice", sha)
    first.add_model(record)
    first.close()

    second = Store(tmp_path)
    try:
        assert second.get_model("m") == record
        assert second.list_tenants() == ["alice"]
        assert second.blob_path(sha).read_bytes() == b"durable"
        assert second.collect_garbage() == []
    finally:
        second.close()


CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    from tenantd.store import ModelRecord, Store
    from tenantwire.tensors import TensorSpec

    store = Store(Path(sys.argv[1]))
    sha, _ = store.put_blob(b"committed by a child that dies")
    store.add_model(ModelRecord(
        name="crashy", owner="carol", sha256=sha, size_bytes=30, runtime="litert",
        inputs=(TensorSpec("x", "float32", (1, 4)),), outputs=(TensorSpec("y", "int8", (2,), (0.25, 7)),),
        footprint_bytes=123, load_ms=4.5, first_infer_ms=1.5, probe={"k": "v"},
    ))
    os.write(1, (sha + "\\n").encode())
    os._exit(0)  # no close, no flush, no atexit: like a kill -9 right after the ack
    """
)


def test_committed_model_is_visible_after_writer_dies_without_closing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    sha = result.stdout.strip()

    store = Store(tmp_path)
    try:
        got = store.get_model("crashy")
        assert got is not None
        assert got.owner == "carol"
        assert got.sha256 == sha
        assert got.inputs == (TensorSpec("x", "float32", (1, 4)),)
        assert got.outputs == (TensorSpec("y", "int8", (2,), (0.25, 7)),)
        assert got.probe == {"k": "v"}
        assert store.blob_path(sha).read_bytes() == b"committed by a child that dies"
        assert store.collect_garbage() == []
    finally:
        store.close()


def test_schema_version_mismatch_raises(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / Store.DB_NAME)
    with db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(StoreUnusable) as info:
        Store(tmp_path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)


def test_new_store_records_schema_version(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / Store.DB_NAME)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    finally:
        db.close()
    assert row == (str(SCHEMA_VERSION),)


def test_remove_racing_a_submit_of_the_same_file_never_commits_a_dangling_model(tmp_path: Path) -> None:
    """remove_model's reference check and unlink happen under the lock add_model takes to check
    the blob and commit, so a racing submit of the same bytes either keeps the file alive or is
    refused at commit; it never commits a model whose file is gone."""
    store = Store(tmp_path)
    try:
        data = b"popular model"
        sha, path = store.put_blob(data)
        store.add_model(make_record("old", "alice", sha))
        store.release_blob(sha)
        real_blob_path = store.blob_path
        locked_at_call: list[bool] = []

        def spy(h: str) -> Path:
            locked_at_call.append(store._lock.locked())
            return real_blob_path(h)

        store.blob_path = spy  # type: ignore[method-assign]
        store.remove_model("old")
        assert locked_at_call and all(locked_at_call)
        assert not path.exists()
        # The racing submit saw the file before it went: its commit is refused, not dangling.
        with pytest.raises(FileNotFoundError):
            store.add_model(make_record("new", "bob", sha))
        assert store.get_model("new") is None
        store.put_blob(data)
        store.add_model(make_record("new", "bob", sha))
        assert path.exists() and store.get_model("new") is not None
    finally:
        store.close()


# --------------------------------------------------------------------------- a database to trust


def _stored(tmp_path: Path, models: int = 3) -> dict[str, bytes]:
    """A store with ``models`` models, closed; returns its blobs (name -> content)."""
    store = Store(tmp_path)
    blobs = {}
    for i in range(models):
        data = f"model file {i}".encode() * 10
        sha, _ = store.put_blob(data)
        store.add_model(make_record(f"m{i}", "alice", sha, size=len(data)))
        store.release_blob(sha)
        blobs[sha] = data
    store.close()
    return blobs


def _blobs_on_disk(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (tmp_path / "blobs" / "sha256").glob("*/*")}


def _refused(tmp_path: Path, *fragments: str) -> str:
    """Opening the store is refused with a one-line message holding ``fragments``; the database
    file and every model file are as they were."""
    db = tmp_path / Store.DB_NAME
    before = (db.read_bytes() if db.exists() else None, _blobs_on_disk(tmp_path))
    with pytest.raises(StoreUnusable) as info:
        Store(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert (db.read_bytes() if db.exists() else None, _blobs_on_disk(tmp_path)) == before
    return message


def test_zero_byte_database_with_model_files_is_refused_and_nothing_is_deleted(tmp_path: Path) -> None:
    blobs = _stored(tmp_path, models=5)
    (tmp_path / Store.DB_NAME).write_bytes(b"")  # the issue: truncated while the daemon was stopped
    message = _refused(tmp_path, "tenantd.db is empty (0 bytes)", "restore tenantd.db from a backup", "5 model file(s)")
    assert "nothing was deleted" in message
    assert _blobs_on_disk(tmp_path) == blobs


def test_missing_database_with_model_files_is_refused_and_not_created(tmp_path: Path) -> None:
    _stored(tmp_path)
    (tmp_path / Store.DB_NAME).unlink()
    _refused(tmp_path, "tenantd.db is missing", "3 model file(s)")
    assert not (tmp_path / Store.DB_NAME).exists()


@pytest.mark.parametrize("with_blobs", [True, False], ids=["with model files", "without"])
def test_garbage_database_is_refused_clearly(tmp_path: Path, with_blobs: bool) -> None:
    if with_blobs:
        _stored(tmp_path)
    else:
        (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    (tmp_path / Store.DB_NAME).write_bytes(b"this is not an SQLite database, just bytes " * 100)
    _refused(tmp_path, "is not a readable SQLite database", "file is not a database", "restore tenantd.db")


def test_database_cut_short_is_refused(tmp_path: Path) -> None:
    _stored(tmp_path, models=300)
    db = tmp_path / Store.DB_NAME
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    _refused(tmp_path, "tenantd.db", "restore tenantd.db from a backup")


def test_database_failing_the_integrity_check_is_refused(tmp_path: Path) -> None:
    _stored(tmp_path, models=300)
    db = tmp_path / Store.DB_NAME
    with sqlite3.connect(db) as conn:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='models'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * page_size] = 0x07  # the models table's root page: no longer a b-tree page
    db.write_bytes(bytes(data))
    _refused(tmp_path, "fails SQLite's integrity check", "restore tenantd.db")


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("DROP TABLE models", "lacks the table(s) models"),
        ("DELETE FROM meta", "records no schema version"),
        (f"UPDATE meta SET value='{SCHEMA_VERSION + 1}'", f"schema version {SCHEMA_VERSION + 1}"),
    ],
    ids=["no models table", "no schema version", "another schema version"],
)
def test_database_without_tenantds_schema_is_refused(tmp_path: Path, damage: str, fragment: str) -> None:
    _stored(tmp_path)
    with sqlite3.connect(tmp_path / Store.DB_NAME) as conn:
        conn.execute(damage)
    conn.close()
    _refused(tmp_path, fragment)


def test_another_programs_database_is_refused_when_model_files_exist(tmp_path: Path) -> None:
    _stored(tmp_path)
    (tmp_path / Store.DB_NAME).unlink()
    with sqlite3.connect(tmp_path / Store.DB_NAME) as conn:
        conn.execute("PRAGMA user_version=7")  # a valid SQLite file with no tables at all
    conn.close()
    _refused(tmp_path, "has no tables")


def test_new_or_empty_database_without_model_files_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Store(tmp_path / "new").close()  # a brand-new state directory
    assert "empty" not in caplog.text
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / Store.DB_NAME).write_bytes(b"")
    store = Store(tmp_path / "zero")
    try:
        assert store.list_models() == [] and store.collect_garbage() == []
        sha, _ = store.put_blob(b"a first model")
        store.add_model(make_record("m", "alice", sha, size=13))
    finally:
        store.close()
    assert "was empty and there are no model files" in caplog.text
    Store(tmp_path / "zero").close()  # and it is a healthy store now


def test_garbage_collection_on_a_healthy_database_removes_only_orphans(tmp_path: Path) -> None:
    blobs = _stored(tmp_path)
    orphans = {hashlib.sha256(b"orphan %d" % i).hexdigest(): b"orphan %d" % i for i in range(2)}
    for sha, data in orphans.items():
        path = tmp_path / "blobs" / "sha256" / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    store = Store(tmp_path)
    try:
        assert sorted(store.collect_garbage()) == sorted(orphans)
        assert _blobs_on_disk(tmp_path) == blobs
        assert [m.name for m in store.list_models()] == ["m0", "m1", "m2"]
    finally:
        store.close()


def test_missing_or_wrong_size_model_files_are_reported(tmp_path: Path) -> None:
    blobs = _stored(tmp_path)
    missing, cut, intact = sorted(blobs)
    store = Store(tmp_path)
    try:
        store.blob_path(missing).unlink()
        store.blob_path(cut).write_bytes(blobs[cut][:-5])
        problems = {r.sha256: store.model_file_problem(r) for r in store.list_models()}
        assert problems[intact] is None
        assert problems[missing] == f"its file {store.blob_path(missing)} is missing"
        assert (
            problems[cut]
            == f"its file {store.blob_path(cut)} has {len(blobs[cut]) - 5} bytes, but {len(blobs[cut])} were stored"
        )
        by_sha = {r.name: r.sha256 for r in store.list_models()}
        damaged = {d["model"]: d for d in store.damaged_models()}
        assert {by_sha[name] for name in damaged} == {missing, cut}
        assert all(d["tenant"] == "alice" and d["reason"] == problems[by_sha[n]] for n, d in damaged.items())
        # Submitting the same bytes again repairs the file (it is not skipped as already stored).
        for sha in (missing, cut):
            store.put_blob(blobs[sha])
            store.release_blob(sha)
        assert store.damaged_models() == []
        assert _blobs_on_disk(tmp_path) == blobs
    finally:
        store.close()


def test_a_full_database_is_storage_full_and_the_store_stays_usable(store: Store) -> None:
    """SQLite's own SQLITE_FULL ("database or disk is full"), made real with max_page_count."""
    sha, _ = store.put_blob(b"model bytes")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    big = make_record("m", "alice", sha)
    big = ModelRecord(**{**big.__dict__, "probe": {"pad": "x" * 100_000}})  # needs new pages
    with pytest.raises(StorageFull, match="state disk is full"):
        store.add_model(big)
    assert store.list_models() == []  # nothing half-written
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
    store.add_model(big)  # the connection is not left inside a failed transaction
    assert [r.name for r in store.list_models()] == ["m"]

"""The model store: content-addressed model files plus SQLite metadata, durable across crashes.

Files live at ``<state-dir>/blobs/sha256/<first two hex>/<hash>``; the database
``<state-dir>/tenantd.db`` holds tenants and models (name, owner, runtime, specs, probe figures,
state). A model counts as stored only once its file has been fsynced and renamed into place *and*
its row committed (WAL, synchronous=FULL); the daemon acknowledges a submission only after
:meth:`Store.add_model` returns, so every acknowledged model survives a kill -9. A crash between the
two steps leaves at most an orphaned file, which :meth:`Store.collect_garbage` removes at start-up.

The database is what accounts for the files, so a store opens only on a database it can trust: one
with tenantd's tables and schema version that passes SQLite's quick integrity check, or none at all
(a new store: no database, or an empty one, and no model files). A database that is missing, empty,
unreadable or damaged while model files exist raises :class:`StoreUnusable`, with what is wrong and
how to recover, before anything is changed; otherwise its garbage collection would delete every
file it no longer knows about. Each stored model's file is also checked against the size recorded
for it (:meth:`Store.model_file_problem`), so the daemon names a damaged model rather than load it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantd.errors import NameTaken, NotOwner, StorageFull
from tenantwire.tensors import TensorSpec

SCHEMA_VERSION = 1
_TABLES = ("meta", "tenants", "models", "pipelines")
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("tenantd.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES tenants(name),
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    runtime TEXT NOT NULL,
    filename TEXT,
    inputs TEXT NOT NULL,
    outputs TEXT NOT NULL,
    footprint_bytes INTEGER NOT NULL,
    load_ms REAL NOT NULL,
    first_infer_ms REAL NOT NULL,
    probe TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS models_by_sha ON models (sha256);
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES tenants(name),
    spec TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ModelRecord:
    """Everything the daemon knows about a stored model."""

    name: str
    owner: str
    sha256: str
    size_bytes: int
    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    footprint_bytes: int
    load_ms: float
    first_infer_ms: float
    filename: str | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    state: str = "admitted"
    created_at: float = field(default_factory=time.time)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "runtime": self.runtime,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "inputs": [s.to_wire() for s in self.inputs],
            "outputs": [s.to_wire() for s in self.outputs],
            "footprint_bytes": self.footprint_bytes,
            "load_ms": self.load_ms,
            "first_infer_ms": self.first_infer_ms,
            "state": self.state,
            "created_at": self.created_at,
        }


class StoreUnusable(RuntimeError):
    """The store cannot be used safely: its database is missing or empty while model files exist,
    unreadable, damaged, or of another schema version. The message says what is wrong and how to
    recover, in one line; nothing has been changed."""


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    DB_NAME = "tenantd.db"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.blob_dir = state_dir / "blobs" / "sha256"
        self.orphan_dir = state_dir / "orphans"  # model files no row references: kept, never deleted
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # sha -> submissions in progress using that file
        path = state_dir / self.DB_NAME
        blobs = sum(1 for p in self.blob_dir.glob("*/*") if _BLOB_NAME.fullmatch(p.name))
        # SQLite takes a missing or zero-byte file for an empty database (and drops a WAL beside a
        # zero-byte one), so this is decided before SQLite opens it.
        new = not path.exists()
        if (new or path.stat().st_size == 0) and blobs:
            what = "is missing" if new else "is empty (0 bytes)"
            raise StoreUnusable(f"{path} {what}, so nothing accounts for the model files; {self._recovery(blobs)}")
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnusable(f"cannot open {path} ({exc}); {self._recovery(blobs)}") from exc
        try:
            if self._check_database(path, blobs) and not new:
                log.warning("%s was empty and there are no model files: starting with an empty store", path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction() as db:
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    db.execute(statement)
                if db.execute("SELECT 1 FROM meta WHERE key='schema_version'").fetchone() is None:
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreUnusable(f"{path} is not a readable SQLite database ({exc}); {self._recovery(blobs)}") from exc
        except StoreUnusable:
            self._db.close()
            raise

    def _recovery(self, blobs: int) -> str:
        """How to get a daemon serving again, in words an operator can act on."""
        db = self.state_dir / self.DB_NAME
        if not blobs:
            return f"restore {db.name} from a backup, or move it (with any {db.name}-wal) aside to start an empty store"
        return (
            f"restore {db.name} from a backup, or move {db.name} and {self.blob_dir.parent} aside to start an empty "
            f"store; the {blobs} model file(s) under {self.blob_dir.parent} are kept, nothing was deleted"
        )

    def _check_database(self, path: Path, blobs: int) -> bool:
        """Raise StoreUnusable unless the database is tenantd's, of this schema version and intact.
        Returns True for an empty database (a new store)."""
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            if blobs:
                raise StoreUnusable(
                    f"{path} has no tables, so nothing accounts for the model files; {self._recovery(blobs)}"
                )
            return True
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            raise StoreUnusable(
                f"{path} lacks the table(s) {', '.join(missing)}: it is not tenantd's database, or it is damaged; "
                + self._recovery(blobs)
            )
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise StoreUnusable(f"{path} records no schema version: it is damaged; {self._recovery(blobs)}")
        if str(row[0]) != str(SCHEMA_VERSION):
            raise StoreUnusable(
                f"{path} has schema version {row[0]}; this tenantd reads {SCHEMA_VERSION}: run the tenantd that "
                f"wrote it, or {self._recovery(blobs)}"
            )
        problems = [" ".join(str(r[0]).split()) for r in self._db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise StoreUnusable(
                f"{path} fails SQLite's integrity check ({'; '.join(problems)}); {self._recovery(blobs)}"
            )
        return False

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _full_disk_refused("the model store's database"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")  # may fail too (a full disk): then nothing was committed
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ blobs

    def blob_path(self, sha: str) -> Path:
        return self.blob_dir / sha[:2] / sha

    def put_blob(self, data: bytes | memoryview) -> tuple[str, Path]:
        """Store ``data`` durably under its sha256 and return (hash, path). Idempotent.

        The file is *held* until :meth:`release_blob`: while a submission probes and loads it,
        removing another model with the same content must not delete it."""
        sha = sha256_hex(data)
        path = self.blob_path(sha)
        with self._lock:
            self._held[sha] = self._held.get(sha, 0) + 1
        try:
            with _full_disk_refused("the model file"):
                self._write_blob(data, path)
        except BaseException:
            self.release_blob(sha)
            raise
        return sha, path

    def _write_blob(self, data: bytes | memoryview, path: Path) -> None:
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        try:
            if path.stat().st_size == size:
                return  # already stored
        except FileNotFoundError:
            pass
        # Missing, or damaged (see model_file_problem): submitting the model again repairs it.
        new_shard = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        if new_shard:  # the shard directory's own entry must reach the disk too
            _fsync_dir(self.blob_dir)

    def release_blob(self, sha: str) -> None:
        """End a hold taken by :meth:`put_blob`; the file goes if nothing holds or references it."""
        with self._lock:
            count = self._held.get(sha, 0) - 1
            if count > 0:
                self._held[sha] = count
            else:
                self._held.pop(sha, None)
        self.discard_blob_if_unreferenced(sha)

    def discard_blob_if_unreferenced(self, sha: str) -> bool:
        # Check and delete under the lock that add_model holds while it checks the blob exists
        # and commits, so a model can never be committed pointing at a deleted file.
        with self._lock:
            referenced = self._db.execute("SELECT 1 FROM models WHERE sha256=? LIMIT 1", (sha,)).fetchone()
            if referenced or sha in self._held:
                return False
            self.blob_path(sha).unlink(missing_ok=True)
            return True

    def collect_garbage(self) -> list[str]:
        """Clear the model-file folder of what no model references. Returns the hashes set aside.

        Half-written files (``.incoming-*``) are deleted: no reply ever acknowledged them. A whole
        file no row references is left by a crash between its rename and its row's commit, or by
        commits the database lost (a damaged ``tenantd.db-wal``: SQLite drops a WAL whose checksums
        do not match, silently). The two cannot be told apart here, so such a file is never deleted:
        it is moved to ``orphans/`` beside ``blobs/`` and the caller says so, with how to recover."""
        with self._lock:
            live = {r[0] for r in self._db.execute("SELECT sha256 FROM models")}
            set_aside = []
            for path in self.blob_dir.glob("*/*"):
                if path.name.startswith(".incoming-"):
                    path.unlink(missing_ok=True)
                elif path.name not in live and path.name not in self._held:
                    self.orphan_dir.mkdir(exist_ok=True)
                    os.replace(path, self.orphan_dir / path.name)
                    set_aside.append(path.name)
            return set_aside

    def model_file_problem(self, record: ModelRecord) -> str | None:
        """Why ``record``'s file is not the one that was submitted and probed (missing, or not the
        size recorded then), or None. The file is not hashed: that would read every model file
        (gigabytes in a full store) before the daemon could serve, while what crashes, full disks
        and stray deletions leave (a missing or cut-short file) shows in its size; a changed byte
        inside a file of the right size is left to the runtime's own checks."""
        path = self.blob_path(record.sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"its file {path} is missing"
        except OSError as exc:
            return f"its file {path} cannot be read ({exc})"
        if size != record.size_bytes:
            return f"its file {path} has {size} bytes, but {record.size_bytes} were stored"
        return None

    def damaged_models(self) -> list[dict[str, str]]:
        """Every stored model whose file is missing or the wrong size: model, tenant, reason."""
        return [
            {"model": record.name, "tenant": record.owner, "reason": problem}
            for record in self.list_models()
            if (problem := self.model_file_problem(record)) is not None
        ]

    # ------------------------------------------------------------------ models

    def add_model(self, record: ModelRecord, replace: bool = False) -> None:
        """Commit ``record``; its blob must already be stored. Raises NotOwner if another tenant
        owns the name, NameTaken if a pipeline has it, or the owner has it and ``replace`` is false."""
        with self._transaction() as db:
            if not self.blob_path(record.sha256).exists():
                raise FileNotFoundError(f"blob {record.sha256} is not in the store")
            if db.execute("SELECT 1 FROM pipelines WHERE name=?", (record.name,)).fetchone():
                # A pipeline has the name: infer could not tell them apart.
                raise NameTaken(f"a pipeline named {record.name!r} exists (models and pipelines share names)")
            db.execute("INSERT OR IGNORE INTO tenants VALUES (?, ?)", (record.owner, time.time()))
            exists = db.execute("SELECT owner FROM models WHERE name=?", (record.name,)).fetchone()
            if exists and exists[0] != record.owner:
                raise NotOwner(f"model name {record.name!r} belongs to another tenant")
            if exists and not replace:
                raise NameTaken(f"you already have a model named {record.name!r}")
            db.execute(
                "INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.name,
                    record.owner,
                    record.sha256,
                    record.size_bytes,
                    record.runtime,
                    record.filename,
                    json.dumps([s.to_wire() for s in record.inputs]),
                    json.dumps([s.to_wire() for s in record.outputs]),
                    record.footprint_bytes,
                    record.load_ms,
                    record.first_infer_ms,
                    json.dumps(record.probe),
                    record.state,
                    record.created_at,
                ),
            )

    def remove_model(self, name: str) -> ModelRecord | None:
        with self._transaction() as db:
            record = self._get(db, name)
            if record is not None:
                db.execute("DELETE FROM models WHERE name=?", (name,))
        if record is not None:
            self.discard_blob_if_unreferenced(record.sha256)
        return record

    def get_model(self, name: str) -> ModelRecord | None:
        with self._lock:
            return self._get(self._db, name)

    def list_models(self, owner: str | None = None) -> list[ModelRecord]:
        query = "SELECT * FROM models" + (" WHERE owner=?" if owner else "") + " ORDER BY created_at, name"
        with self._lock:
            rows = self._db.execute(query, (owner,) if owner else ()).fetchall()
        return [self._record(row) for row in rows]

    # ------------------------------------------------------------------ pipelines

    def put_pipeline(self, name: str, owner: str, spec: dict[str, Any], replace: bool = False) -> None:
        """Commit a pipeline. Pipelines and models share one namespace (``infer`` names either):
        raises NameTaken if a model has the name, or a pipeline does and ``replace`` is false,
        NotOwner if another tenant owns it."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM models WHERE name=?", (name,)).fetchone():
                raise NameTaken(f"a model named {name!r} exists")
            exists = db.execute("SELECT owner FROM pipelines WHERE name=?", (name,)).fetchone()
            if exists and exists[0] != owner:
                raise NotOwner(f"pipeline {name!r} belongs to another tenant")
            if exists and not replace:
                raise NameTaken(f"a pipeline named {name!r} exists; pass replace to redefine it")
            db.execute("INSERT OR IGNORE INTO tenants VALUES (?, ?)", (owner, time.time()))
            db.execute(
                "INSERT OR REPLACE INTO pipelines VALUES (?,?,?,?)", (name, owner, json.dumps(spec), time.time())
            )

    def remove_pipeline(self, name: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM pipelines WHERE name=?", (name,)).rowcount > 0

    def list_pipelines(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, owner, spec) of every pipeline, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT name, owner, spec FROM pipelines ORDER BY created_at, name").fetchall()
        return [(name, owner, json.loads(spec)) for name, owner, spec in rows]

    def list_tenants(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM tenants ORDER BY name")]

    def _get(self, db: sqlite3.Connection, name: str) -> ModelRecord | None:
        row = db.execute("SELECT * FROM models WHERE name=?", (name,)).fetchone()
        return self._record(row) if row else None

    @staticmethod
    def _record(row: tuple[Any, ...]) -> ModelRecord:
        (
            name,
            owner,
            sha,
            size,
            runtime,
            filename,
            inputs,
            outputs,
            footprint,
            load_ms,
            first_ms,
            probe,
            state,
            created,
        ) = row
        return ModelRecord(
            name=name,
            owner=owner,
            sha256=sha,
            size_bytes=size,
            runtime=runtime,
            filename=filename,
            inputs=tuple(TensorSpec.from_wire(d) for d in json.loads(inputs)),
            outputs=tuple(TensorSpec.from_wire(d) for d in json.loads(outputs)),
            footprint_bytes=footprint,
            load_ms=load_ms,
            first_infer_ms=first_ms,
            probe=json.loads(probe),
            state=state,
            created_at=created,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


@contextmanager
def _full_disk_refused(what: str) -> Iterator[None]:
    """A full disk (or quota) is the operator's to fix, and nothing was stored: say so with a code
    the client can retry on, rather than INTERNAL."""
    message = f"the daemon's state disk is full: {what} could not be written; retry after space is freed"
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StorageFull(message) from None
    except sqlite3.OperationalError as exc:
        if "disk is full" not in str(exc):  # SQLITE_FULL: "database or disk is full"
            raise
        raise StorageFull(message) from None

"""The model store: content-addressed model files plus SQLite metadata, durable across crashes.

Files live at ``<state-dir>/blobs/sha256/<first two hex>/<hash>``; the database
``<state-dir>/tenantd.db`` holds tenants and models (name, owner, runtime, specs, probe figures,
state). A model counts as stored only once its file has been fsynced and renamed into place *and*
its row committed (WAL, synchronous=FULL); the daemon acknowledges a submission only after
:meth:`Store.add_model` returns, so every acknowledged model survives a kill -9. A crash between the
two steps leaves at most an orphaned file, which :meth:`Store.collect_garbage` removes at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantd.errors import NameTaken, NotOwner
from tenantwire.tensors import TensorSpec

SCHEMA_VERSION = 1

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
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # sha -> submissions in progress using that file
        self._db = sqlite3.connect(state_dir / self.DB_NAME, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as db:
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"{state_dir / self.DB_NAME} has schema version {row[0]}; this tenantd reads {SCHEMA_VERSION}"
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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
            self._write_blob(data, path)
        except BaseException:
            self.release_blob(sha)
            raise
        return sha, path

    def _write_blob(self, data: bytes | memoryview, path: Path) -> None:
        if path.exists():
            return
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
        """Remove files no model references (left by a crash mid-submit). Returns their names."""
        with self._lock:
            live = {r[0] for r in self._db.execute("SELECT sha256 FROM models")}
            removed = []
            for path in self.blob_dir.glob("*/*"):
                if path.name not in live and path.name not in self._held:
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
            return removed

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

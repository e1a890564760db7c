"""The annotation store and model registry: one SQLite file in WAL mode.

Every annotation Label Studio sends is written before the webhook is answered, and kept: the
``annotations`` table holds the latest state of each annotation (submitted, cancelled or
deleted, never removed), ``annotation_versions`` every distinct state it went through. Writing the
same event twice changes nothing (idempotent on the annotation id), so re-deliveries and re-syncs
are safe. A project's training set is derived from it: the latest submitted annotation per task.

The registry records each trained model version and which one serves each project; switching
is one transaction, so a reader sees the old version or the new one, never neither.

Example:
    >>> store = AnnotationStore(":memory:")
    >>> store.record_annotation("7", {"id": 1, "result": []}, {"id": 3, "data": {"text": "x"}})
    True
    >>> store.record_annotation("7", {"id": 1, "result": []}, {"id": 3, "data": {"text": "x"}})
    False
    >>> [(e.task_id, e.annotation_id) for e in store.training_examples("7")]
    [(3, 1)]
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clinie.sqlite_wal import open_wal, until_unlocked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project TEXT PRIMARY KEY,
    label_config TEXT,
    changes_since_training INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS annotations (
    annotation_id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    task_data TEXT NOT NULL,
    result TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('submitted', 'cancelled', 'deleted')),
    version INTEGER NOT NULL,
    completed_by INTEGER,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_project ON annotations (project, state);
CREATE TABLE IF NOT EXISTS annotation_versions (
    annotation_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    task_data TEXT NOT NULL,
    result TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (annotation_id, version)
);
CREATE TABLE IF NOT EXISTS models (
    version TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    n_examples INTEGER NOT NULL,
    info TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS serving (
    project TEXT PRIMARY KEY,
    version TEXT NOT NULL REFERENCES models (version),
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trainings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    version TEXT,
    error TEXT
);
"""


@dataclass(frozen=True)
class Example:
    """One usable annotation: the task (its id and data) and the annotator's result."""

    annotation_id: int
    task_id: int
    task: dict[str, Any]
    result: list[dict[str, Any]]


@dataclass(frozen=True)
class ModelRecord:
    version: str
    project: str
    kind: str
    path: Path
    n_examples: int
    info: dict[str, Any]
    created_at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class AnnotationStore:
    """Thread-safe: each thread gets its own connection; writes are immediate transactions."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)  # created private, with its directory, by open_wal
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        if self._path == ":memory:":  # one connection, or every thread would see its own empty DB
            self._shared = self._connect(check_same_thread=False)
            self._lock = threading.Lock()
        until_unlocked(lambda: self._db().executescript(_SCHEMA))  # executescript commits by itself

    def _connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        db = open_wal(self._path, check_same_thread=check_same_thread)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")  # an acknowledged annotation survives power loss
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _db(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        if getattr(self._local, "db", None) is None:
            self._local.db = self._connect()
        return self._local.db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._shared is not None:
            with self._lock:
                yield from self._transaction(self._shared)
        else:
            yield from self._transaction(self._db())

    @staticmethod
    def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        if self._shared is not None:
            with self._lock:
                return self._shared.execute(sql, tuple(params)).fetchall()
        return self._db().execute(sql, tuple(params)).fetchall()

    # --- projects -------------------------------------------------------------------------

    def set_label_config(self, project: str, label_config: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO projects (project, label_config, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (project) DO UPDATE SET label_config = excluded.label_config, "
                "updated_at = excluded.updated_at WHERE label_config IS NOT excluded.label_config",
                (project, label_config, _now()),
            )

    def projects(self) -> list[str]:
        return [r[0] for r in self._read("SELECT project FROM projects ORDER BY project")]

    def label_config(self, project: str) -> str | None:
        rows = self._read("SELECT label_config FROM projects WHERE project = ?", (project,))
        return rows[0]["label_config"] if rows else None

    def changes_since_training(self, project: str) -> int:
        rows = self._read("SELECT changes_since_training FROM projects WHERE project = ?", (project,))
        return rows[0][0] if rows else 0

    # --- annotations ----------------------------------------------------------------------

    def record_annotation(
        self, project: str, annotation: dict[str, Any], task: dict[str, Any], action: str = "ANNOTATION_CREATED"
    ) -> bool:
        """Store the latest state of an annotation; True when it is new or changed.

        Of the task, its id and data are kept: what else Label Studio sends with it (counters,
        timestamps) differs between a webhook and a re-sync of the same annotation.
        """
        state = "cancelled" if annotation.get("was_cancelled") else "submitted"
        task_data = _dump({"id": task["id"], "data": task.get("data")})
        return self._upsert(project, int(annotation["id"]), int(task["id"]), task_data,
                            _dump(annotation.get("result") or []), state, action,
                            annotation.get("completed_by"))

    def delete_annotations(self, project: str, annotation_ids: Iterable[int]) -> int:
        """Mark annotations deleted (their content is kept); returns how many changed."""
        changed = 0
        for annotation_id in annotation_ids:
            rows = self._read("SELECT task_id, task_data, result, completed_by FROM annotations "
                              "WHERE annotation_id = ?", (annotation_id,))
            if rows:
                r = rows[0]
                changed += self._upsert(project, annotation_id, r["task_id"], r["task_data"],
                                        r["result"], "deleted", "ANNOTATIONS_DELETED", r["completed_by"])
        return changed

    def _upsert(self, project: str, annotation_id: int, task_id: int, task_data: str, result: str,
                state: str, action: str, completed_by: Any) -> bool:
        now = _now()
        with self._write() as db:
            row = db.execute("SELECT task_data, result, state, version FROM annotations "
                             "WHERE annotation_id = ?", (annotation_id,)).fetchone()
            if row and (row["task_data"], row["result"], row["state"]) == (task_data, result, state):
                return False
            version = row["version"] + 1 if row else 1
            db.execute(
                "INSERT INTO annotations (annotation_id, project, task_id, task_data, result, state, "
                "version, completed_by, received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (annotation_id) DO UPDATE SET project = excluded.project, "
                "task_id = excluded.task_id, task_data = excluded.task_data, result = excluded.result, "
                "state = excluded.state, version = excluded.version, "
                "completed_by = excluded.completed_by, updated_at = excluded.updated_at",
                (annotation_id, project, task_id, task_data, result, state, version,
                 completed_by if isinstance(completed_by, int) else None, now, now),
            )
            db.execute("INSERT INTO annotation_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (annotation_id, version, action, state, task_data, result, now))
            db.execute(
                "INSERT INTO projects (project, changes_since_training, updated_at) VALUES (?, 1, ?) "
                "ON CONFLICT (project) DO UPDATE SET "
                "changes_since_training = changes_since_training + 1, updated_at = excluded.updated_at",
                (project, now),
            )
        return True

    def annotation_counts(self, project: str | None = None) -> dict[str, int]:
        """Annotations per state, for one project or all."""
        where, params = ("WHERE project = ?", (project,)) if project is not None else ("", ())
        rows = self._read(f"SELECT state, COUNT(*) FROM annotations {where} GROUP BY state", params)
        return {r[0]: r[1] for r in rows}

    def live_annotation_ids(self, project: str) -> set[int]:
        """The project's annotations not marked deleted."""
        return {r[0] for r in self._read("SELECT annotation_id FROM annotations WHERE project = ? "
                                         "AND state != 'deleted'", (project,))}

    def revision(self, project: str) -> str:
        """Changes whenever the project's annotations do: a cache key for what derives from them."""
        row = self._read("SELECT COUNT(*), MAX(updated_at), SUM(version) FROM annotations WHERE project = ?",
                         (project,))[0]
        return f"{row[0]}:{row[1]}:{row[2]}"

    def count_training_examples(self, project: str) -> int:
        """``len(training_examples(project))`` without reading them: tasks with a submitted annotation."""
        return self._read("SELECT COUNT(DISTINCT task_id) FROM annotations WHERE project = ? AND state = 'submitted'",
                          (project,))[0][0]

    def training_examples(self, project: str) -> list[Example]:
        """The latest submitted annotation of each task: what the project's models learn from."""
        rows = self._read(
            "SELECT annotation_id, task_id, task_data, result FROM annotations "
            "WHERE project = ? AND state = 'submitted' ORDER BY task_id, updated_at DESC, "
            "annotation_id DESC", (project,))
        seen: set[int] = set()
        examples = []
        for r in rows:
            if r["task_id"] not in seen:
                seen.add(r["task_id"])
                examples.append(Example(r["annotation_id"], r["task_id"], json.loads(r["task_data"]),
                                        json.loads(r["result"])))
        return examples

    # --- trainings and the model registry -------------------------------------------------

    def begin_training(self, project: str) -> int | None:
        """Claim the project's training slot; None when a training is already running.

        Resets the change counter: annotations arriving during training count for the next one.
        """
        with self._write() as db:
            if db.execute("SELECT 1 FROM trainings WHERE project = ? AND status = 'running'",
                          (project,)).fetchone():
                return None
            db.execute("UPDATE projects SET changes_since_training = 0 WHERE project = ?", (project,))
            return db.execute("INSERT INTO trainings (project, status, started_at) VALUES (?, 'running', ?)",
                              (project, _now())).lastrowid

    def fail_training(self, training_id: int, error: str) -> None:
        with self._write() as db:
            db.execute("UPDATE trainings SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                       (_now(), error, training_id))

    def abandon_running_trainings(self) -> int:
        """At start-up: trainings left 'running' by a killed process will never finish."""
        with self._write() as db:
            return db.execute("UPDATE trainings SET status = 'failed', finished_at = ?, "
                              "error = 'interrupted' WHERE status = 'running'", (_now(),)).rowcount

    def finish_training(self, training_id: int, model: ModelRecord) -> None:
        """Register ``model`` and make it the project's serving version, atomically."""
        with self._write() as db:
            self._serve(db, model)
            db.execute("UPDATE trainings SET status = 'succeeded', finished_at = ?, version = ? WHERE id = ?",
                       (_now(), model.version, training_id))

    def serve_model(self, model: ModelRecord) -> None:
        """Register a version a training made after its first (``finish_training``) and make it serve."""
        with self._write() as db:
            self._serve(db, model)

    @staticmethod
    def _serve(db: sqlite3.Connection, model: ModelRecord) -> None:
        db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (model.version, model.project, model.kind, str(model.path), model.n_examples,
                    _dump(model.info), model.created_at))
        db.execute("INSERT INTO serving (project, version, since) VALUES (?, ?, ?) "
                   "ON CONFLICT (project) DO UPDATE SET version = excluded.version, since = excluded.since",
                   (model.project, model.version, _now()))

    def set_selection(self, version: str, selection: dict[str, Any]) -> None:
        """Record the strategy selected for a registered model version (``info["selection"]``):
        the version serves with it from the next /predict on."""
        with self._write() as db:
            [info] = db.execute("SELECT info FROM models WHERE version = ?", (version,)).fetchone()
            db.execute("UPDATE models SET info = ? WHERE version = ?",
                       (_dump({**json.loads(info), "selection": selection}), version))

    def training_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._read("SELECT status, COUNT(*) FROM trainings GROUP BY status")}

    def serving_model(self, project: str) -> ModelRecord | None:
        rows = self._read("SELECT m.* FROM serving s JOIN models m ON m.version = s.version "
                          "WHERE s.project = ?", (project,))
        return _model(rows[0]) if rows else None

    def models(self, project: str | None = None) -> list[ModelRecord]:
        where, params = ("WHERE project = ?", (project,)) if project is not None else ("", ())
        return [_model(r) for r in self._read(f"SELECT * FROM models {where} ORDER BY created_at", params)]


def _model(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(row["version"], row["project"], row["kind"], Path(row["path"]),
                       row["n_examples"], json.loads(row["info"]), row["created_at"])

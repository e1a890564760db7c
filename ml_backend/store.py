"""The annotation store and model registry: one SQLite file in WAL mode.

Every annotation Label Studio sends is written before the webhook is answered: the
``annotations`` table holds the latest state of each annotation (submitted or cancelled),
``annotation_versions`` the states it went through, superseded ones for ``keep_history_days``.
Writing the same event twice changes nothing (idempotent on the annotation id), and an event
older than the state held (Label Studio's ``updated_at``) changes nothing either, so
re-deliveries, events out of order and re-syncs are safe. An annotation id belongs to the
project that first sent it: an event naming it under another project is refused
(``ProjectMismatch``). A project's training set is derived from it: the latest submitted
annotation per task.

The ``tasks`` table holds the data of unannotated tasks Label Studio sent to /predict or
re-sync listed: the project's unannotated text, which a student strategy learns from (issue
23). It is bounded (``keep_tasks`` per project, the newest by Label Studio's task id) and is
patient text like the rest: a task id belongs to one project, and deleting the task deletes it.

Deleting is purging (``purge``, ``purge_project``): the annotation's text, result and every
version, and a deleted task's stored data, are removed, and the file is rewritten so that the
bytes are gone (``secure_delete``, then the WAL checkpointed and truncated). What stays of a
deleted annotation or task is a tombstone (its id, project and times, no text) that makes a
late re-delivery, or a late /predict of the task, a no-op.

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
    >>> store.purge("7", annotations=[1]).annotations
    1
    >>> store.record_annotation("7", {"id": 1, "result": []}, {"id": 3, "data": {"text": "x"}})
    False
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, cast

from clinie.clock import utc_now
from clinie.labelstudio import parse_label_config
from clinie.sqlite_wal import open_wal, until_unlocked
from ml_backend import postgres
from ml_backend.model_store import ModelStore

#: A connection of either engine: the store's SQL is written for both (``ml_backend.postgres``).
Connection = sqlite3.Connection | postgres.Connection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
);
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
    state TEXT NOT NULL CHECK (state IN ('submitted', 'cancelled')),
    version INTEGER NOT NULL,
    completed_by INTEGER,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    source_updated_at TEXT
);
CREATE INDEX IF NOT EXISTS annotations_project ON annotations (project, state);
CREATE INDEX IF NOT EXISTS annotations_task ON annotations (task_id);
CREATE TABLE IF NOT EXISTS tombstones (
    kind TEXT NOT NULL CHECK (kind IN ('annotation', 'task')),
    id INTEGER NOT NULL,
    project TEXT NOT NULL,
    updated_at TEXT,
    deleted_at TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    task_data TEXT NOT NULL,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_project ON tasks (project, task_id);
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
CREATE TABLE IF NOT EXISTS training_progress (
    project TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    done INTEGER NOT NULL,
    total INTEGER NOT NULL,
    started DOUBLE PRECISION NOT NULL
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
    location: str  # the version's directory or URL (``ml_backend.model_store``)
    n_examples: int
    info: dict[str, Any]
    created_at: str


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _source_time(value: Any) -> str | None:
    """Label Studio's ``updated_at`` (an ISO string from a webhook, a datetime from the SDK) as a
    UTC string that sorts in time order; None when absent or unreadable: then the event is not
    ordered against the state held, as before Label Studio sent times. A time whose UTC falls
    outside years 1–9999 (``0001-01-01T00:00:00+01:00``) cannot be ordered either: None too."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return cast(datetime, value).astimezone(UTC).isoformat(timespec="microseconds")
    except OverflowError:
        return None


class Outcome(NamedTuple):
    """What a step of ``AnnotationStore.write_together`` returned, or the error it raised."""

    result: Any
    error: Exception | None = None


class ProjectMismatch(ValueError):
    """An event names an annotation or task that the store holds under another project: ids
    are Label Studio's, global to one instance, so this is a second instance or a forged event."""


@dataclass(frozen=True)
class Purged:
    """What a purge removed: annotations (with every version), the ids it refused to touch
    because another project holds them, and the unannotated tasks whose data was stored; and
    whether what it removed stays in the write-ahead log (a reader kept the checkpoint busy past
    the busy timeout: it goes at the next checkpoint)."""

    annotations: int = 0
    refused: tuple[int, ...] = ()
    tasks: int = 0
    left_in_wal: bool = False

    @property
    def removed(self) -> bool:
        """Note text was removed: the files must be rewritten, Label Studio's event changed something."""
        return bool(self.annotations or self.tasks)


class AnnotationStore:
    """Thread-safe: each thread gets its own connection; writes are immediate transactions.

    ``keep_history_days``: how long a superseded annotation version is kept (0: not at all;
    None: for ever). Pruned on each write of the annotation and at each training start.
    ``keep_tasks``: the most unannotated tasks whose data is kept per project (``record_tasks``),
    the newest by task id (0: none are stored; None: no bound); a lower bound than the file
    holds applies when the store is opened.
    """

    def __init__(self, location: str | Path, keep_history_days: float | None = None,
                 keep_tasks: int | None = None) -> None:
        self._path = str(location)  # a SQLite file (created private, with its directory, by open_wal) or a URL
        self._engine: _SQLite | _PostgreSQL = _PostgreSQL(self._path) if postgres.is_url(self._path) \
            else _SQLite(self._path)
        self.keep_history_days = keep_history_days
        self.keep_tasks = keep_tasks
        self._local = threading.local()
        self._shared: Any = None
        if self._path == ":memory:":  # one connection, or every thread would see its own empty DB
            self._shared = self._engine.connect(check_same_thread=False)
            self._lock = threading.Lock()
        self._engine.create(self._db)
        until_unlocked(self._migrate)
        if keep_tasks is not None:
            with self._write() as db:
                bounded = self._bound_tasks(db, keep_tasks)
            if bounded:
                self._shrink()

    @property
    def location(self) -> str:
        """The SQLite file or the PostgreSQL URL the store is in."""
        return self._path

    def _migrate(self) -> None:
        """Bring a store written by an earlier clinie forward to this schema: the migrations
        (``MIGRATIONS``) its ``schema_version`` has not seen, in order, each in one transaction
        with the version it reaches, so that processes starting together apply each once. A store
        newer than this clinie is refused: its schema may mean what this code does not know."""
        for version, migration in enumerate(MIGRATIONS, start=1):
            with self._write() as db:
                current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                if current > len(MIGRATIONS):
                    raise RuntimeError(f"the store's schema is version {current}, newer than this clinie's "
                                       f"({len(MIGRATIONS)}): upgrade clinie")
                if current >= version:
                    continue
                shrink = migration(self, db)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (version, utc_now("milliseconds")))
            if shrink:
                self._shrink()

    def _db(self) -> Any:
        if self._shared is not None:
            return self._shared
        if getattr(self._local, "db", None) is None:
            self._local.db = self._engine.connect()
        return self._local.db

    @contextmanager
    def _write(self) -> Iterator[Any]:
        if self._shared is not None:
            with self._lock:
                yield from self._transaction(self._shared)
        else:
            yield from self._transaction(self._db())

    def _transaction(self, db: Any) -> Iterator[Any]:
        self._engine.begin(db)
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back on some errors (a full disk): a second ROLLBACK
            # would raise "no transaction is active" in place of the error that matters
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def write_together(self, steps: Sequence[Callable[[Connection], Any]]) -> list[Outcome]:
        """Run ``steps`` (each given the connection, in a transaction) in one transaction: one
        commit, one fsync, for all. Each step runs in a savepoint: one that raises is undone
        alone, its error its outcome, and the others are kept. When the transaction itself
        fails (the commit, or an error after which SQLite rolled it back), each step runs again
        in a transaction of its own. An outcome is returned only once its step is committed.
        """
        try:
            with self._write() as db:
                outcomes = [self._savepoint(db, step) for step in steps]
        except Exception as error:
            if len(steps) == 1:
                return [Outcome(None, error)]
            outcomes = [self._alone(step) for step in steps]
        assert len(outcomes) == len(steps), "one outcome per step"
        return outcomes

    def _alone(self, step: Callable[[Connection], Any]) -> Outcome:
        """``step`` in a transaction of its own: its result only once that transaction has
        committed (a commit that fails, on a full disk say, is the step's error, never a success)."""
        try:
            with self._write() as db:
                result = step(db)
        except Exception as error:
            return Outcome(None, error)
        return Outcome(result)

    @staticmethod
    def _savepoint(db: Connection, step: Callable[[Connection], Any]) -> Outcome:
        db.execute("SAVEPOINT step")
        try:
            result = step(db)
        except Exception as error:
            if not db.in_transaction:  # SQLite rolled the whole transaction back: no step stands
                raise
            db.execute("ROLLBACK TO step")
            db.execute("RELEASE step")
            return Outcome(None, error)
        db.execute("RELEASE step")
        return Outcome(result)

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        if self._shared is not None:
            with self._lock:
                return cast(list[sqlite3.Row], self._shared.execute(sql, tuple(params)).fetchall())
        return cast(list[sqlite3.Row], self._db().execute(sql, tuple(params)).fetchall())

    def _shrink(self) -> bool:
        """After a purge: rewrite what still holds the purged rows as they were, so that what was
        deleted is in no file; False when that could not be done (``_SQLite.shrink``)."""
        if self._shared is not None:
            with self._lock:
                return self._engine.shrink(self._shared)
        return self._engine.shrink(self._db())

    # --- projects -------------------------------------------------------------------------

    def set_label_config(self, project: str, label_config: str) -> None:
        """Store the project's labeling config; one clinie cannot use (``LabelConfigError``,
        as /setup refuses it) is not stored, so the config held stays one that predicts."""
        parse_label_config(label_config)
        with self._write() as db:
            self.set_label_config_in(db, project, label_config)

    @staticmethod
    def set_label_config_in(db: Connection, project: str, label_config: str) -> None:
        """``set_label_config`` as a step of a transaction (``write_together``), the config
        already parsed by the caller."""
        db.execute(
            "INSERT INTO projects (project, label_config, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (project) DO UPDATE SET label_config = excluded.label_config, "
            "updated_at = excluded.updated_at WHERE projects.label_config IS DISTINCT FROM excluded.label_config",
            (project, label_config, utc_now("milliseconds")),
        )

    def projects(self) -> list[str]:
        return [r[0] for r in self._read("SELECT project FROM projects ORDER BY project")]

    def label_config(self, project: str) -> str | None:
        rows = self._read("SELECT label_config FROM projects WHERE project = ?", (project,))
        return rows[0]["label_config"] if rows else None

    def changes_since_training(self, project: str) -> int:
        rows = self._read("SELECT changes_since_training FROM projects WHERE project = ?", (project,))
        return rows[0][0] if rows else 0

    @staticmethod
    def changes_since_training_in(db: Connection, project: str) -> int:
        """``changes_since_training`` as a step of a transaction (``write_together``)."""
        row = db.execute("SELECT changes_since_training FROM projects WHERE project = ?", (project,)).fetchone()
        return row[0] if row else 0

    # --- annotations ----------------------------------------------------------------------

    def record_annotation(
        self, project: str, annotation: dict[str, Any], task: dict[str, Any], action: str = "ANNOTATION_CREATED"
    ) -> bool:
        """Store the latest state of an annotation; True when it is new or changed.

        Of the task, its id and data are kept: what else Label Studio sends with it (counters,
        timestamps) differs between a webhook and a re-sync of the same annotation. Nothing
        changes for an annotation or task deleted before, or for an event older than the state
        held; ``ProjectMismatch`` when another project holds the annotation.
        """
        with self._write() as db:
            return self.record_annotation_in(db, project, annotation, task, action)

    def record_annotation_in(self, db: Connection, project: str, annotation: dict[str, Any],
                             task: dict[str, Any], action: str = "ANNOTATION_CREATED") -> bool:
        """``record_annotation`` as a step of a transaction (``write_together``). A
        ``ProjectMismatch`` is raised before anything is written."""
        state = "cancelled" if annotation.get("was_cancelled") else "submitted"
        task_data = _dump({"id": task["id"], "data": task.get("data")})
        return self._upsert(db, project, int(annotation["id"]), int(task["id"]), task_data,
                            _dump(annotation.get("result") or []), state, action,
                            annotation.get("completed_by"), _source_time(annotation.get("updated_at")))

    def _upsert(self, db: Connection, project: str, annotation_id: int, task_id: int, task_data: str,
                result: str, state: str, action: str, completed_by: Any, source_updated_at: str | None) -> bool:
        now = utc_now("milliseconds")
        # who completed it is informative only: a user id SQLite's 64-bit INTEGER cannot hold (2**70) is not kept
        if not (isinstance(completed_by, int) and -2**63 <= completed_by < 2**63):
            completed_by = None
        if self._tombstoned(db, project, annotation_id, task_id):
            return False
        if (owner := _owner(db, "task", task_id)) is not None:  # its data, or an annotation of it, is held
            _same_project(owner, project, f"task {task_id}")
        row = db.execute("SELECT project, task_data, result, state, version, source_updated_at "
                         "FROM annotations WHERE annotation_id = ?", (annotation_id,)).fetchone()
        if row:
            _same_project(row["project"], project, f"annotation {annotation_id}")
            if source_updated_at and row["source_updated_at"] and source_updated_at < row["source_updated_at"]:
                return False  # a late event: the state held is newer
            if (row["task_data"], row["result"], row["state"]) == (task_data, result, state):
                if source_updated_at:  # the same state, newer: what a later stale event is older than
                    db.execute("UPDATE annotations SET source_updated_at = ? WHERE annotation_id = ?",
                               (source_updated_at, annotation_id))
                return False
        version = row["version"] + 1 if row else 1
        db.execute(
            "INSERT INTO annotations (annotation_id, project, task_id, task_data, result, state, "
            "version, completed_by, received_at, updated_at, source_updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (annotation_id) DO UPDATE SET "
            "task_id = excluded.task_id, task_data = excluded.task_data, result = excluded.result, "
            "state = excluded.state, version = excluded.version, completed_by = excluded.completed_by, "
            "updated_at = excluded.updated_at, source_updated_at = excluded.source_updated_at",
            (annotation_id, project, task_id, task_data, result, state, version,
             completed_by, now, now, source_updated_at),
        )
        db.execute("INSERT INTO annotation_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (annotation_id, version, action, state, task_data, result, now))
        self._prune_history(db, annotation_id)
        self._count_changes(db, project, 1, now)
        return True

    @staticmethod
    def _tombstoned(db: Connection, project: str, annotation_id: int, task_id: int) -> bool:
        """The annotation or its task was deleted (``ProjectMismatch`` if under another project)."""
        rows = db.execute("SELECT project FROM tombstones WHERE (kind = 'annotation' AND id = ?) "
                          "OR (kind = 'task' AND id = ?)", (annotation_id, task_id)).fetchall()
        for r in rows:
            _same_project(r["project"], project, f"annotation {annotation_id} (task {task_id})")
        return bool(rows)

    @staticmethod
    def _count_changes(db: Connection, project: str, n: int, now: str) -> None:
        db.execute(
            "INSERT INTO projects (project, changes_since_training, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (project) DO UPDATE SET "
            "changes_since_training = projects.changes_since_training + excluded.changes_since_training, "
            "updated_at = excluded.updated_at",
            (project, n, now),
        )

    def _prune_history(self, db: Connection, annotation_id: int | None = None) -> int:
        """Remove the versions superseded more than ``keep_history_days`` ago (of one annotation,
        or of all); the current version of each annotation is never superseded."""
        if self.keep_history_days is None:
            return 0
        cutoff = (datetime.now(UTC) - timedelta(days=self.keep_history_days)).isoformat(
            timespec="milliseconds")  # as ``utc_now("milliseconds")`` stamps rows
        return db.execute(
            "DELETE FROM annotation_versions AS v WHERE (CAST(?1 AS BIGINT) IS NULL OR v.annotation_id = ?1) "
            "AND EXISTS ("
            "SELECT 1 FROM annotation_versions AS later WHERE later.annotation_id = v.annotation_id "
            "AND later.version > v.version AND later.received_at <= ?2)", (annotation_id, cutoff)).rowcount

    # --- the data of unannotated tasks ----------------------------------------------------

    @property
    def keeps_tasks(self) -> bool:
        """``record_tasks`` stores anything (``keep_tasks`` is not 0)."""
        return self.keep_tasks != 0

    def record_tasks(self, project: str, tasks: Sequence[tuple[int, Any]]) -> int:
        """Store the data of the project's unannotated tasks, ``(task id, data)`` each; how many
        rows were new or changed. Within ``keep_tasks``: beyond it, the tasks with the lowest ids go."""
        with self._write() as db:
            return self.record_tasks_in(db, project, tasks)

    def record_tasks_in(self, db: Connection, project: str, tasks: Sequence[tuple[int, Any]]) -> int:
        """``record_tasks`` as a step of a transaction (``write_together``): one statement for
        the batch, since /predict waits on it. A task deleted before (tombstoned) is not stored
        again, nor one another project holds; nor one an annotation held is of: its data is
        there already. An unchanged task is not rewritten."""
        if not self.keeps_tasks or not tasks:
            return 0
        now = utc_now("milliseconds")
        stored = db.executemany(
            "INSERT INTO tasks (task_id, project, task_data, received_at, updated_at) "
            "SELECT ?1, ?2, ?3, ?4, ?4 WHERE NOT EXISTS (SELECT 1 FROM annotations WHERE task_id = ?1) "
            "AND NOT EXISTS (SELECT 1 FROM tombstones WHERE kind = 'task' AND id = ?1) "
            "ON CONFLICT (task_id) DO UPDATE SET task_data = excluded.task_data, updated_at = excluded.updated_at "
            "WHERE tasks.project = excluded.project AND tasks.task_data IS DISTINCT FROM excluded.task_data",
            [(task_id, project, _dump({"id": task_id, "data": data}), now) for task_id, data in tasks]).rowcount
        if self.keep_tasks is not None:
            self._bound_tasks(db, self.keep_tasks, project)
        return stored

    @staticmethod
    def _bound_tasks(db: Connection, keep: int, project: str | None = None) -> int:
        """Keep ``project``'s (or each project's) newest ``keep`` unannotated tasks by task id:
        Label Studio numbers tasks as they are imported, and an order that does not move keeps a
        re-sync of a project larger than the bound from rewriting it each time. The data of a
        task annotated since it was stored goes too: its annotations hold it."""
        annotated = db.execute("DELETE FROM tasks WHERE (CAST(?1 AS TEXT) IS NULL OR project = ?1) AND EXISTS "
                               "(SELECT 1 FROM annotations AS a WHERE a.task_id = tasks.task_id)", (project,)).rowcount
        return annotated + db.execute(
            "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM (SELECT task_id, ROW_NUMBER() OVER "
            "(PARTITION BY project ORDER BY task_id DESC) AS n FROM tasks "
            "WHERE CAST(?1 AS TEXT) IS NULL OR project = ?1) "
            "AS ranked WHERE n > ?2)", (project, keep)).rowcount

    def unannotated_tasks(self, project: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The stored tasks of the project that no annotation held is of (``{"id", "data"}``
        each): the newest ``limit`` by task id (None: all), in task id order."""
        rows = self._read("SELECT task_data FROM tasks AS t WHERE project = ? AND NOT EXISTS "
                          "(SELECT 1 FROM annotations AS a WHERE a.task_id = t.task_id) ORDER BY task_id DESC"
                          + ("" if limit is None else " LIMIT ?"), (project,) if limit is None else (project, limit))
        return [json.loads(r["task_data"]) for r in reversed(rows)]

    def unannotated_counts(self) -> dict[str, int]:
        """``len(unannotated_tasks(project))`` of each project that has some."""
        return {r[0]: r[1] for r in self._read(
            "SELECT project, COUNT(*) FROM tasks AS t WHERE NOT EXISTS "
            "(SELECT 1 FROM annotations AS a WHERE a.task_id = t.task_id) GROUP BY project ORDER BY project")}

    # --- deletion -------------------------------------------------------------------------

    def purge(self, project: str, *, annotations: Iterable[int] = (), tasks: Iterable[int] = ()) -> Purged:
        """Delete annotations, and tasks with all their annotations, from the project: their
        text, results and every version, from the files too. Each leaves a tombstone, so that
        a late event about it changes nothing. Ids another project holds are refused."""
        with self._write() as db:
            purged = self._purge_rows(db, project, annotations, tasks)
        return self._shrunk(purged)

    def _shrunk(self, purged: Purged) -> Purged:
        """``purged`` once its text is out of the files too (``left_in_wal`` if it could not be)."""
        return replace(purged, left_in_wal=not self._shrink()) if purged.removed else purged

    def purge_project(self, project: str, models: ModelStore) -> Purged:
        """Delete everything of the project: its annotations and tasks (as ``purge``), label
        config, trainings, model versions (rows and files) and serving row."""
        with self._write() as db:
            tasks = [r[0] for r in db.execute("SELECT task_id FROM annotations WHERE project = ?1 "
                                              "UNION SELECT task_id FROM tasks WHERE project = ?1", (project,))]
            # its annotations by id as well: one on a task another project holds (stored before
            # ownership was checked on arrival) goes too, though that task is refused
            annotations = [r[0] for r in db.execute("SELECT annotation_id FROM annotations WHERE project = ?",
                                                    (project,))]
            purged = self._purge_rows(db, project, annotations, tasks)
            locations = [r[0] for r in db.execute("SELECT path FROM models WHERE project = ?", (project,))]
            for table in ("serving", "models", "trainings", "training_progress", "projects"):
                db.execute(f"DELETE FROM {table} WHERE project = ?", (project,))
        purged = replace(purged, left_in_wal=not self._shrink())
        for location in locations:  # those registered elsewhere too (written by an earlier clinie)
            models.remove(location)
        models.remove_project(project)
        return purged

    def _purge_rows(self, db: Connection, project: str, annotation_ids: Iterable[int],
                    task_ids: Iterable[int]) -> Purged:
        """The one deletion: tombstones first, then the rows (``secure_delete`` zeroes them)."""
        now = utc_now("milliseconds")
        refused: list[int] = []
        targets: set[int] = set()
        tasks_removed = 0
        for task_id in sorted(set(task_ids)):
            if _owner(db, "task", task_id) not in (None, project):
                refused.append(task_id)
                continue
            db.execute("INSERT INTO tombstones VALUES ('task', ?, ?, NULL, ?) ON CONFLICT DO NOTHING",
                       (task_id, project, now))
            tasks_removed += db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,)).rowcount
            targets.update(r[0] for r in db.execute("SELECT annotation_id FROM annotations "
                                                    "WHERE project = ? AND task_id = ?", (project, task_id)))
        for annotation_id in set(annotation_ids):
            if _owner(db, "annotation", annotation_id) not in (None, project):
                refused.append(annotation_id)
            else:
                targets.add(annotation_id)
        removed = 0
        for annotation_id in sorted(targets):
            db.execute("INSERT INTO tombstones VALUES ('annotation', ?, ?, "
                       "(SELECT source_updated_at FROM annotations WHERE annotation_id = ?), ?) ON CONFLICT DO NOTHING",
                       (annotation_id, project, annotation_id, now))
            # the task's text as /predict stored it goes with the annotation (docs/deploying.md)
            tasks_removed += db.execute("DELETE FROM tasks WHERE project = ? AND task_id = "
                                        "(SELECT task_id FROM annotations WHERE annotation_id = ?)",
                                        (project, annotation_id)).rowcount
            db.execute("DELETE FROM annotation_versions WHERE annotation_id = ?", (annotation_id,))
            removed += db.execute("DELETE FROM annotations WHERE annotation_id = ?", (annotation_id,)).rowcount
        if removed:
            self._count_changes(db, project, removed, now)
        return Purged(removed, tuple(refused), tasks_removed)

    # --- reading annotations --------------------------------------------------------------

    def annotation_counts(self, project: str | None = None) -> dict[str, int]:
        """Annotations per state (``deleted``: the tombstones), for one project or all."""
        rows = self._read("SELECT state, COUNT(*) FROM annotations WHERE CAST(?1 AS TEXT) IS NULL OR project = ?1 "
                          "GROUP BY state", (project,))
        [deleted] = self._read("SELECT COUNT(*) FROM tombstones WHERE kind = 'annotation' "
                               "AND (CAST(?1 AS TEXT) IS NULL OR project = ?1)", (project,))[0]
        return {r[0]: r[1] for r in rows} | ({"deleted": deleted} if deleted else {})

    def annotation_ids(self, project: str) -> set[int]:
        """The project's annotations held (deleted ones are not)."""
        return {r[0] for r in self._read("SELECT annotation_id FROM annotations WHERE project = ?", (project,))}

    def task_ids(self, project: str) -> set[int]:
        """The project's tasks held: those its annotations are of, and those whose data is stored."""
        return {r[0] for r in self._read("SELECT task_id FROM annotations WHERE project = ?1 "
                                         "UNION SELECT task_id FROM tasks WHERE project = ?1", (project,))}

    def task_projects(self, task_ids: Iterable[int]) -> dict[str, set[int]]:
        """The projects holding these tasks (their annotations or their data), and which of the
        tasks each holds."""
        held: dict[str, set[int]] = {}
        for task_id in set(task_ids):
            for r in self._read("SELECT project FROM annotations WHERE task_id = ?1 "
                                "UNION SELECT project FROM tasks WHERE task_id = ?1", (task_id,)):
                held.setdefault(r[0], set()).add(task_id)
        return held

    def revision(self, project: str) -> str:
        """Changes whenever the project's annotations do: a cache key for what derives from them."""
        row = self._read("SELECT COUNT(*), MAX(updated_at), SUM(version) FROM annotations WHERE project = ?",
                         (project,))[0]
        return f"{row[0]}:{row[1]}:{row[2]}"

    def count_training_examples(self, project: str) -> int:
        """``len(training_examples(project))`` without reading them: tasks with a submitted annotation."""
        return cast(int, self._read("SELECT COUNT(DISTINCT task_id) FROM annotations "
                                    "WHERE project = ? AND state = 'submitted'", (project,))[0][0])

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
        Prunes the history of every project: versions no new event touches age out here.
        """
        with self._write() as db:
            if db.execute("SELECT 1 FROM trainings WHERE project = ? AND status = 'running'",
                          (project,)).fetchone():
                return None
            db.execute("UPDATE projects SET changes_since_training = 0 WHERE project = ?", (project,))
            training_id: int
            [training_id] = db.execute("INSERT INTO trainings (project, status, started_at) VALUES (?, 'running', ?) "
                                       "RETURNING id", (project, utc_now("milliseconds"))).fetchone()
            pruned = self._prune_history(db)
        if pruned:
            self._shrink()
        return training_id

    def fail_training(self, training_id: int, error: str) -> None:
        with self._write() as db:
            db.execute("UPDATE trainings SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                       (utc_now("milliseconds"), error, training_id))

    def abandon_running_trainings(self, project: str | None = None) -> int:
        """Trainings left 'running' by a killed process (of ``project``, or all) will never finish."""
        with self._write() as db:
            return cast(int, db.execute("UPDATE trainings SET status = 'failed', finished_at = ?, "
                                        "error = 'interrupted' "
                                        "WHERE status = 'running' AND (CAST(? AS TEXT) IS NULL OR project = ?)",
                                        (utc_now("milliseconds"), project, project)).rowcount)

    def finish_training(self, training_id: int, model: ModelRecord, *, serve: bool = True) -> None:
        """Register ``model`` and (``serve``) make it the project's serving version, atomically;
        else it waits for the selection to compare it with what serves (``set_selection``).

        ``LookupError`` when the training is gone: its project was purged while it ran, and
        a model learned from the purged notes must not serve.
        """
        with self._write() as db:
            if not db.execute("UPDATE trainings SET status = 'succeeded', finished_at = ?, version = ? WHERE id = ?",
                              (utc_now("milliseconds"), model.version, training_id)).rowcount:
                raise LookupError(f"training {training_id} no longer exists: project {model.project} was purged")
            self._register(db, model)
            if serve:
                self._make_serving(db, model.project, model.version)

    def serve_model(self, model: ModelRecord) -> None:
        """Register a version a training made after its first (``info["first_model"]``, registered
        by ``finish_training``) and make it serve. ``LookupError`` when that first version is gone:
        the project was purged while the training ran."""
        with self._write() as db:
            self._register_derived(db, model)
            self._make_serving(db, model.project, model.version)

    def register_model(self, model: ModelRecord) -> None:
        """``serve_model`` without serving it: it waits, as its first version does, for the selection."""
        with self._write() as db:
            self._register_derived(db, model)

    def _register_derived(self, db: Connection, model: ModelRecord) -> None:
        if not db.execute("SELECT 1 FROM models WHERE version = ?", (model.info.get("first_model"),)).fetchone():
            raise LookupError(f"{model.info.get('first_model')} is no longer registered: project "
                              f"{model.project} was purged")
        self._register(db, model)

    @staticmethod
    def _register(db: Connection, model: ModelRecord) -> None:
        db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (model.version, model.project, model.kind, model.location, model.n_examples,
                    _dump(model.info), model.created_at))

    @staticmethod
    def _make_serving(db: Connection, project: str, version: str) -> None:
        db.execute("INSERT INTO serving (project, version, since) VALUES (?, ?, ?) "
                   "ON CONFLICT (project) DO UPDATE SET version = excluded.version, since = excluded.since",
                   (project, version, utc_now("milliseconds")))

    def set_selection(self, version: str, selection: dict[str, Any], *, serve: bool = False) -> None:
        """Record the strategy selected for a registered model version (``info["selection"]``),
        and (``serve``) make it the serving version in the same transaction: it serves with it
        from the next /predict on. ``LookupError`` when the version is gone (the project purged)."""
        with self._write() as db:
            row = db.execute("SELECT project, info FROM models WHERE version = ?", (version,)).fetchone()
            if row is None:
                raise LookupError(f"{version} is no longer registered: its project was purged")
            db.execute("UPDATE models SET info = ? WHERE version = ?",
                       (_dump({**json.loads(row["info"]), "selection": selection}), version))
            if serve:
                self._make_serving(db, row["project"], version)

    def set_progress(self, project: str, stage: str, done: int, total: int, started: float) -> None:
        """Where a project's training stands (its stage, steps done of all, its start as a Unix
        time), for the /metrics of every process on the store: the trainings of ``clinie worker``."""
        with self._write() as db:
            db.execute("INSERT INTO training_progress VALUES (?, ?, ?, ?, ?) ON CONFLICT (project) DO UPDATE SET "
                       "stage = excluded.stage, done = excluded.done, total = excluded.total, "
                       "started = excluded.started", (project, stage, done, total, started))

    def clear_progress(self, project: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM training_progress WHERE project = ?", (project,))

    def progress(self) -> list[dict[str, Any]]:
        """``set_progress`` of the trainings in flight, by project."""
        return [{"project": r[0], "stage": r[1], "done": r[2], "total": r[3], "started": r[4]}
                for r in self._read("SELECT project, stage, done, total, started FROM training_progress "
                                    "ORDER BY project")]

    def training_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._read("SELECT status, COUNT(*) FROM trainings GROUP BY status")}

    def serving_model(self, project: str) -> ModelRecord | None:
        rows = self._read("SELECT m.* FROM serving s JOIN models m ON m.version = s.version "
                          "WHERE s.project = ?", (project,))
        return _model(rows[0]) if rows else None

    def models(self, project: str | None = None) -> list[ModelRecord]:
        where, params = ("WHERE project = ?", (project,)) if project is not None else ("", ())
        return [_model(r) for r in self._read(f"SELECT * FROM models {where} ORDER BY created_at", params)]

    def prune_models(self, project: str, keep: int) -> list[ModelRecord]:
        """Unregister the project's model versions but the ``keep`` registered last and the
        serving one; returns them (their directories are the caller's to delete)."""
        with self._write() as db:
            rows = db.execute("SELECT * FROM models WHERE project = ? "
                              "AND version NOT IN (SELECT version FROM serving WHERE project = ?) "
                              "AND version NOT IN (SELECT version FROM models WHERE project = ? "
                              "ORDER BY created_at DESC, version DESC LIMIT ?)",
                              (project, project, project, keep)).fetchall()
            db.executemany("DELETE FROM models WHERE version = ?", [(r["version"],) for r in rows])
        return [_model(r) for r in rows]


def _ordering_column(store: AnnotationStore, db: Connection) -> bool:
    """1: the column that orders events by Label Studio's ``updated_at``."""
    store._engine.add_column(db, "annotations", "source_updated_at TEXT")
    return False


def _purge_marked_deletions(store: AnnotationStore, db: Connection) -> bool:
    """2: annotations an earlier clinie only marked deleted, purged to tombstones (their text goes
    from the files too: True, shrink)."""
    marked = db.execute("SELECT project, annotation_id FROM annotations WHERE state = 'deleted'").fetchall()
    for r in marked:
        store._purge_rows(db, r["project"], [r["annotation_id"]], ())
    return bool(marked)


#: The schema's migrations, in order: ``schema_version`` holds how many a store has had. Plain
#: functions of one connection, in the store's transactions: the same on SQLite and PostgreSQL,
#: with nothing (Alembic, SQLAlchemy) between the store's SQL and the two engines.
MIGRATIONS: list[Callable[[AnnotationStore, Connection], bool]] = [_ordering_column, _purge_marked_deletions]


def _owner(db: Any, kind: str, id_: int) -> str | None:
    """The project holding an annotation or task (live, stored unannotated, or deleted); None if none does."""
    column = "annotation_id" if kind == "annotation" else "task_id"
    stored = "SELECT project FROM tasks WHERE task_id = ?1 UNION ALL " if kind == "task" else ""
    row = db.execute(f"{stored}SELECT project FROM annotations WHERE {column} = ?1 "
                     "UNION ALL SELECT project FROM tombstones WHERE kind = ?2 AND id = ?1 LIMIT 1",
                     (id_, kind)).fetchone()
    return row[0] if row else None


def _same_project(owner: str, project: str, what: str) -> None:
    if owner != project:
        raise ProjectMismatch(f"{what} belongs to project {owner}, not {project}: refused")


def _model(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(row["version"], row["project"], row["kind"], row["path"],
                       row["n_examples"], json.loads(row["info"]), row["created_at"])


class _SQLite:
    """One file in WAL mode. A write transaction takes SQLite's write lock at once (``BEGIN
    IMMEDIATE``): one writer at a time, so the store's read-then-write steps (ownership, ordering
    by ``updated_at``) need no retries; ``synchronous=FULL``: a commit is on disk when it returns."""

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        db = open_wal(self.path, check_same_thread=check_same_thread)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")  # an acknowledged annotation survives power loss
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA secure_delete=ON")  # deleted note text is overwritten, not left in free pages
        return db

    @staticmethod
    def create(db: Callable[[], sqlite3.Connection]) -> None:
        until_unlocked(lambda: db().executescript(_SCHEMA))  # executescript commits by itself

    @staticmethod
    def begin(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")

    @staticmethod
    def add_column(db: Connection, table: str, column: str) -> None:
        if column.split()[0] not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    @staticmethod
    def shrink(db: sqlite3.Connection) -> bool:
        """Copy the WAL (which still holds the purged pages as they were) into the database file
        and truncate it. False when a reader (another thread, ``clinie report``, a backup) held an
        older snapshot past the busy timeout, during which SQLite retries."""
        busy, log, checkpointed = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy and log == checkpointed


class _PostgreSQL:
    """A PostgreSQL database (``CLINIE_DATABASE_URL``), for stores several processes and machines
    share. A write transaction first takes one transaction-scoped advisory lock: one writer at a
    time, as on SQLite, so the same steps hold without retries, while readers never wait (MVCC).
    A commit is durable when it returns (``synchronous_commit`` on, PostgreSQL's default)."""

    #: The advisory lock every write transaction of a clinie store takes ("clinie" in ASCII).
    WRITE_LOCK = 0x636C696E6965

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self, check_same_thread: bool = True) -> postgres.Connection:
        return postgres.connect(self.url)

    def create(self, db: Callable[[], postgres.Connection]) -> None:
        """The schema, from the SQLite one: ids that need 64 bits, an identity for trainings.
        Under the write lock, so that processes starting at once do not race to create it."""
        schema = _SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY "
                                 "PRIMARY KEY").replace("INTEGER", "BIGINT")
        connection = db()
        self.begin(connection)
        try:
            connection.executescript(schema)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def begin(self, db: postgres.Connection) -> None:
        db.execute("BEGIN")
        db.execute("SELECT pg_advisory_xact_lock(?)", (self.WRITE_LOCK,))

    @staticmethod
    def add_column(db: Connection, table: str, column: str) -> None:
        db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}")

    @staticmethod
    def shrink(db: postgres.Connection) -> bool:
        """Vacuum the tables a purge touches, so that the space of the deleted rows is reclaimed
        and reused. What PostgreSQL's WAL and the operator's backups keep is theirs to age out
        (docs/deploying.md)."""
        db.execute("VACUUM annotations, annotation_versions, tasks, tombstones")
        return True

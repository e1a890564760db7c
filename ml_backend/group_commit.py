"""Group commit: writes that arrive together are committed together, by one writer thread.

Each webhook used to be its own ``synchronous=FULL`` transaction, committed by the thread
answering it: concurrent handlers then queued on SQLite's write lock, polled by its busy handler
(sleeps of up to 100 ms between tries), and a burst from a team of annotators left some events
waiting past Label Studio's 1.0 s. Here a handler hands its write (a step: a function of the
connection) to the writer thread and waits; the writer takes every step waiting, runs them in one
transaction (``AnnotationStore.write_together``: one savepoint each, so that a step that fails is
undone alone) and commits once, then wakes each handler with its step's outcome. A handler returns
only once its step is committed — an answer still means the event is durably stored — and a lone
event waits for no batch: the writer commits whatever is waiting as soon as it is free.

Example:
    >>> from ml_backend.store import AnnotationStore
    >>> commits = GroupCommit(AnnotationStore(":memory:"))
    >>> commits.run(lambda db: db.execute("SELECT 41 + 1").fetchone()[0])
    42
    >>> commits.close()
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ml_backend.store import AnnotationStore, Outcome

#: The most steps one transaction holds: a commit still comes every few milliseconds in a flood.
MAX_BATCH = 128


class _Pending:
    __slots__ = ("step", "done", "outcome")

    def __init__(self, step: Callable[[Any], Any]) -> None:
        self.step = step
        self.done = threading.Event()
        self.outcome: Outcome | None = None


class GroupCommit:
    """The writer thread of one store (started by the first ``run``; ``close`` stops it)."""

    def __init__(self, store: AnnotationStore, max_batch: int = MAX_BATCH) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, step: Callable[[Any], Any]) -> Any:
        """Run ``step(connection)`` in the next transaction the writer commits; its result once
        committed, or the exception it raised (then nothing of it is stored)."""
        pending = _Pending(step)
        with self._lock:
            if self._closed:  # after close, or once the writer died: a transaction of its own, here
                pending.outcome = self._store.write_together([step])[0]
            else:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write, name="clinie-group-commit", daemon=True)
                    self._thread.start()
                self._queue.put(pending)
        if pending.outcome is None:
            pending.done.wait()
        outcome = pending.outcome
        assert outcome is not None
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def close(self) -> None:
        """Commit what is waiting, then stop the writer; later ``run`` calls commit alone."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)  # a writer stuck on a lock held elsewhere does not hold up the exit

    def _write(self) -> None:
        """The writer's loop. Should it die (a ``BaseException`` out of a step, a bug), every step
        it held or that waits is answered with the error — none committed, none left waiting —
        and later ``run`` calls commit alone, in their own threads."""
        batch: list[_Pending] = []
        try:
            while True:
                batch, stopping = self._next_batch()
                if batch:
                    self._commit(batch)
                batch = []
                if stopping:
                    return
        except BaseException as error:
            with self._lock:
                self._closed = True
            self._fail([*batch, *self._drain()], RuntimeError(f"the group-commit writer died: {error!r}"))
            raise

    def _next_batch(self) -> tuple[list[_Pending], bool]:
        """The steps waiting (at least one: blocks until one comes), at most ``max_batch``; and
        whether ``close`` asked the writer to stop after them."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return batch, True
            batch.append(more)
        return batch, False

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            outcomes = self._store.write_together([p.step for p in batch])
        except Exception as error:  # write_together returns the steps' errors; this is the unforeseen
            outcomes = [Outcome(None, error) for _ in batch]
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome = outcome
            pending.done.set()

    def _drain(self) -> list[_Pending]:
        waiting: list[_Pending] = []
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return waiting
            if pending is not None:
                waiting.append(pending)

    @staticmethod
    def _fail(batch: list[_Pending], error: Exception) -> None:
        for pending in batch:
            if pending.outcome is None:
                pending.outcome = Outcome(None, error)
                pending.done.set()

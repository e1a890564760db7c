"""Opening SQLite files that several processes share (the store, the LLM call cache), private.

Two processes opening a new file at once (two benches, the backend beside ``clinie fewshot``) can
each hold a read lock and want the write lock to switch it to WAL or create its tables; SQLite
then refuses one of them at once, without waiting out the busy timeout, because waiting could
deadlock. The refused one retries here instead of failing with "database is locked".

Example:
    >>> db = open_wal(":memory:")
    >>> until_unlocked(lambda: db.execute("CREATE TABLE IF NOT EXISTS t (x)")).rowcount
    -1
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from clinie.private import private_file

BUSY_S = 60.0
T = TypeVar("T")


def until_unlocked(step: Callable[[], T], within_s: float = BUSY_S) -> T:
    """Run ``step``, again while SQLite answers "database is locked", for up to ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return step()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_wal(path: str, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode, waiting up to ``BUSY_S`` for locks.

    The file (and its directory, when missing) is created private before SQLite opens it: the
    ``-wal`` and ``-shm`` files SQLite adds take its mode (``clinie.private``).
    """
    if path != ":memory:":
        private_file(Path(path))
        for companion in ("-wal", "-shm"):  # left by an older version, before files were private
            private_file(Path(path + companion), create=False)
    db = sqlite3.connect(path, timeout=BUSY_S, isolation_level=None, check_same_thread=check_same_thread)
    until_unlocked(lambda: db.execute("PRAGMA journal_mode=WAL"))
    return db

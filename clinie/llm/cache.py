"""A persistent cache of model calls: re-running a project on the same inputs costs no call.

Keyed by a hash of (provider, model, prompt, decoding parameters); values are JSON. Hits and
misses are counted so reports can say how many calls were really made. With ``max_bytes`` the
file is kept near that size (the backend's would otherwise grow with every note it ever read):
beyond it the calls stored first are evicted.

Example:
    >>> cache = CallCache(":memory:")
    >>> key = cache.key("llama.cpp", "gemma.gguf", "Sentence: x", {"mode": "constrained"})
    >>> cache.get(key) is None, cache.misses
    (True, 1)
    >>> cache.put(key, {"tags": ["O"]}); cache.get(key), cache.hits
    ({'tags': ['O']}, 1)
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from clinie.sqlite_wal import open_wal, until_unlocked

#: The share of the stored calls one eviction removes, oldest first: a cache at its bound evicts
#: once per many calls, not on each.
EVICTED_SHARE = 0.1


class CallCache:
    def __init__(self, path: str | Path, *, max_bytes: int = 0) -> None:
        """``max_bytes``: the most the database's pages in use may hold; 0 = no bound."""
        self._db = open_wal(str(path), check_same_thread=False)
        self._db.execute("PRAGMA secure_delete=ON")  # a cleared call is overwritten, not left in free pages
        until_unlocked(lambda: self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)"))
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    @staticmethod
    def key(provider: str, model: str, prompt: str, parameters: dict[str, Any]) -> str:
        material = json.dumps([provider, model, prompt, parameters], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?)", (key, json.dumps(value)))
            if self.max_bytes:
                self._evict()

    def clear(self) -> None:
        """Forget every call, down to the bytes on disk. A call is stored as a hash of its prompt
        (which quotes a note: the hash could confirm a note one already holds) and the answer (tags,
        a choice); which task it read, the cache cannot tell — so when Label Studio deletes any
        note, all of it goes (a cache only costs its calls again)."""
        with self._lock:
            self._db.execute("DELETE FROM calls")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def used_bytes(self) -> int:
        """The bytes of the database's pages in use (freed pages are reused before it grows):
        two pragmas, cheap enough to read after every call stored."""
        pages, free, size = (self._db.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
        return (pages - free) * size

    def _evict(self) -> None:
        """While beyond ``max_bytes``, delete the oldest ``EVICTED_SHARE`` of the calls (rowids
        grow with each insertion, a replaced call's too)."""
        while self.used_bytes() > self.max_bytes:
            [count] = self._db.execute("SELECT COUNT(*) FROM calls").fetchone()
            if not count:
                return
            self.evicted += self._db.execute(
                "DELETE FROM calls WHERE rowid IN (SELECT rowid FROM calls ORDER BY rowid LIMIT ?)",
                (max(1, int(count * EVICTED_SHARE)),)).rowcount

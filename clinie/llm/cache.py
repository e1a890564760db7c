"""A persistent cache of model calls: re-running a project on the same inputs costs no call.

Keyed by a hash of (provider, model, prompt, decoding parameters); values are JSON. Hits and
misses are counted so reports can say how many calls were really made.

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


class CallCache:
    def __init__(self, path: str | Path) -> None:
        self._db = open_wal(str(path), check_same_thread=False)
        until_unlocked(lambda: self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)"))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

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

"""The SQLite files processes share — the annotation store and the LLM call cache: a new file
opened by several processes at once serves them all, and what was written survives reopening."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clinie.llm.cache import CallCache
from harness.helpers import DISEASE_CONFIG
from ml_backend.store import AnnotationStore


def _cache_write(path: str) -> None:
    cache = CallCache(path)
    cache.put(cache.key("llama.cpp", "m", path, {}), {"ok": True})


def _cache_written(path: str) -> bool:
    return CallCache(path).get(CallCache.key("llama.cpp", "m", path, {})) == {"ok": True}


def _store_write(path: str) -> None:
    AnnotationStore(path).set_label_config("1", DISEASE_CONFIG)


def _store_written(path: str) -> bool:
    return AnnotationStore(path).label_config("1") == DISEASE_CONFIG


def _open_at_once(write, path: str, barrier, results) -> None:
    barrier.wait()
    try:
        write(path)
        results.put("ok")
    except Exception as error:  # reported to the parent, which asserts on it
        results.put(repr(error))


@pytest.mark.parametrize(("write", "written"), [(_cache_write, _cache_written), (_store_write, _store_written)],
                         ids=["call cache", "annotation store"])
def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path, write, written):
    # Without the retry, about one round in twenty lost a process to "database is locked".
    context = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(60):
        path, barrier, results = str(tmp_path / f"{round_}.sqlite"), context.Barrier(8), context.Queue()
        processes = [context.Process(target=_open_at_once, args=(write, path, barrier, results)) for _ in range(8)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join()
        failures += [outcome for outcome in outcomes if outcome != "ok"]
        assert written(path)
    assert failures == []


def test_cached_answers_survive_reopening(tmp_path):
    path = tmp_path / "calls.sqlite"
    first = CallCache(path)
    key = first.key("llama.cpp", "gemma.gguf", "Sentence: Crohn disease .", {"mode": "constrained"})
    first.put(key, {"tags": ["B-Disease", "I-Disease", "O"]})

    again = CallCache(path)
    assert again.get(key) == {"tags": ["B-Disease", "I-Disease", "O"]}
    assert (again.hits, again.misses) == (1, 0)


SECOND_PROCESS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("SELECT COUNT(*) FROM annotations").fetchone()
db.close()  # the last connection of a database deletes its -wal, if it can take the lock
"""


def test_opening_another_connection_keeps_the_locks_a_second_process_respects(tmp_path):
    """A backend thread opening its connection must not drop the locks the process holds on the
    store (closing any descriptor of a file does, on Linux): ``clinie purge`` or ``clinie report``
    closing the store beside it would then take itself for the last user and delete the WAL that
    the backend still writes into — what is written next is answered and then lost."""
    path = tmp_path / "clinie.sqlite3"
    store = AnnotationStore(path)
    store.set_label_config("1", DISEASE_CONFIG)
    opened = threading.Thread(target=lambda: store.projects())  # a new thread: a new connection
    opened.start()
    opened.join()
    subprocess.run([sys.executable, "-c", SECOND_PROCESS, str(path)], check=True, timeout=60)
    assert Path(f"{path}-wal").exists(), "the second process deleted the WAL of a live store"
    store.record_annotation("1", {"id": 1, "result": []}, {"id": 1, "data": {"text": "written after"}})
    with sqlite3.connect(path) as other:  # what another process reads: the file the writes went to
        assert other.execute("SELECT COUNT(*) FROM annotations").fetchone() == (1,)

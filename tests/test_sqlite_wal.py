"""The SQLite files processes share — the annotation store and the LLM call cache: a new file
opened by several processes at once serves them all, and what was written survives reopening."""

from __future__ import annotations

import multiprocessing

import pytest

from clinie.llm.cache import CallCache
from clinie.store import AnnotationStore
from tests.support.helpers import DISEASE_CONFIG


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

"""Documents to and from the JSONL format of the shared corpora.

One document per line: ``{"id", "text", "entities": [{"id", "start", "end", "label", "text"}],
"relations": [{"head", "tail", "label"}]}``; ``score`` is written when a span or relation has one.
Reading checks the offsets: a line whose entity text disagrees with ``text[start:end]`` is an
error that names the line, never a silently shifted span.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from clinie.core.types import Document, Relation, Span


def document_from_dict(record: dict[str, Any]) -> Document:
    text = record["text"]
    if not isinstance(text, str):
        raise ValueError("'text' must be a string")
    entities = []
    for i, e in enumerate(record.get("entities") or []):
        span = Span.from_text(text, int(e["start"]), int(e["end"]), str(e["label"]),
                              id=str(e.get("id") or f"T{i + 1}"), score=e.get("score"))
        if "text" in e and e["text"] != span.text:
            raise ValueError(f"entity {span.id}: text {e['text']!r} != text[start:end] {span.text!r}")
        entities.append(span)
    relations = [
        Relation(str(r["head"]), str(r["tail"]), str(r["label"]), r.get("score"))
        for r in record.get("relations") or []
    ]
    return Document(id=str(record.get("id", "")), text=text, entities=tuple(entities),
                    relations=tuple(relations))


def document_to_dict(doc: Document) -> dict[str, Any]:
    def entity(s: Span) -> dict[str, Any]:
        out = {"id": s.id, "start": s.start, "end": s.end, "label": s.label, "text": s.text}
        return out if s.score is None else {**out, "score": round(s.score, 4)}

    def relation(r: Relation) -> dict[str, Any]:
        out = {"head": r.head, "tail": r.tail, "label": r.label}
        return out if r.score is None else {**out, "score": round(r.score, 4)}

    return {"id": doc.id, "text": doc.text, "entities": [entity(s) for s in doc.entities],
            "relations": [relation(r) for r in doc.relations]}


def read_documents(path: str | Path) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield document_from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: {e}") from e


def write_documents(docs: Iterable[Document], out: str | Path | IO[str]) -> int:
    """Write ``docs`` as JSONL to a path or an open text stream; returns how many."""
    if isinstance(out, (str, Path)):
        with open(out, "w", encoding="utf-8") as f:
            return write_documents(docs, f)
    n = 0
    for doc in docs:
        out.write(json.dumps(document_to_dict(doc), ensure_ascii=False) + "\n")
        n += 1
    return n

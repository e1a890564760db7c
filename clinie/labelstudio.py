"""The one translator between Label Studio and clinie.

Label Studio speaks labeling configs (XML), tasks (``{"id", "data": {...}}``) and results
(regions with ids, relations between region ids); clinie speaks ``Schema`` and ``Document``.
Everything that crosses is checked here: labels against the config, offsets against the text.

Example:
    >>> config = '''<View><Labels name="label" toName="text" granularity="word">
    ...   <Label value="Disease" hint="a disorder or syndrome"/></Labels>
    ...   <Text name="text" value="$note"/></View>'''
    >>> schema = parse_label_config(config)
    >>> control = schema.span_controls[0]
    >>> (control.name, control.to_name, control.value_key, control.granularity)
    ('label', 'text', 'note', 'word')
    >>> doc = task_to_document({"id": 4, "data": {"note": "Familial breast cancer"}}, control)
    >>> doc = doc.with_annotations([Span.from_text(doc.text, 11, 17, "Disease", score=0.9)])
    >>> result, score = document_to_result(doc, control)
    >>> result[0]["value"]
    {'start': 9, 'end': 22, 'text': 'breast cancer', 'labels': ['Disease']}
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from clinie.core import Document, LabelSpec, Relation, Schema, Span, SpanControl, tokenize

log = logging.getLogger(__name__)


class LabelConfigError(ValueError):
    """A labeling config clinie cannot work with; the message says what to change."""


class UnknownLabelError(ValueError):
    """A label that the labeling config does not declare."""


def _label_specs(control: ET.Element, tag: str) -> tuple[LabelSpec, ...]:
    specs = []
    for label in control.iter(tag):
        value = label.get("value")
        if not value:
            raise LabelConfigError(f"<{tag}> without a value in <{control.tag} name={control.get('name')!r}>")
        specs.append(LabelSpec(value, label.get("hint") or label.get("description") or ""))
    names = [s.name for s in specs]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise LabelConfigError(f"<{control.tag} name={control.get('name')!r}> repeats {', '.join(duplicates)}")
    return tuple(specs)


def parse_label_config(xml: str) -> Schema:
    """The ``Schema`` of a labeling config: its ``<Labels>`` on ``<Text>``, and its ``<Relations>``.

    Configs with nothing clinie can predict (no ``<Labels>`` on a ``<Text>``) are refused with
    a ``LabelConfigError`` rather than served with silently empty predictions.
    """
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise LabelConfigError("DOCTYPE and ENTITY declarations are not allowed in a labeling config")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"not well-formed XML: {e}") from None
    texts = {t.get("name"): t for t in root.iter("Text") if t.get("name")}
    controls = []
    for labels in root.iter("Labels"):
        name, to_name = labels.get("name"), labels.get("toName")
        if not name or not to_name:
            raise LabelConfigError("every <Labels> needs a name and a toName")
        if to_name not in texts:
            raise LabelConfigError(f"<Labels name={name!r}> points at toName={to_name!r}, which is not a <Text>")
        specs = _label_specs(labels, "Label")
        if not specs:
            raise LabelConfigError(f"<Labels name={name!r}> has no <Label>")
        text = texts[to_name]
        value = text.get("value", "")
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(f"<Text name={to_name!r}> needs value=\"$key\" naming the task's data field")
        word = "word" in (labels.get("granularity"), text.get("granularity"))
        controls.append(SpanControl(name, to_name, value[1:], specs, "word" if word else "symbol"))
    if not controls:
        raise LabelConfigError("the config has no <Labels> on a <Text>: nothing for clinie to predict")
    relations = tuple(spec for r in root.iter("Relations") for spec in _label_specs(r, "Relation"))
    return Schema(tuple(controls), relations)


def task_to_document(task: dict[str, Any], control: SpanControl) -> Document:
    """The text a control annotates in ``task``; an empty text is a valid (empty) document."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError("a task must be an object with a 'data' object")
    text = task["data"].get(control.value_key)
    if not isinstance(text, str):
        raise ValueError(f"task {task.get('id')}: data[{control.value_key!r}] is missing or not a string")
    return Document(id=str(task.get("id", "")), text=text,
                    meta={"task_id": task.get("id"), "to_name": control.to_name})


def annotation_to_document(task: dict[str, Any], result: Sequence[dict[str, Any]], schema: Schema) -> Document:
    """The annotated text of the first span control, with its regions and relations.

    Offsets are the truth: a region whose ``value.text`` disagrees with the text is rebuilt
    from the offsets; regions outside the text, with labels the config does not declare, or
    from another control are skipped (and logged, without their text). Relations between
    skipped regions are skipped too; ``direction: left`` swaps head and tail.
    """
    control = schema.span_controls[0]
    doc = task_to_document(task, control)
    spans: dict[str, Span] = {}
    relations = []
    for item in result:
        kind = item.get("type")
        if kind == "labels" and item.get("from_name") == control.name:
            value = item.get("value") or {}
            labels = value.get("labels") or []
            try:
                start, end = int(value["start"]), int(value["end"])
                if len(labels) != 1 or labels[0] not in control.label_names:
                    raise UnknownLabelError(f"labels {labels}")
                spans[str(item["id"])] = Span.from_text(doc.text, start, end, labels[0], id=str(item["id"]))
            except (KeyError, TypeError, ValueError) as e:
                log.warning("task %s: region %s skipped: %s", doc.id, item.get("id"), type(e).__name__)
        elif kind == "relation":
            relations.append(item)
    links = []
    for item in relations:
        head, tail = str(item.get("from_id")), str(item.get("to_id"))
        if item.get("direction") == "left":
            head, tail = tail, head
        labels = item.get("labels") or [""]
        if head in spans and tail in spans:
            links.append(Relation(head, tail, labels[0]))
    return doc.with_annotations(tuple(spans.values()), tuple(links))


def _snap_to_words(text: str, span: Span) -> Span:
    words = [w for w in tokenize(text) if w.start < span.end and span.start < w.end]
    if not words:
        return span
    start, end = min(span.start, words[0].start), max(span.end, words[-1].end)
    return Span.from_text(text, start, end, span.label, id=span.id, score=span.score)


def region_id(span: Span) -> str:
    """Stable across calls, so re-predicting a task gives its regions the same ids."""
    return hashlib.sha1(f"{span.start}:{span.end}:{span.label}".encode()).hexdigest()[:10]


def document_to_result(
    doc: Document, control: SpanControl, relation_labels: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], float | None]:
    """Label Studio ``result`` items for ``doc``'s spans and relations, and a task-level score.

    Labels are checked against the config (``UnknownLabelError``): Label Studio itself accepts
    any label and the UI then silently shows nothing. With word granularity, spans are widened
    to whole words. The task score is the mean span score: what Label Studio sorts tasks by.
    """
    regions: dict[str, dict[str, Any]] = {}
    ids: dict[str, str] = {}
    for span in doc.entities:
        if span.label not in control.label_names:
            raise UnknownLabelError(f"label {span.label!r} is not one of {', '.join(control.label_names)}")
        if control.granularity == "word":
            span = _snap_to_words(doc.text, span)
        rid = region_id(span)
        ids[span.id] = rid
        if rid in regions:
            continue
        region: dict[str, Any] = {
            "id": rid, "from_name": control.name, "to_name": control.to_name, "type": "labels",
            "value": {"start": span.start, "end": span.end, "text": doc.text[span.start:span.end],
                      "labels": [span.label]}}
        if span.score is not None:
            region["score"] = round(float(span.score), 4)
        regions[rid] = region
    result = list(regions.values())
    for relation in doc.relations:
        if relation_labels and relation.label not in relation_labels:
            raise UnknownLabelError(f"relation {relation.label!r} is not one of {', '.join(relation_labels)}")
        if relation.head not in ids or relation.tail not in ids:
            raise ValueError(f"relation {relation.label!r} points at a span that is not in the document")
        item: dict[str, Any] = {"from_id": ids[relation.head], "to_id": ids[relation.tail], "type": "relation",
                                "direction": "right", "labels": [relation.label] if relation.label else []}
        if relation.score is not None:
            item["score"] = round(float(relation.score), 4)
        result.append(item)
    scores = [r["score"] for r in regions.values() if "score" in r]
    return result, (round(sum(scores) / len(scores), 4) if scores else None)

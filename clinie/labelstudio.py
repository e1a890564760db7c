"""The one translator between Label Studio and clinie.

Label Studio speaks labeling configs (XML), tasks (``{"id", "data": {...}}``) and results
(regions with ids, relations between region ids); clinie speaks ``Schema`` and ``Document``.
Everything that crosses is checked here: labels against the config, offsets against the text.
Label Studio itself checks neither (a prediction with a wrong label is stored and silently not
shown), so nothing downstream of this module has to.

Example:
    >>> config = '''<View>
    ...   <Labels name="label" toName="text" granularity="word">
    ...     <Label value="Medication" hint="a drug the patient takes"/>
    ...     <Label value="Dosage" hint="the amount of one dose"/>
    ...   </Labels>
    ...   <Relations><Relation value="has_dosage"/></Relations>
    ...   <Text name="text" value="$note"/>
    ... </View>'''
    >>> schema = parse_label_config(config)
    >>> control = schema.span_controls[0]
    >>> (control.name, control.to_name, control.value_key, control.granularity)
    ('label', 'text', 'note', 'word')
    >>> doc = task_to_document({"id": 4, "data": {"note": "Aspirin 81 mg daily"}}, control)
    >>> doc = doc.with_annotations(
    ...     [Span.from_text(doc.text, 0, 4, "Medication", id="m", score=0.9),  # "Aspi": widened
    ...      Span.from_text(doc.text, 8, 13, "Dosage", id="d", score=0.7)],
    ...     [Relation("m", "d", "has_dosage")])
    >>> result, score = document_to_result(doc, control, schema.relation_label_names)
    >>> [item["value"]["text"] for item in result if item["type"] == "labels"], score
    (['Aspirin', '81 mg'], 0.7)
    >>> back = annotation_to_document({"id": 4, "data": {"note": doc.text}}, result, schema)
    >>> [(s.text, s.label) for s in back.entities], [r.label for r in back.relations]
    ([('Aspirin', 'Medication'), ('81 mg', 'Dosage')], ['has_dosage'])
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import xml.etree.ElementTree as ET
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from clinie.core import Document, LabelSpec, Relation, RelationSpec, Schema, Span, SpanControl, Token, tokenize

log = logging.getLogger(__name__)


class LabelConfigError(ValueError):
    """A labeling config clinie cannot work with; the message says what to change."""


class UnknownLabelError(ValueError):
    """A label that the labeling config does not declare."""


# --- labeling config -> Schema ------------------------------------------------------------


def _label_specs(control: ET.Element, tag: str) -> list[LabelSpec]:
    specs = []
    for label in control.iter(tag):
        value = label.get("value")
        if not value:
            raise LabelConfigError(f"a <{tag}> in <{control.tag} name={control.get('name')!r}> has no value")
        specs.append(LabelSpec(value, label.get("hint") or label.get("description") or ""))
    return specs


def _relation_spec(relations: ET.Element, spec: LabelSpec) -> RelationSpec:
    """The clinie attributes of a ``<Relation>`` (Label Studio ignores them): which span labels
    it joins (``clinie-head``, ``clinie-tail``) and how to say it (``clinie-template``)."""
    element = next(r for r in relations.iter("Relation") if r.get("value") == spec.name)

    def names(attribute: str) -> tuple[str, ...]:
        return tuple(n.strip() for n in (element.get(attribute) or "").split(",") if n.strip())

    template = element.get("clinie-template") or ""
    if template and ("{head}" not in template or "{tail}" not in template):
        raise LabelConfigError(f"<Relation value={spec.name!r}>: clinie-template must contain {{head}} and {{tail}}")
    return RelationSpec(spec.name, spec.description, names("clinie-head"), names("clinie-tail"), template)


def _refuse_duplicates(specs: Sequence[LabelSpec], where: str) -> None:
    # Label Studio would show two identical buttons; clinie could not tell them apart.
    names = [s.name for s in specs]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise LabelConfigError(f"{where} repeats the label(s) {', '.join(duplicates)}; each must appear once")


def parse_label_config(xml: str) -> Schema:
    """The ``Schema`` of a labeling config: its ``<Labels>`` on ``<Text>``, and its ``<Relations>``.

    Configs with nothing clinie can predict (no ``<Labels>`` on a ``<Text>``) are refused with
    a ``LabelConfigError`` rather than served with silently empty predictions. Entity
    declarations are refused outright: the standard library parser would expand them.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise LabelConfigError("DOCTYPE and ENTITY declarations are not allowed in a labeling config")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"the labeling config is not well-formed XML: {e}") from None
    texts = {t.get("name"): t for t in root.iter("Text") if t.get("name")}
    controls = []
    for labels in root.iter("Labels"):
        name, to_name = labels.get("name"), labels.get("toName")
        if not name or not to_name:
            raise LabelConfigError("every <Labels> needs a name and a toName attribute")
        if to_name not in texts:
            raise LabelConfigError(
                f"<Labels name={name!r}> has toName={to_name!r}, but there is no <Text name={to_name!r}>; "
                f"the <Text> names are: {', '.join(map(repr, texts)) or 'none'}")
        specs = _label_specs(labels, "Label")
        if not specs:
            raise LabelConfigError(f"<Labels name={name!r}> has no <Label value=...> inside it")
        _refuse_duplicates(specs, f"<Labels name={name!r}>")
        text = texts[to_name]
        value = text.get("value", "")
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(f"<Text name={to_name!r}> needs value=\"$key\" naming the task's data field")
        if text.get("valueType", "text") != "text":
            # The task then holds a URL, and offsets into the URL would be meaningless.
            raise LabelConfigError(f"<Text name={to_name!r}> has valueType={text.get('valueType')!r}; "
                                   "clinie needs the text itself in the task data")
        word = "word" in (labels.get("granularity"), text.get("granularity"))
        controls.append(SpanControl(name, to_name, value[1:], tuple(specs), "word" if word else "symbol"))
    if not controls:
        raise LabelConfigError("the config has no <Labels> attached to a <Text>: nothing for clinie to predict")
    relations = [_relation_spec(r, s) for r in root.iter("Relations") for s in _label_specs(r, "Relation")]
    _refuse_duplicates(relations, "<Relations>")
    known = set(Schema(tuple(controls)).span_labels)
    for spec in relations:
        if unknown := sorted(set(spec.heads + spec.tails) - known):
            raise LabelConfigError(f"<Relation value={spec.name!r}> names span label(s) {', '.join(unknown)} "
                                   "that no <Labels> has")
    return Schema(tuple(controls), tuple(relations))


# --- Label Studio -> Documents -------------------------------------------------------------


def task_to_document(task: dict[str, Any], control: SpanControl) -> Document:
    """The text a control annotates in ``task``; an empty text is a valid (empty) document."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError("a task must be an object with a 'data' object")
    text = task["data"].get(control.value_key)
    if not isinstance(text, str):
        raise ValueError(f"task {task.get('id')}: data[{control.value_key!r}] is missing or not a string")
    return Document(id=str(task.get("id", "")), text=text,
                    meta={"task_id": task.get("id"), "to_name": control.to_name})


class UnusableAnnotation(ValueError):
    """An annotation clinie cannot learn from as it stands: learning the rest of it would teach
    a region it holds as "no entity". ``reason`` is one of a few fixed phrases (counted per
    project in /metrics and reports); the message adds the detail, never the note text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


#: The reason of an annotation whose task lacks the text the config labels (imported before the
#: config changed, say).
TASK_WITHOUT_TEXT = "task without the labelled text"
#: The reason of an annotation that raised what reading one is not meant to (a last resort).
UNREADABLE = "unreadable annotation"


def _offset(value: Any) -> int:
    """An offset as JSON carries it: an int, or a float with an integral, finite value (``5.0``).
    ``int()`` alone would take ``"3"`` and ``True`` for offsets and raise OverflowError on ``1e999``."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # the type, not the value: a string offset could hold anything
    raise UnusableAnnotation("region offsets unusable", f"an offset of type {type(value).__name__} is no integer")


def _strings(value: Any) -> list[str] | None:
    """A ``labels`` list as Label Studio sends it (absent or empty: no label), or None when it is
    not a list of strings: iterating a number raises TypeError, a dict yields its keys as labels."""
    labels = value or []
    return labels if isinstance(labels, list) and all(isinstance(label, str) for label in labels) else None


def _region_span(item: dict[str, Any], control: SpanControl, text: str) -> Span:
    """The span of one region; a region without an id gets a stable one from its control,
    offsets and label (ids only matter to relations, and Label Studio's API, SDK and imports
    often leave them out)."""
    value = item.get("value")
    if not isinstance(value, dict) or "start" not in value or "end" not in value:
        raise UnusableAnnotation("region without offsets", "no value.start/value.end")
    labels = _strings(value.get("labels"))
    if labels is None:
        raise UnusableAnnotation("region labels not a list of strings", type(value.get("labels")).__name__)
    if len(labels) != 1:
        raise UnusableAnnotation("region without exactly one label", f"{len(labels)} labels")
    if labels[0] not in control.label_names:
        raise UnusableAnnotation("label not in the config", f"{labels[0]!r} is not in <Labels name={control.name!r}>")
    start, end = _offset(value["start"]), _offset(value["end"])
    rid = str(item["id"]) if item.get("id") is not None else _region_id(control, start, end, labels[0])
    try:
        # Offsets are the truth; value.text is only Label Studio's copy, rebuilt here from the text.
        return Span.from_text(text, start, end, labels[0], id=rid)
    except ValueError as e:  # empty, or outside the text
        raise UnusableAnnotation("region offsets unusable", str(e)) from None


def _relation_ends(item: dict[str, Any]) -> tuple[str, str]:
    """The region ids an arrow joins, head first (``direction: left`` swaps them)."""
    head, tail = item.get("from_id"), item.get("to_id")
    if not isinstance(head, str) or not isinstance(tail, str):
        raise UnusableAnnotation("relation ids not strings", f"{type(head).__name__} -> {type(tail).__name__}")
    return (tail, head) if item.get("direction") == "left" else (head, tail)


def _relation_labels(item: dict[str, Any], schema: Schema) -> list[str]:
    labels = _strings(item.get("labels"))
    if labels is None:
        raise UnusableAnnotation("relation labels not a list of strings", type(item.get("labels")).__name__)
    if not schema.relation_labels:
        return [""]  # the config types no relations: every arrow is an untyped link
    if not labels:
        raise UnusableAnnotation("relation without a label")
    if unknown := [label for label in labels if label not in schema.relation_label_names]:
        raise UnusableAnnotation("relation label not in the config", f"{unknown} not in <Relations>")
    return labels


def annotation_to_document(task: dict[str, Any], result: Sequence[dict[str, Any]], schema: Schema) -> Document:
    """The annotated text of the first span control, with its regions and relations.

    With several ``<Text>`` objects, the one the first ``<Labels>`` annotates is read, and so are
    the regions of every ``<Labels>`` on that same text; regions on other texts are ignored
    (their offsets belong to another string). Span ids are the region ids; a region without one
    gets a stable id (``_region_id``).

    Offsets are the truth: a region whose ``value.text`` disagrees with the text is rebuilt from
    the offsets. A region clinie cannot use (offsets outside the text, not exactly one label, a
    label the control does not declare, an id two different regions share) raises
    ``UnusableAnnotation``: its text trained without it would teach "no entity" there. So does
    an arrow with a label the config does not declare, or none where the config types them
    (its pair would be taught as unrelated). A task whose data lacks the text raises it too
    (``TASK_WITHOUT_TEXT``). Nothing else is raised, whatever the JSON holds: a result that is no
    list of objects, offsets that are no finite integers, labels or arrow ends of other types are
    unusable too, so that one hostile annotation cannot fail every training of its project.

    Relations: ``direction: left`` swaps head and tail (``bi`` is kept as drawn); one relation
    per label when an arrow has several. An arrow pointing at a region the result does not
    hold has no pair to teach: it is skipped and counted in ``meta["skipped_relations"]``.
    """
    first = schema.span_controls[0]
    try:
        doc = task_to_document(task, first)
    except ValueError as e:  # the message names the task and the key, never the text
        raise UnusableAnnotation(TASK_WITHOUT_TEXT, str(e)) from None
    if not isinstance(result, (list, tuple)):
        raise UnusableAnnotation("result not a list", type(result).__name__)
    controls = {c.name: c for c in schema.span_controls if c.to_name == first.to_name}
    spans: dict[str, Span] = {}
    arrows = []
    for item in result:
        if not isinstance(item, dict):
            raise UnusableAnnotation("result item not an object", type(item).__name__)
        if item.get("type") == "labels" and str(item.get("from_name")) in controls:
            span = _region_span(item, controls[str(item["from_name"])], doc.text)
            if span.id in spans and spans[span.id] != span:
                raise UnusableAnnotation("region id repeated", f"two regions are named {span.id!r}")
            if str(item["value"].get("text", span.text)) != span.text:
                log.info("task %s: region %s: value.text disagrees with the offsets; offsets kept", doc.id, span.id)
            spans[span.id] = span
        elif item.get("type") == "relation":
            arrows.append(item)
    relations: dict[Relation, None] = {}
    skipped = 0
    for item in arrows:
        head, tail = _relation_ends(item)
        if head not in spans or tail not in spans:
            log.warning("task %s: relation %s -> %s skipped: it points at a region the annotation does not hold",
                        doc.id, head, tail)
            skipped += 1
            continue
        relations.update((Relation(head, tail, label), None) for label in _relation_labels(item, schema))
    meta = {**doc.meta, "skipped_relations": skipped} if skipped else doc.meta
    return replace(doc.with_annotations(tuple(spans.values()), tuple(relations)), meta=meta)


def annotation_problem(task: dict[str, Any], result: Any, schema: Schema) -> str | None:
    """Why clinie cannot learn from an annotation (``UnusableAnnotation.reason``), or None: read
    by ``annotation_to_document`` itself, so that where an annotation arrives it is judged by the
    very rules a training will read it with. Never raises: it judges what a client sent.

    >>> schema = parse_label_config('<View><Labels name="l" toName="t"><Label value="Disease"/></Labels>'
    ...                             '<Text name="t" value="$text"/></View>')
    >>> task = {"id": 1, "data": {"text": "Cystic fibrosis"}}
    >>> region = {"from_name": "l", "type": "labels", "value": {"start": 0, "end": 6, "labels": ["Disease"]}}
    >>> annotation_problem(task, [region], schema) is None
    True
    >>> annotation_problem(task, [{**region, "value": {"start": 1e999, "end": 6, "labels": ["Disease"]}}], schema)
    'region offsets unusable'
    """
    try:
        annotation_to_document(task, result, schema)
    except UnusableAnnotation as e:
        return e.reason
    except Exception:  # a last resort, as where a training reads it (ml_backend.annotations.annotated_documents)
        return UNREADABLE
    return None


# --- Documents -> Label Studio -------------------------------------------------------------


def _snap_to_words(words: Sequence[Token], starts: list[int], ends: list[int], start: int, end: int
                   ) -> tuple[int, int]:
    # Words are sorted and disjoint: the first one ending after ``start`` and the last one
    # starting before ``end`` are the outermost words the span touches.
    first, last = bisect_right(ends, start), bisect_left(starts, end) - 1
    if first < len(words) and words[first].start < end:
        start = min(start, words[first].start)
    if last >= 0 and words[last].end > start:
        end = max(end, words[last].end)
    return start, end


def _region_id(control: SpanControl, start: int, end: int, label: str) -> str:
    # A function of what the region is, so re-predicting a task gives its regions the same ids,
    # and two controls on one text never share one.
    key = f"{control.name}:{start}:{end}:{label}".encode()
    return hashlib.sha1(key).hexdigest()[:10]


def document_to_result(
    doc: Document, control: SpanControl, relation_labels: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], float | None]:
    """Label Studio ``result`` items for ``doc``'s spans and relations, and a task-level score.

    Labels are checked against the config (``UnknownLabelError``), and offsets against the
    text (``ValueError``): Label Studio accepts anything and the UI then silently shows
    nothing or the wrong words. With word granularity, spans are widened to whole words, as
    the annotator's own selections would be; spans that become the same region are merged
    (keeping the highest score). Relations name spans by ``Span.id`` and are rewritten to
    region ids. The task score, which Label Studio sorts tasks by, is ``task_score``.
    """
    words = tokenize(doc.text) if control.granularity == "word" and doc.entities else []
    starts, ends = [w.start for w in words], [w.end for w in words]
    regions: dict[str, dict[str, Any]] = {}
    region_of: dict[str, str] = {}
    for span in doc.entities:
        if span.label not in control.label_names:
            raise UnknownLabelError(
                f"label {span.label!r} is not one of {', '.join(control.label_names)} "
                f"(<Labels name={control.name!r}>)")
        if not 0 <= span.start < span.end <= len(doc.text):
            raise ValueError(f"span {span.id!r} [{span.start}, {span.end}) is empty or outside "
                             f"a text of {len(doc.text)} chars")
        start, end = (span.start, span.end) if not words else _snap_to_words(words, starts, ends,
                                                                              span.start, span.end)
        rid = _region_id(control, start, end, span.label)
        region_of[span.id] = rid
        region = regions.setdefault(rid, {
            "id": rid, "from_name": control.name, "to_name": control.to_name, "type": "labels",
            "value": {"start": start, "end": end, "text": doc.text[start:end], "labels": [span.label]}})
        if span.score is not None:
            region["score"] = max(round(float(span.score), 4), region.get("score", 0.0))
    arrows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for relation in doc.relations:
        if relation_labels and relation.label not in relation_labels:
            raise UnknownLabelError(f"relation {relation.label!r} is not one of {', '.join(relation_labels)}")
        if relation.head not in region_of or relation.tail not in region_of:
            raise ValueError(f"relation {relation.label!r} points at a span id that no span of the document has")
        key = (region_of[relation.head], region_of[relation.tail], relation.label)
        arrow = arrows.setdefault(key, {"from_id": key[0], "to_id": key[1], "type": "relation",
                                        "direction": "right", "labels": [relation.label] if relation.label else []})
        if relation.score is not None:
            arrow["score"] = max(round(float(relation.score), 4), arrow.get("score", 0.0))
    items = [*regions.values(), *arrows.values()]
    return items, task_score([doc], items)


def task_score(docs: Sequence[Document], items: Sequence[dict[str, Any]]) -> float | None:
    """The score Label Studio's data manager sorts a task by: how sure the model is of its whole
    reading of the task, so that sorting ascending puts first what annotating would teach it most.

    A tagger that reads every word says it (``meta["confidence"]``, its least sure word's tag
    probability, "O" included: ``clinie.extractors.encoder.word_confidence``), so a task with
    no region is scored too; otherwise the least sure region's score. None when neither exists.
    Raw, not calibrated: the calibrators are fitted on span scores, and a ranking is what it is for.

    >>> task_score([Document("d", "x", meta={"confidence": 0.41})], [{"type": "labels", "score": 0.9}])
    0.41
    >>> task_score([Document("d", "x")], [{"type": "labels", "score": 0.9}, {"type": "labels", "score": 0.6}])
    0.6
    """
    confidences = [d.meta["confidence"] for d in docs if d.meta.get("confidence") is not None]
    scores = confidences or [i["score"] for i in items if i["type"] == "labels" and "score" in i]
    return round(min(scores), 4) if scores else None


def prediction_to_result(docs: Sequence[Document], schema: Schema) -> tuple[list[dict[str, Any]], float | None]:
    """One task's prediction, a document per span control (``schema.span_controls``, in order),
    as Label Studio ``result`` items and the task score (``task_score``).

    Each control gets its own labels only, and relations only of the config's labels between
    spans it kept: a label since removed from the config is not resurrected by a model trained
    before it was.
    """
    result: list[dict[str, Any]] = []
    for control, doc in zip(schema.span_controls, docs, strict=True):
        own = [s for s in doc.entities if s.label in control.label_names]
        ids = {s.id for s in own}
        relations = [r for r in doc.relations
                     if r.label in schema.relation_label_names and r.head in ids and r.tail in ids]
        items, _ = document_to_result(doc.with_annotations(own, relations), control, schema.relation_label_names)
        result.extend(items)
    return result, task_score(docs, result)


# --- Label Studio JSON export -> Documents -------------------------------------------------


def _schema_from_results(tasks: Sequence[dict[str, Any]]) -> Schema:
    """The schema an export implies when no labeling config is given: its label controls with the
    labels their regions use, and the relation labels its arrows carry."""
    controls: dict[tuple[str, str], dict[str, None]] = {}
    relation_labels: dict[str, None] = {}
    value_keys: dict[str, str] = {}
    for task in tasks:
        for annotation in task.get("annotations") or []:
            for item in annotation.get("result") or []:
                if item.get("type") == "labels":
                    key = (str(item.get("from_name")), str(item.get("to_name")))
                    controls.setdefault(key, {}).update(dict.fromkeys(item.get("value", {}).get("labels") or []))
                elif item.get("type") == "relation":
                    relation_labels.update(dict.fromkeys(item.get("labels") or []))
        data = task.get("data") or {}
        for _, to_name in controls:
            if to_name not in value_keys:
                texts = [k for k, v in data.items() if isinstance(v, str)]
                value_keys[to_name] = to_name if to_name in data else texts[0] if len(texts) == 1 else ""
    if not controls:
        raise ValueError("the export has no labelled regions: nothing to read the labels from")
    if missing := [to for to, key in value_keys.items() if not key]:
        raise ValueError(f"cannot tell which data field <Text name={missing[0]!r}> shows: pass the labeling config")
    return Schema(tuple(SpanControl(name, to_name, value_keys[to_name], tuple(LabelSpec(label) for label in labels))
                        for (name, to_name), labels in controls.items()),
                  tuple(RelationSpec(label) for label in relation_labels))


def read_export(path: str | Path, schema: Schema | None = None) -> list[Document]:
    """The documents of a Label Studio JSON export: per task, its latest annotation that was not
    cancelled (tasks with none are left out); ``schema`` from the project's labeling config, or
    else inferred from the export's own regions."""
    tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: a Label Studio JSON export is a list of tasks")
    schema = schema or _schema_from_results(tasks)
    docs = []
    for task in tasks:
        kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if kept:
            latest = max(kept, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0))
            docs.append(annotation_to_document(task, latest.get("result") or [], schema))
    return docs

"""Pure data types shared by every stage of clinie.

Offsets are character offsets into ``Document.text``, end-exclusive, and the invariant
``document.text[span.start:span.end] == span.text`` holds for every span clinie creates.

Example:
    >>> doc = Document(id="d1", text="Aspirin 81 mg daily")
    >>> span = Span.from_text(doc.text, 0, 7, "Medication")
    >>> span.text
    'Aspirin'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Granularity = Literal["word", "symbol"]


@dataclass(frozen=True)
class Span:
    """A labelled character interval of a document's text."""

    start: int
    end: int
    label: str
    text: str
    id: str = ""
    score: float | None = None

    @classmethod
    def from_text(
        cls, text: str, start: int, end: int, label: str, id: str = "", score: float | None = None
    ) -> Span:
        """Build a span whose surface form is read from ``text``, so it cannot disagree with it."""
        if not 0 <= start < end <= len(text):
            raise ValueError(f"span [{start}, {end}) is empty or outside a text of {len(text)} chars")
        return cls(start=start, end=end, label=label, text=text[start:end], id=id, score=score)

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class Relation:
    """A directed, labelled link between two spans of the same document (by span id)."""

    head: str
    tail: str
    label: str
    score: float | None = None


@dataclass(frozen=True)
class Document:
    """One text with its spans ("entities", as in the JSONL corpora) and relations."""

    id: str
    text: str
    entities: tuple[Span, ...] = ()
    relations: tuple[Relation, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def with_annotations(
        self, entities: tuple[Span, ...] | list[Span], relations: tuple[Relation, ...] | list[Relation] = ()
    ) -> Document:
        """The same text with other annotations (predictions replace gold, for instance)."""
        return replace(self, entities=tuple(entities), relations=tuple(relations))


@dataclass(frozen=True)
class LabelSpec:
    """A label and the one-line description annotators and prompts read."""

    name: str
    description: str = ""


#: The label of a listed pair that is *not* related (pair-level files such as DDI's few-shot ones).
NO_RELATION = "false"


@dataclass(frozen=True)
class RelationSpec(LabelSpec):
    """A relation label with what clinie needs to predict it.

    ``heads``/``tails`` name the span labels allowed at each end (empty: any label); in a
    labeling config they are the ``clinie-head``/``clinie-tail`` attributes of a ``<Relation>``,
    comma-separated. ``template`` verbalises the relation for the LLM, ``{head}`` and ``{tail}``
    standing for the two mentions (``clinie-template``); without one, ``verbalise`` derives a
    sentence from the name and description.

    >>> spec = RelationSpec("has_dosage", "The Dosage is the amount of this Medication",
    ...                     heads=("Medication",), tails=("Dosage",))
    >>> spec.allows("Medication", "Dosage"), spec.allows("Dosage", "Medication")
    (True, False)
    >>> spec.verbalise("aspirin", "81 mg")
    'The relation between "aspirin" and "81 mg" is has dosage: The Dosage is the amount of this Medication.'
    >>> RelationSpec("effect", template="{head} changes the effect of {tail}.").verbalise("A", "B")
    'A changes the effect of B.'
    """

    heads: tuple[str, ...] = ()
    tails: tuple[str, ...] = ()
    template: str = ""

    def allows(self, head_label: str, tail_label: str) -> bool:
        return (not self.heads or head_label in self.heads) and (not self.tails or tail_label in self.tails)

    def verbalise(self, head: str, tail: str) -> str:
        if self.template:
            return self.template.replace("{head}", head).replace("{tail}", tail)
        about = f": {self.description.rstrip('.')}" if self.description else ""
        return f'The relation between "{head}" and "{tail}" is {self.name.replace("_", " ")}{about}.'


@dataclass(frozen=True)
class SpanControl:
    """One ``<Labels>`` control of a labeling config and the ``<Text>`` object it annotates."""

    name: str
    to_name: str
    value_key: str
    labels: tuple[LabelSpec, ...]
    granularity: Granularity = "symbol"

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)


@dataclass(frozen=True)
class Schema:
    """What a project asks for: span labels per control, and relation labels."""

    span_controls: tuple[SpanControl, ...]
    relation_labels: tuple[RelationSpec, ...] = ()

    @property
    def span_labels(self) -> tuple[str, ...]:
        """Every span label, in config order, without repeats."""
        return tuple(dict.fromkeys(n for c in self.span_controls for n in c.label_names))

    @property
    def relation_label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.relation_labels)

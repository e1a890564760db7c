"""Candidate pairs for relation extraction, and the labelled pairs a classifier learns from.

A candidate is two spans of a document within ``window`` sentences of each other (1: the same
sentence) and at most ``max_distance`` characters apart, with the relation labels its span labels
allow (``PairTypes``). Relations whose ``RelationSpec`` declares head and tail labels are
oriented by that declaration, in either text order; the others run from the earlier span to the
later one, and their type constraints are learned from the annotations (the span-label pairs seen
with each relation, in either order) — until a relation has been seen, any pair may carry it.

Example:
    >>> from clinie.core import Document, Relation, RelationSpec, Span
    >>> text = "Take 81 mg aspirin daily."
    >>> doc = Document("1", text, (Span.from_text(text, 5, 10, "Dosage", "d"),
    ...                            Span.from_text(text, 11, 18, "Medication", "m"),
    ...                            Span.from_text(text, 19, 24, "Frequency", "f")),
    ...                (Relation("m", "d", "has_dosage"),))
    >>> types = PairTypes([RelationSpec("has_dosage", heads=("Medication",), tails=("Dosage",)),
    ...                    RelationSpec("has_frequency", heads=("Medication",), tails=("Frequency",))])
    >>> [(p.head.text, p.tail.text, p.labels) for p in candidate_pairs(doc, types)]
    [('aspirin', '81 mg', ('has_dosage',)), ('aspirin', 'daily', ('has_frequency',))]
    >>> [(p.head.text, label) for p, label in labelled_pairs(doc, types)]
    [('aspirin', 'has_dosage'), ('aspirin', 'false')]
"""

from __future__ import annotations

import bisect
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from clinie.core import NO_RELATION, Document, RelationSpec, Span, mark_spans, split_sentences

#: Markers of a pair's head and tail in the text an encoder reads (Baldini Soares et al. 2019).
ENTITY_MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")
#: The most characters between a candidate pair's two spans. A sentence splitter that finds no
#: end in a table or a list of a long note makes one "sentence" of it, and pairing every span of
#: it with every other is quadratic in its spans; a pair further apart than this hardly fits the
#: relation classifier's 256 sub-words (about 3.3 characters each on DDI) with its mentions and
#: some context. No gold relation of DDI's test set is further apart (21 of the 3,536 of its
#: train set are, 0.6 %).
MAX_DISTANCE = 600
Item = TypeVar("Item")


@dataclass(frozen=True)
class Pair:
    """An oriented candidate: ``head`` -> ``tail``, and the relation labels it may carry."""

    head: Span
    tail: Span
    labels: tuple[str, ...]


class PairTypes:
    """Which relation labels may join which span labels: declared, or learned from annotations."""

    def __init__(self, specs: Sequence[RelationSpec], seen: dict[str, set[frozenset[str]]] | None = None) -> None:
        self.specs = tuple(specs)
        self._seen = seen or {}

    @classmethod
    def learn(cls, specs: Sequence[RelationSpec], docs: Iterable[Document]) -> PairTypes:
        """The span-label pairs each relation joins in ``docs`` (unordered)."""
        seen: dict[str, set[frozenset[str]]] = defaultdict(set)
        for doc in docs:
            label_of = {s.id: s.label for s in doc.entities}
            for r in doc.relations:
                if r.label != NO_RELATION and r.head in label_of and r.tail in label_of:
                    seen[r.label].add(frozenset((label_of[r.head], label_of[r.tail])))
        return cls(specs, dict(seen))

    def labels_for(self, head: str, tail: str, *, text_order: bool) -> tuple[str, ...]:
        """Relation labels a ``head`` -> ``tail`` pair of these span labels may carry."""
        out = []
        for spec in self.specs:
            if spec.heads or spec.tails:
                allowed = spec.allows(head, tail)
            else:
                allowed = text_order and (spec.name not in self._seen
                                          or frozenset((head, tail)) in self._seen[spec.name])
            if allowed:
                out.append(spec.name)
        return tuple(out)

    def as_dict(self) -> dict[str, list[list[str]]]:
        return {name: sorted(sorted(pair) for pair in pairs) for name, pairs in sorted(self._seen.items())}

    @classmethod
    def from_dict(cls, specs: Sequence[RelationSpec], data: dict[str, list[list[str]]]) -> PairTypes:
        return cls(specs, {name: {frozenset(pair) for pair in pairs} for name, pairs in data.items()})


def candidate_pairs(doc: Document, types: PairTypes, window: int = 1,
                    max_distance: int | None = MAX_DISTANCE) -> list[Pair]:
    """Every pair of ``doc``'s spans at most ``window - 1`` sentences and ``max_distance``
    characters apart (from the end of the first to the start of the second; None: any) that
    some relation label allows, in text order of the pair's first span. Overlapping spans are
    never paired."""
    if window < 1:
        raise ValueError("window must be at least 1 (the same sentence)")
    starts = [start for start, _ in split_sentences(doc.text)] or [0]
    spans = sorted(doc.entities, key=lambda s: (s.start, s.end))
    sentence = [max(bisect.bisect_right(starts, s.start) - 1, 0) for s in spans]
    pairs = []
    for i, a in enumerate(spans):
        for j in range(i + 1, len(spans)):
            b = spans[j]
            if sentence[j] - sentence[i] >= window or (max_distance is not None and b.start - a.end > max_distance):
                break
            if a.overlaps(b):
                continue
            if labels := types.labels_for(a.label, b.label, text_order=True):
                pairs.append(Pair(a, b, labels))
            if labels := types.labels_for(b.label, a.label, text_order=False):
                pairs.append(Pair(b, a, labels))
    return pairs


def labelled_pairs(doc: Document, types: PairTypes, window: int = 1, *, listed: bool = False,
                   max_distance: int | None = MAX_DISTANCE) -> list[tuple[Pair, str]]:
    """Training pairs of an annotated document, each with its label or ``NO_RELATION``.

    Exhaustive by default: every candidate the annotation has no relation for is a negative
    (an annotator who draws relations draws all of them). ``listed=True`` is for pair-level
    files (DDI's few-shot ones): only the listed relations are examples, ``NO_RELATION``
    marking a negative, and other pairs of the text are unknown, not negative. A gold relation
    of a text-ordered label matches its candidate in either direction.
    """
    by_id = {s.id: s for s in doc.entities}
    if listed:
        out = []
        for r in doc.relations:
            if r.head in by_id and r.tail in by_id:
                head, tail = by_id[r.head], by_id[r.tail]
                labels = types.labels_for(head.label, tail.label, text_order=head.start <= tail.start)
                out.append((Pair(head, tail, labels or tuple(s.name for s in types.specs)), r.label))
        return out
    gold = {(r.head, r.tail): r.label for r in doc.relations if r.label != NO_RELATION}
    out = []
    for pair in candidate_pairs(doc, types, window, max_distance):
        label = gold.get((pair.head.id, pair.tail.id)) or gold.get((pair.tail.id, pair.head.id))
        out.append((pair, label if label in pair.labels else NO_RELATION))
    return out


def unlisted_pairs(docs: Sequence[Document], types: PairTypes, window: int = 1,
                   max_distance: int | None = MAX_DISTANCE) -> list[tuple[Document, Pair]]:
    """The candidate pairs of a pair-level file's texts that none of its rows lists (in either
    direction), each with the first document of its text: what ``labelled_pairs(listed=True)``
    leaves unknown. Most candidate pairs are no relation (about 83 % of DDI's), so these are the
    negatives a sample drawn by label lacks, a few of them relations nobody listed.

    >>> from clinie.core import Relation, RelationSpec, Span
    >>> text = "Aspirin raises warfarin and heparin levels."
    >>> spans = tuple(Span.from_text(text, s, e, "drug", i) for s, e, i in ((0, 7, "a"), (15, 23, "w"), (28, 35, "h")))
    >>> rows = [Document("r1", text, spans, (Relation("w", "a", "effect"),)),
    ...         Document("r2", text, spans, (Relation("a", "h", "false"),))]
    >>> [(doc.id, p.head.text, p.tail.text) for doc, p in unlisted_pairs(rows, PairTypes([RelationSpec("effect")]))]
    [('r1', 'warfarin', 'heparin')]
    """
    listed: dict[str, set[frozenset[tuple[int, int]]]] = defaultdict(set)
    first: dict[str, Document] = {}
    for doc in docs:
        first.setdefault(doc.text, doc)
        where = {s.id: (s.start, s.end) for s in doc.entities}
        listed[doc.text].update(frozenset((where[r.head], where[r.tail])) for r in doc.relations
                                if r.head in where and r.tail in where)
    return [(doc, pair) for text, doc in first.items() for pair in candidate_pairs(doc, types, window, max_distance)
            if frozenset(((pair.head.start, pair.head.end), (pair.tail.start, pair.tail.end))) not in listed[text]]


def sample_at_shares(labelled: Sequence[tuple[Item, str]], size: int, seed: int) -> list[tuple[Item, str]]:
    """At most ``size`` of ``labelled`` (items with their labels), drawn with ``seed``, in their
    order: each label keeps its share of them (largest remainders), so a sample of a long note's
    candidate pairs has their real share of ``NO_RELATION`` and a classifier trained on it learns
    the text's priors; a label present is kept at least once when ``size`` allows (never seen, it
    could never be predicted). All of them when there are no more than ``size``.

    >>> labelled = [(n, "false" if n % 10 else "effect") for n in range(100)]
    >>> sample = sample_at_shares(labelled, 20, seed=1)
    >>> len(sample), sum(label == "effect" for _, label in sample)
    (20, 2)
    """
    if len(labelled) <= size:
        return list(labelled)
    by_label: dict[str, list[int]] = defaultdict(list)
    for n, (_, label) in enumerate(labelled):
        by_label[label].append(n)
    quotas = {label: len(members) * size / len(labelled) for label, members in by_label.items()}
    counts = Counter({label: int(quota) for label, quota in quotas.items()})
    for label in sorted(quotas, key=lambda label: counts[label] - quotas[label])[: size - sum(counts.values())]:
        counts[label] += 1
    if size >= len(by_label):
        for label in [label for label in by_label if not counts[label]]:
            counts[counts.most_common(1)[0][0]] -= 1
            counts[label] = 1
    rng = random.Random(seed)
    return [labelled[n] for n in sorted(n for label, members in by_label.items()
                                        for n in rng.sample(members, counts[label]))]


def mark(text: str, pair: Pair, markers: tuple[str, str, str, str] = ENTITY_MARKERS,
         sentences: Sequence[tuple[int, int]] | None = None) -> str:
    """The sentences from the pair's first span to its last, with the two spans marked
    (head open, head close, tail open, tail close); whitespace runs become one space.
    ``sentences`` are ``split_sentences(text)``, passed by callers that mark many pairs of one
    text so that a long note is split once, not once per pair.

    >>> from clinie.core import Span
    >>> text = "No issue. Aspirin raises warfarin levels. Done."
    >>> pair = Pair(Span.from_text(text, 25, 33, "drug"), Span.from_text(text, 10, 17, "drug"), ("mechanism",))
    >>> mark(text, pair)
    '[E2] Aspirin [/E2] raises [E1] warfarin [/E1] levels.'
    >>> mark(text, pair, ("<<", ">>", "<<", ">>"))
    '<< Aspirin >> raises << warfarin >> levels.'
    """
    head_open, head_close, tail_open, tail_close = markers
    return mark_spans(text, [(pair.head, head_open, head_close), (pair.tail, tail_open, tail_close)], sentences)

"""Precision first: the least score a region needs to be shown, per label.

An annotator pays for every wrong region shown (found, judged, deleted) and trusts the next ones
less; a region not shown costs a drawn one. So a project's regions are shown only from the score
on at which, in the project's own cross-validated predictions (documents the model had not
learnt from), at least ``min_precision`` of them were right — the lowest such score, which keeps
the most recall. A label predicted too seldom for its own estimate (``MIN_EVIDENCE``) takes the
threshold of all labels pooled. A label no score lifts to ``min_precision`` is not shown at all,
until more annotations make the model better.

Thresholds apply to raw scores, before calibration (a monotone map: the same regions pass), and
to scored regions only: a strategy that scores nothing is shown as it is.

    >>> threshold([0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0], min_precision=0.7)
    0.6
    >>> threshold([0.9, 0.8], [0, 0], min_precision=0.5) is None
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clinie.core import Document
from clinie.evaluation.calibration import labelled_outcomes

#: Cross-validated regions of a label below which its own precision cannot be told from chance
#: (with 10, one region more or less right moves it by 0.1): it takes the pooled threshold.
MIN_EVIDENCE = 10
POOLED = ""  # the key of the threshold of all labels pooled


def threshold(scores: Sequence[float], correct: Sequence[int], *, min_precision: float) -> float | None:
    """The lowest score ``t`` such that the regions scored ``t`` or more were right at least
    ``min_precision`` of the time (the most recall at that precision); None when no ``t`` does.
    Regions of equal score pass or fail together."""
    if not 0 <= min_precision <= 1:
        raise ValueError(f"min_precision {min_precision} is not a precision (0 to 1)")
    best, right, shown = None, 0, 0
    ranked = sorted(zip(scores, correct), key=lambda sc: -sc[0])
    for i, (score, ok) in enumerate(ranked):
        right, shown = right + ok, shown + 1
        if i + 1 < len(ranked) and ranked[i + 1][0] == score:
            continue  # a cut between equal scores is no cut
        if right >= min_precision * shown:
            best = score
    return best


@dataclass(frozen=True)
class Thresholds:
    """Per label, the least raw score a region is shown from (None: not shown at all); labels
    with too little evidence of their own take ``POOLED``'s; without a ``POOLED`` entry they are
    shown unfiltered (nothing was ever predicted to estimate one from)."""

    min_precision: float
    spans: Mapping[str, float | None] = field(default_factory=dict)
    relations: Mapping[str, float | None] = field(default_factory=dict)

    def shows(self, kind: Mapping[str, float | None], label: str, score: float | None) -> bool:
        if score is None or (label not in kind and POOLED not in kind):
            return True
        least = kind.get(label, kind.get(POOLED))
        return least is not None and score >= least

    def apply(self, docs: Iterable[Document]) -> list[Document]:
        """``docs`` without the regions (and relations) under their label's threshold, nor the
        relations whose head or tail was taken away."""
        out = []
        for doc in docs:
            spans = [s for s in doc.entities if self.shows(self.spans, s.label, s.score)]
            kept = {s.id for s in spans}
            relations = [r for r in doc.relations if r.head in kept and r.tail in kept
                         and self.shows(self.relations, r.label, r.score)]
            out.append(doc.with_annotations(spans, relations))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"min_precision": self.min_precision, "spans": dict(self.spans), "relations": dict(self.relations)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        return cls(float(data["min_precision"]), dict(data.get("spans") or {}), dict(data.get("relations") or {}))


def per_label(outcomes: Iterable[tuple[str, float, int]], *, min_precision: float) -> dict[str, float | None]:
    """From each predicted region's (label, score, right), the thresholds of ``Thresholds``: one
    per label with ``MIN_EVIDENCE`` regions, and the pooled one; empty without any region."""
    by_label: dict[str, list[tuple[float, int]]] = {}
    for label, score, ok in outcomes:
        by_label.setdefault(label, []).append((score, ok))
        by_label.setdefault(POOLED, []).append((score, ok))
    return {label: threshold([s for s, _ in pairs], [c for _, c in pairs], min_precision=min_precision)
            for label, pairs in by_label.items() if label == POOLED or len(pairs) >= MIN_EVIDENCE}


def relation_outcomes(gold_docs: Iterable[Document], pred_docs: Iterable[Document]) -> list[tuple[str, float, int]]:
    """Each scored predicted relation's label, score and whether the gold has it (the same label
    between regions at the same offsets)."""
    def keyed(doc: Document) -> list[tuple[tuple[int, int, int, int, str], float | None]]:
        spans = {s.id: (s.start, s.end) for s in doc.entities}
        return [((*spans[r.head], *spans[r.tail], r.label), r.score) for r in doc.relations
                if r.head in spans and r.tail in spans]

    gold = {d.id: {key for key, _ in keyed(d)} for d in gold_docs}
    return [(key[-1], float(score), int(key in gold.get(doc.id, ())))
            for doc in pred_docs for key, score in keyed(doc) if score is not None]


def fit_thresholds(gold_docs: Sequence[Document], pred_docs: Sequence[Document], *, min_precision: float) -> Thresholds:
    """The span thresholds reaching ``min_precision`` on ``pred_docs``, cross-validated predictions
    of ``gold_docs``."""
    return Thresholds(min_precision, per_label(labelled_outcomes(gold_docs, pred_docs), min_precision=min_precision))

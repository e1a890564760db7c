"""Precision first (``clinie.evaluation.thresholds``): the least score a region is shown from."""

import json

import pytest

from clinie.core import Document, Relation, Span
from clinie.evaluation.study import precision_first
from clinie.evaluation.thresholds import MIN_EVIDENCE, POOLED, Thresholds, fit_thresholds, per_label, threshold


def test_the_lowest_score_reaching_the_precision_keeps_the_most_recall():
    scores, correct = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0, 0]
    assert threshold(scores, correct, min_precision=1.0) == 0.9
    assert threshold(scores, correct, min_precision=0.75) == 0.7  # 3 of 4: the lowest cut that reaches it
    assert threshold(scores, correct, min_precision=0.55) == 0.6  # 3 of 5 (0.5 would be 3 of 6)
    assert threshold(scores, correct, min_precision=0.0) == 0.5
    assert threshold([0.9, 0.8], [0, 0], min_precision=0.1) is None
    assert threshold([], [], min_precision=0.5) is None


def test_equal_scores_pass_or_fail_together():
    # a cut between the two 0.8s would reach 1.0, but no score can tell them apart
    assert threshold([0.9, 0.8, 0.8], [1, 1, 0], min_precision=1.0) == 0.9


def test_a_precision_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="precision"):
        threshold([0.5], [1], min_precision=1.5)


def test_a_label_with_little_evidence_takes_the_pooled_threshold():
    rare = [("Rare", 0.99, 0)] * (MIN_EVIDENCE - 1)
    common = [("Common", 0.5 + i / 100, int(i >= 10)) for i in range(40)]
    thresholds = per_label(rare + common, min_precision=0.8)
    # 30 of the 37 regions from 0.53 on are right; with the rare ones (all wrong, all 0.99), no cut reaches 0.8
    assert "Rare" not in thresholds and thresholds["Common"] == pytest.approx(0.53)
    assert thresholds[POOLED] is None
    assert Thresholds(0.8, spans=thresholds).apply(
        [_doc([Span.from_text(_doc([]).text, 0, 7, "Rare", score=0.99)])])[0].entities == ()
    assert per_label([], min_precision=0.8) == {}


def _doc(spans, relations=()):
    return Document("d", "aspirin causes bleeding and rash", entities=tuple(spans), relations=tuple(relations))


def test_regions_under_their_threshold_and_their_relations_are_not_shown():
    drug, bleeding, rash = (Span.from_text(_doc([]).text, 0, 7, "Drug", id="T1", score=0.9),
                            Span.from_text(_doc([]).text, 15, 23, "ADE", id="T2", score=0.4),
                            Span.from_text(_doc([]).text, 28, 32, "ADE", id="T3", score=None))
    doc = _doc([drug, bleeding, rash], [Relation("T1", "T2", "causes", score=0.99),
                                       Relation("T1", "T3", "causes", score=0.3)])
    thresholds = Thresholds(0.7, spans={"Drug": 0.8, "ADE": 0.5}, relations={POOLED: 0.5})
    [shown] = thresholds.apply([doc])
    assert [s.id for s in shown.entities] == ["T1", "T3"]  # an unscored region is not judged
    assert shown.relations == ()  # one lost its tail, the other is under its threshold
    assert [s.id for s in Thresholds(0.7, spans={"Drug": None}).apply([doc])[0].entities] == ["T2", "T3"]
    assert Thresholds(0.7).apply([doc]) == [doc]  # nothing estimated: all shown
    assert Thresholds.from_dict(json.loads(json.dumps(thresholds.as_dict()))) == thresholds


def test_thresholds_fitted_on_cross_validated_predictions_are_judged_on_other_documents():
    text = "fever and cough and rash"
    words = [(0, 5), (10, 15), (20, 24)]
    gold = [Document(f"g{i}", text, entities=tuple(Span.from_text(text, a, b, "Sign") for a, b in words[:2]))
            for i in range(8)]
    # right regions score high, the wrong one (rash) low: a threshold between them keeps the right ones
    predicted = [g.with_annotations([Span.from_text(text, a, b, "Sign", score=s)
                                     for (a, b), s in zip(words, (0.9, 0.8, 0.3))]) for g in gold]
    thresholds = fit_thresholds(gold[:4], predicted[:4], min_precision=0.9)
    assert thresholds.spans == {POOLED: 0.8, "Sign": 0.8}
    rows = {row["min_precision"]: row for row in precision_first(gold[4:], predicted[4:], gold[:4], predicted[:4])}
    assert rows[0.0]["wrong_per_100"] == 100.0 and rows[0.0]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows[0.8]["wrong_per_100"] == 0.0 and rows[0.8]["recall"] == 1.0 and rows[0.8]["precision"] == 1.0

"""Span metrics, cross-checked against seqeval on real predictions-like perturbations."""

from __future__ import annotations

import random

import pytest
from seqeval.metrics import classification_report, f1_score

from clinie.core import Document, Span, read_documents, spans_to_bio, tokenize
from clinie.evaluation import evaluate_spans


def test_strict_and_partial_per_label_micro_macro():
    text = "aspirin and warfarin cause bleeding"
    gold = [Document("1", text, (Span.from_text(text, 0, 7, "drug"), Span.from_text(text, 12, 20, "drug"),
                                 Span.from_text(text, 27, 35, "effect")))]
    pred = [Document("1", text, (Span.from_text(text, 0, 7, "drug"), Span.from_text(text, 12, 18, "drug"),
                                 Span.from_text(text, 21, 35, "drug")))]
    scores = evaluate_spans(gold, pred)
    strict, partial = scores["strict"], scores["partial"]
    assert (strict.micro.tp, strict.micro.fp, strict.micro.fn) == (1, 2, 2)
    assert strict.per_label["effect"].f1 == 0 and strict.per_label["drug"].precision == pytest.approx(1 / 3)
    assert (partial.micro.tp, partial.micro.fp, partial.micro.fn) == (2, 1, 1)
    assert strict.macro_f1 == pytest.approx((strict.per_label["drug"].f1 + 0) / 2)


def test_missing_predictions_count_as_nothing_and_unknown_ones_are_refused():
    gold = [Document("1", "x y", (Span.from_text("x y", 0, 1, "L"),))]
    assert evaluate_spans(gold, [])["strict"].micro.fn == 1
    with pytest.raises(ValueError, match="no gold"):
        evaluate_spans(gold, [Document("2", "x")])


def test_strict_f1_agrees_with_seqeval_on_perturbed_ncbi_predictions(data_dir):
    gold = [d for d in read_documents(data_dir / "ncbi_disease/fewshot/chen2023_test_sample200.jsonl")]
    rng = random.Random(0)
    pred = []
    for doc in gold:
        words = tokenize(doc.text)
        spans = []
        for s in doc.entities:
            roll = rng.random()
            if roll < 0.2:
                continue  # missed
            if roll < 0.35:  # boundary error: extend to the next word
                nxt = next((w for w in words if w.start > s.end), None)
                s = Span.from_text(doc.text, s.start, nxt.end if nxt else s.end, s.label)
            spans.append(s)
        if rng.random() < 0.2 and words:  # spurious one-word span
            w = rng.choice(words)
            if not any(w.start < s.end and s.start < w.end for s in spans):
                spans.append(Span.from_text(doc.text, w.start, w.end, "Disease"))
        pred.append(doc.with_annotations(spans))

    def tags(docs):  # gold spans are word-aligned in this corpus, so BIO is lossless
        return [spans_to_bio(tokenize(d.text), d.entities) for d in docs]

    ours = evaluate_spans(gold, pred)["strict"]
    assert ours.micro.f1 == pytest.approx(f1_score(tags(gold), tags(pred)), abs=1e-9)
    report = classification_report(tags(gold), tags(pred), output_dict=True)
    assert ours.per_label["Disease"].recall == pytest.approx(report["Disease"]["recall"])
    assert 0.5 < ours.micro.f1 < 0.95  # the perturbation really changed something

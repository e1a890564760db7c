"""Report figures beyond F1: bootstrap intervals, kinds of errors, confusion, worst documents."""

from __future__ import annotations

import numpy as np

from clinie.core import Document, Span, read_documents
from clinie.evaluation import evaluate_spans
from clinie.evaluation.analysis import (
    NONE,
    bootstrap_f1,
    confusion,
    document_counts,
    error_kinds,
    per_label,
    worst_documents,
)


def shifted(docs: list[Document], every: int = 3) -> list[Document]:
    """Predictions that are gold with every ``every``-th span's end moved one character left."""
    out = []
    n = 0
    for d in docs:
        spans = []
        for s in d.entities:
            n += 1
            spans.append(Span.from_text(d.text, s.start, s.end - 1, s.label) if n % every == 0 and s.end - s.start > 1
                         else s)
        out.append(d.with_annotations(spans))
    return out


def test_per_label_figures_agree_with_the_metrics_and_intervals_hold_them(data_dir):
    gold = list(read_documents(data_dir / "ncbi_disease" / "fewshot" / "chen2023_test_sample200.jsonl"))
    pred = shifted(gold)
    figures = per_label(gold, pred, n=500)
    strict = evaluate_spans(gold, pred)["strict"]
    assert (figures["all"]["f1"] == strict.micro.f1
            and figures["Disease"]["support"] == strict.micro.tp + strict.micro.fn)
    assert figures["all"]["f1_low"] < figures["all"]["f1"] < figures["all"]["f1_high"] < 1
    # more documents, narrower interval
    few = per_label(gold[:20], pred[:20], n=500)["all"]
    assert few["f1_high"] - few["f1_low"] > figures["all"]["f1_high"] - figures["all"]["f1_low"]


def test_bootstrap_is_seeded_and_handles_nothing():
    counts = np.array([[1, 1, 0], [2, 0, 1], [0, 1, 1]], dtype=float)
    assert bootstrap_f1(counts, seed=3) == bootstrap_f1(counts, seed=3)
    assert bootstrap_f1(np.zeros((0, 3))) == (0.0, 0.0)
    assert document_counts([Document("a", "x")], []).tolist() == [[0, 0, 0]]


def test_error_kinds_and_confusion_account_for_every_span():
    text = "Asthma, gout and fever in IBD."
    def s(a, b, label):
        return Span.from_text(text, a, b, label)
    gold = [Document("1", text, (s(0, 6, "Disease"), s(8, 12, "Disease"), s(17, 22, "Symptom"), s(26, 29, "Disease")))]
    pred = [Document("1", text, (s(0, 6, "Disease"), s(8, 11, "Disease"), s(17, 22, "Disease"), s(13, 16, "Disease")))]
    kinds = error_kinds(gold, pred)
    assert kinds == {"exact": 1, "boundary": 1, "label": 1, "label_and_boundary": 0, "missed": 1, "spurious": 1}
    table = confusion(gold, pred)
    assert table == {NONE: {"Disease": 1}, "Disease": {NONE: 1, "Disease": 2}, "Symptom": {"Disease": 1}}
    [worst] = worst_documents(gold, pred)
    assert worst["errors"] == 6 and ("gout", "Disease") in worst["missed"] and ("and", "Disease") in worst["spurious"]
    assert worst_documents(gold, gold) == []

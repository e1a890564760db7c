"""clinie.core: types, tokenization, BIO, chunking, JSONL — on adversarial text too."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings, strategies as st

from clinie.core import (
    Document,
    Relation,
    Span,
    bio_labels,
    bio_to_spans,
    chunk,
    read_documents,
    spans_to_bio,
    split_sentences,
    tokenize,
    write_documents,
)
from harness.helpers import assert_spans_match_text

ADVERSARIAL = ("Pt on aspirin 81mg\r\nq.d.\tBRCA1-associated non-Hodgkin's lymphoma (NHL).  "
               "Café über—test e.g. 5-FU\u00a0x")


def test_span_reads_its_text_from_the_document():
    assert Span.from_text("abc def", 4, 7, "X").text == "def"
    with pytest.raises(ValueError):
        Span.from_text("abc", 2, 2, "X")
    with pytest.raises(ValueError):
        Span.from_text("abc", 1, 9, "X")


def test_tokens_are_their_surface_forms_and_never_whitespace():
    words = tokenize(ADVERSARIAL)
    assert words and all(ADVERSARIAL[w.start:w.end] == w.text and not w.text.isspace() for w in words)
    assert [w.text for w in words][:6] == ["Pt", "on", "aspirin", "81", "mg", "q.d"]
    assert "BRCA1-associated" in [w.text for w in words]
    assert tokenize("") == [] and tokenize(" \r\n\t ") == []


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_tokenize_offsets_hold_for_any_text(text):
    words = tokenize(text)
    assert all(text[w.start:w.end] == w.text for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))


def test_bio_round_trip_and_widening_to_words():
    text = "Familial breast cancer in BRCA1 carriers"
    words = tokenize(text)
    # "reast canc" starts and ends inside words: it is widened to "breast cancer".
    tags = spans_to_bio(words, [Span.from_text(text, 10, 20, "Disease")])
    assert tags == ["O", "B-Disease", "I-Disease", "O", "O", "O"]
    spans = bio_to_spans(text, words, tags, scores=[1, 0.8, 0.6, 1, 1, 1])
    assert [(s.text, s.label) for s in spans] == [("breast cancer", "Disease")]
    assert spans[0].score == pytest.approx(0.7)
    assert bio_labels(["A", "B"]) == ["O", "B-A", "I-A", "B-B", "I-B"]


def test_overlapping_gold_spans_keep_the_longest():
    text = "hereditary breast cancer"
    words = tokenize(text)
    spans = [Span.from_text(text, 11, 17, "Disease"), Span.from_text(text, 0, 24, "Disease"),
             Span.from_text(text, 18, 24, "Other")]
    assert spans_to_bio(words, spans) == ["B-Disease", "I-Disease", "I-Disease"]


def test_broken_bio_still_yields_spans():
    text = "a b c d"
    words = tokenize(text)
    spans = bio_to_spans(text, words, ["I-X", "I-X", "B-Y", "I-X"])
    assert [(s.text, s.label) for s in spans] == [("a b", "X"), ("c", "Y"), ("d", "X")]
    with pytest.raises(ValueError):
        bio_to_spans(text, words, ["O"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-X", "I-X", "B-Y", "I-Y", "junk"]), min_size=1, max_size=12))
def test_bio_to_spans_always_gives_valid_spans(tags):
    text = " ".join(f"w{i}" for i in range(len(tags)))
    spans = bio_to_spans(text, tokenize(text), tags)
    assert_spans_match_text(text, spans)
    assert all(s.label in {"X", "Y"} for s in spans)


def test_sentences_and_chunks_map_back_to_the_note():
    text = "Pain in chest. Started aspirin 81 mg.\r\n\r\nNo allergies.\n- metformin 500 mg"
    sentences = split_sentences(text)
    assert [text[s:e] for s, e in sentences] == [
        "Pain in chest.", "Started aspirin 81 mg.", "No allergies.", "- metformin 500 mg"]
    assert split_sentences("") == [] and split_sentences("  \n ") == []
    assert split_sentences("e.g. the dose was 5 mg. Then") == [(0, 23), (24, 28)]


def test_chunks_of_a_50000_character_note_never_cut_a_word():
    unit = "The patient\twas given 5-FU\r\nand developed neutropenia (grade 3). Dose reduced by 20%. "
    text = (unit * (50_000 // len(unit) + 1))[:50_000]
    words = tokenize(text)
    chunks = chunk(text, max_words=60)
    assert all(e - s > 0 for s, e in chunks)
    assert all(a[1] <= b[0] for a, b in zip(chunks, chunks[1:]))
    # every word is in exactly one chunk and no chunk exceeds the budget
    owners = [sum(s <= w.start and w.end <= e for s, e in chunks) for w in words]
    assert set(owners) == {1}
    assert max(len(tokenize(text[s:e])) for s, e in chunks) <= 60


def test_a_sentence_longer_than_the_budget_is_cut_between_words():
    text = " ".join(f"word{i}" for i in range(25))
    chunks = chunk(text, max_words=10)
    assert [len(tokenize(text[s:e])) for s, e in chunks] == [10, 10, 5]
    with pytest.raises(ValueError):
        chunk(text, 0)


def test_jsonl_round_trip_keeps_offsets_scores_and_relations(tmp_path):
    text = "Warfarin\twith aspirin\r\nincreases bleeding — café"
    doc = Document("d1", text,
                   (Span.from_text(text, 0, 8, "drug", id="e1", score=0.91234),
                    Span.from_text(text, 14, 21, "drug", id="e2")),
                   (Relation("e1", "e2", "effect", 0.5),))
    path = tmp_path / "docs.jsonl"
    assert write_documents([doc], path) == 1
    [back] = list(read_documents(path))
    assert back.text == text and back.relations == doc.relations
    assert [(s.start, s.end, s.text, s.score) for s in back.entities] == [
        (0, 8, "Warfarin", 0.9123), (14, 21, "aspirin", None)]
    assert_spans_match_text(back.text, back.entities)


def test_jsonl_refuses_entities_whose_text_disagrees(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "text": "abc def", "entities": [
        {"id": "T1", "start": 0, "end": 3, "label": "L", "text": "abd"}]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        list(read_documents(path))


@pytest.mark.parametrize("corpus", ["ncbi_disease", "bc5cdr_chem", "ddi"])
def test_shared_corpora_read_and_write_back_identically(corpus, data_dir):
    path = data_dir / corpus / "fewshot" / "chen2023_test_sample200.jsonl"
    docs = list(read_documents(path))
    assert len(docs) == 200
    out = io.StringIO()
    write_documents(docs, out)
    original = [json.loads(line) for line in path.read_text().splitlines()]
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    for o, w in zip(original, written):
        assert (o["text"], o["entities"], o["relations"]) == (w["text"], w["entities"], w["relations"])

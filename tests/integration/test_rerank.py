"""Filter-then-rerank: which cases are hard (pure), and the encoder + LLM together on real data."""

from __future__ import annotations

import numpy as np
import pytest

from clinie.core import LabelSpec, Span, read_documents, split_sentences, tokenize
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.rerank import MAX_MISSED_WORDS, Rerank, negative_mention, triage
from clinie.llm.llamacpp import LlamaCppLLM
from clinie.prompting.entity_mc import generate_prompt, option_texts
from clinie.retrieval import Embedder
from harness import DATA
from harness.helpers import assert_spans_match_text

NCBI = DATA / "ncbi_disease" / "fewshot"
TAGS = ["O", "B-Disease", "I-Disease", "B-Drug", "I-Drug"]


def rows(*distributions: tuple[float, ...]) -> np.ndarray:
    return np.array(distributions, dtype=float)


TEXT = "Ménière\r\ndisease\tand aspirin"  # CRLF, tab, non-ASCII: offsets must still hold
P = rows((.02, .90, .02, .06, 0), (.05, .01, .90, 0, .04), (.97, .01, .01, .01, 0), (.40, .05, 0, .50, .05))


def test_a_band_of_nothing_asks_nothing_and_keeps_the_encoders_spans():
    sure, hard = triage(TEXT, tokenize(TEXT), P, TAGS, band=(0.0, 0.0))
    assert [(s.text, s.label) for s in sure] == [("Ménière\r\ndisease", "Disease"), ("aspirin", "Drug")]
    assert hard == []


def test_spans_inside_the_band_are_asked_with_the_encoders_top_labels():
    sure, hard = triage(TEXT, tokenize(TEXT), P, TAGS, band=(0.0, 0.8))
    assert [s.text for s in sure] == ["Ménière\r\ndisease"]
    [case] = hard
    assert case.span.text == "aspirin" and case.candidates == ("Drug", "Disease") and case.confidence == 0.5
    assert_spans_match_text(TEXT, [*sure, case.span])
    _, [top1] = triage(TEXT, tokenize(TEXT), P, TAGS, band=(0.0, 0.8), top=1)
    assert top1.candidates == ("Drug",)


def test_a_word_tagged_O_without_confidence_is_asked_about_as_a_possibly_missed_mention():
    text = "severe gout flare"
    p = rows((.95, .03, .01, .01, 0), (.55, .40, .02, .03, 0), (.60, .02, .35, .03, 0))
    sure, hard = triage(text, tokenize(text), p, TAGS, band=(0.0, 0.7))
    assert sure == [] and [(h.span.text, h.span.label, h.candidates[0]) for h in hard] == [
        ("gout flare", "Disease", "Disease")]
    assert hard[0].confidence == pytest.approx(0.575)
    assert triage(text, tokenize(text), p, TAGS, band=(0.0, 0.5))[1] == []  # P(O) above the band: sure


def test_a_long_run_of_unsure_words_is_not_a_mention():
    text = " ".join(["word"] * (MAX_MISSED_WORDS + 1))
    p = rows(*[(.5, .1, .4, 0, 0)] * (MAX_MISSED_WORDS + 1))
    assert triage(text, tokenize(text), p, TAGS, band=(0.0, 0.9))[1] == []


def test_negative_demonstrations_are_unannotated_words():
    text = "Familial hypercholesterolemia is rare."
    spans = [Span.from_text(text, 9, 29, "Disease")]
    negative = negative_mention(text, split_sentences(text)[0], spans)
    assert negative.text == "Familial" and not negative.overlaps(spans[0])
    assert negative_mention("an ox", (0, 5), []) is None


def test_the_question_names_each_candidate_and_not_an_entity():
    options = option_texts([LabelSpec("Drug", "a medication"), LabelSpec("Disease")], "aspirin")
    assert options == ['"aspirin" is a Drug: a medication.', '"aspirin" is a Disease.',
                       '"aspirin" is not a Drug or Disease.']
    prompt = generate_prompt("took << aspirin >> daily", options, [("<< gout >> flared", options[1:], 0)])
    assert prompt.count("Options:") == 2 and prompt.endswith("Answer:") and "Answer: A\n" in prompt


@pytest.fixture(scope="module")
def trained():
    train = list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))[:30]
    test = list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))[:6]
    return train, test, EncoderTagger(["Disease"], epochs=4).fit(train)


@pytest.mark.slow
def test_the_llm_decides_only_the_hard_cases_and_each_document_says_what_it_cost(trained):
    train, test, encoder = trained
    llm, embedder = LlamaCppLLM(), Embedder()
    alone = encoder.predict(test)

    nothing = Rerank(encoder, llm, [LabelSpec("Disease")], band=(0.0, 0.0), k=3, embedder=embedder)
    nothing.fit(train, refit_encoder=False)
    assert [d.entities for d in nothing.predict(test)] == [d.entities for d in alone]
    assert nothing.questions.usage.calls == 0

    rerank = Rerank(encoder, llm, [LabelSpec("Disease")], band=(0.0, 1.0), k=3, embedder=embedder)
    rerank.fit(train, refit_encoder=False)
    answers = {d.meta["answer"] for d in rerank.pool.docs}
    assert answers == {0, 1}  # annotated mentions and unannotated words both shown
    predicted = rerank.predict(test)
    for doc, _before in zip(predicted, alone):
        cost = doc.meta["llm"]
        hard = sum(len(triage(doc.text, w, p, encoder.tags, (0.0, 1.0))[1]) for w, p in encoder.predict_words([doc])[0])
        assert cost["questions"] == hard and cost["calls"] + cost["cache_hits"] == hard
        assert 0 <= cost["sentences_to_llm"] <= cost["sentences"] == len(split_sentences(doc.text))
        assert_spans_match_text(doc.text, doc.entities)
        # every span the LLM kept was the encoder's or one it was asked about: nothing invented
        assert all(0 <= s.score <= 1 for s in doc.entities)
    assert sum(d.meta["llm"]["questions"] for d in predicted) > 0
    assert "llm" not in test[0].meta  # the input documents are not touched

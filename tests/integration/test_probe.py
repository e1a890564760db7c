"""The probe: echo features of the embedded Gemma (real model), a head trained on real NCBI sentences;
and filter-then-probe, the probe reading only the sentences a real encoder is unsure of."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clinie.core import Document, read_documents, split_sentences, tokenize
from clinie.evaluation import evaluate_spans
from clinie.extractors.encoder import EncoderTagger, decode
from clinie.extractors.gated import Gated, shift
from clinie.extractors.probe import ProbeTagger
from clinie.llm.hidden import BATCH_SIZE, HiddenStates
from harness import DATA
from harness.helpers import assert_spans_match_text

NCBI = DATA / "ncbi_disease" / "fewshot"


@pytest.fixture(scope="module")
def states() -> HiddenStates:
    return HiddenStates.shared()


@pytest.fixture(scope="module")
def train() -> list[Document]:
    return list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))


@pytest.fixture(scope="module")
def probe(states, train) -> ProbeTagger:
    return ProbeTagger(["Disease"], states, epochs=20).fit(train[:40])


def test_a_word_is_read_with_the_words_after_it(states):
    # A causal LM's state at "breast" has not seen what follows; the echo's second copy has.
    first = [states.words(text, tokenize(text))[0] for text in ("breast cancer runs in families",
                                                                 "breast milk feeds the infant")]
    assert states.layers == (6, 9, 12, 15) and first[0].shape == (states.dim,)
    assert np.abs(first[0] - first[1]).max() > 1e-2
    text = "Ataxia\r\n\ttélangiectasia — ÄTM"
    words = tokenize(text)
    features = states.words(text, words)
    assert features.shape == (len(words), states.dim) and np.isfinite(features).all()
    assert states.words(text, words) is features  # cached: cross-validation asks again per fold
    assert states.words("", []).shape == (0, states.dim)
    assert HiddenStates.shared() is states  # one copy of the model per process


def test_the_probe_learns_spans_that_keep_their_offsets(probe, train):
    held = train[60:100]
    predicted = probe.predict([d.with_annotations(()) for d in held])
    assert evaluate_spans(held, predicted)["strict"].micro.f1 > 0.3  # a head that learnt nothing finds none
    costs = [d.meta["llm"] for d in predicted]  # the sentences read in batched forward passes, nothing generated
    read = sum(c["prompt_tokens"] > 0 for c in costs)
    assert sum(c["calls"] for c in costs) == math.ceil(read / BATCH_SIZE)
    assert read + sum(c["cache_hits"] for c in costs) == len(held)  # a sentence each
    assert all(c["completion_tokens"] == 0 and c["sentences_to_llm"] == c["sentences"] >= 1 for c in costs)
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert all(0 < s.score <= 1 and s.label == "Disease" for s in doc.entities)
    odd = Document("odd", "Fanconi\r\nanaemia;\tataxia-telangiectasia (A-T)… and 乳腺癌 " * 30)
    [doc] = probe.predict([odd])  # long: cut in pieces of whole sentences
    assert_spans_match_text(odd.text, doc.entities)
    [words] = probe.predict_words([odd])
    note = len(probe.states._tokenizer(odd.text).input_ids)
    assert len(words) > 1 and doc.meta["llm"]["prompt_tokens"] < 2.5 * note  # each piece echoes its own text
    assert sum(len(w) for w, _ in words) == len(tokenize(odd.text))
    assert all(p.shape == (len(w), 3) and np.allclose(p.sum(axis=1), 1, atol=1e-5) for w, p in words)


def test_batching_the_sentences_of_a_call_changes_no_prediction(probe, states, train):
    docs = [d.with_annotations(()) for d in train[50:60]]
    states.forget()
    alone = [probe.predict([doc])[0] for doc in docs]  # a forward pass per sentence
    assert all(d.meta["llm"]["calls"] == 1 for d in alone)
    states.forget()
    batched = probe.predict(docs)
    assert sum(d.meta["llm"]["calls"] for d in batched) == math.ceil(len(docs) / BATCH_SIZE)
    assert [[(s.start, s.end, s.label) for s in d.entities] for d in batched] == \
        [[(s.start, s.end, s.label) for s in d.entities] for d in alone]
    def sureness(doc: Document) -> list[float]:  # read from the tag distributions: equal to float rounding
        return [doc.meta["confidence"], *(s.score for s in doc.entities)]

    assert np.allclose([x for d in batched for x in sureness(d)], [x for d in alone for x in sureness(d)], atol=1e-3)


def test_save_and_load_give_the_same_predictions_and_refuse_other_states(probe, states, train, tmp_path):
    probe.save(tmp_path / "probe")
    again = ProbeTagger.load(tmp_path / "probe", states)
    docs = [d.with_annotations(()) for d in train[40:50]]
    assert [d.entities for d in again.predict(docs)] == [d.entities for d in probe.predict(docs)]
    states.layers, saved = (1, 2), states.layers
    try:
        with pytest.raises(ValueError, match="trained on"):
            ProbeTagger.load(tmp_path / "probe", states)
    finally:
        states.layers = saved


def test_training_is_deterministic_and_bad_input_is_refused(states, train):
    a = ProbeTagger(["Disease"], states, epochs=3).fit(train[:10]).predict(train[10:20])
    b = ProbeTagger(["Disease"], states, epochs=3).fit(train[:10]).predict(train[10:20])
    assert [d.entities for d in a] == [d.entities for d in b]
    with pytest.raises(ValueError, match="no documents"):
        ProbeTagger(["Disease"], states).fit([Document("e", "")])
    with pytest.raises(ValueError, match="repeat"):
        ProbeTagger(["Disease", "Disease"], states)
    with pytest.raises(RuntimeError, match="not trained"):
        ProbeTagger(["Disease"], states).predict(train[:1])


@pytest.fixture(scope="module")
def encoder(train) -> EncoderTagger:
    return EncoderTagger(["Disease"]).fit(train[:40])


def test_filter_then_probe_reads_only_the_sentences_the_encoder_is_unsure_of(encoder, probe, train):
    held = [d.with_annotations(()) for d in train[60:80]]
    note = Document("note", "\r\n\t".join(d.text for d in held[:5]))  # one text, several sentences
    docs = [*held, note]
    assert len(split_sentences(note.text)) > 1

    never = Gated(encoder, probe, band=(0.0, 0.0)).predict(docs)
    assert [d.entities for d in never] == [d.entities for d in encoder.predict(docs)]
    assert all(d.meta["llm"]["sentences_to_llm"] == 0 == d.meta["llm"]["calls"] for d in never)
    assert [d.meta["confidence"] for d in never] == [d.meta["confidence"] for d in encoder.predict(docs)]

    gated = Gated(encoder, probe, band=(0.0, 0.9))
    read_in_all = 0
    for doc, out, windows in zip(docs, gated.predict(docs), encoder.predict_words(docs)):
        sentences = split_sentences(doc.text)
        read = [sentences[i] for i in gated.hard_sentences(doc, windows, sentences)]
        assert (out.meta["llm"]["sentences_to_llm"], out.meta["llm"]["sentences"]) == (len(read), len(sentences))
        # the encoder's spans outside the sentences read, the probe's (on each sentence alone) inside
        expected = [s for s in encoder.predict([doc])[0].entities
                    if not any(s.start < b and a < s.end for a, b in read)]
        for a, b in read:
            expected += [shift(s, doc.text, a) for s in probe.predict([Document("part", doc.text[a:b])])[0].entities]
        assert sorted((s.start, s.end, s.label) for s in expected) == [(s.start, s.end, s.label) for s in out.entities]
        assert_spans_match_text(doc.text, out.entities)
        if read:  # how sure the reading is counts the probe's words where the probe read
            parts = [Document("part", doc.text[a:b]) for a, b in read]
            probe_least = min(float(decode(part.text, words, p, probe.tags)[1].min())
                              for part, pieces in zip(parts, probe.predict_words(parts)) for words, p in pieces)
            assert out.meta["confidence"] <= probe_least + 1e-6
        read_in_all += len(read)
    assert 0 < read_in_all < sum(len(split_sentences(d.text)) for d in docs)  # a filter, not all or nothing


def test_filter_then_probe_refuses_models_of_other_labels_and_bands_that_are_not_probabilities(encoder, probe, states):
    with pytest.raises(ValueError, match="probe"):
        Gated(encoder, ProbeTagger(["Chemical"], states))
    with pytest.raises(ValueError, match="band"):
        Gated(encoder, probe, band=(0.5, 1.2))

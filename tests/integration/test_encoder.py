"""The encoder tagger: explicit sub-word aggregation, windowing, real fine-tuning of MiniLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clinie.core import Document, Span, read_documents, spans_to_bio, tokenize
from clinie.embedded import encoder_path
from clinie.evaluation.calibration import auroc
from clinie.extractors import Extractor
from clinie.extractors.encoder import EncoderTagger, Window, aggregate_first, decode, postprocess
from harness import DATA
from harness.helpers import assert_spans_match_text

NCBI = DATA / "ncbi_disease" / "fewshot"
TAGS = ["O", "B-Disease", "I-Disease"]

# CRLF, tab, accents, an em dash, a zero-width space and a control character (both of which
# MiniLM's tokenizer drops entirely, so they must still get a tag).
ODD = "Pt with breast\tcancer\r\nand ataxia-telangiectasia (A-T) — café über Müller-Syndrom \u200b \x07 ok."


def long_note(sentences: list[str], n_chars: int = 50_000) -> str:
    """The sentences over and over, with CRLFs, tabs, blank lines and accents between them."""
    unit = "\r\n\t".join(sentences) + " Café-au-lait spots — no diabetes.\r\n\r\n"
    return (unit * (n_chars // len(unit) + 1))[:n_chars]


@pytest.fixture(scope="module")
def train() -> list[Document]:
    return list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))[:20]


def test_first_subword_aggregation_ignores_later_subwords_and_specials():
    probs = np.array([[0.9, 0.1, 0.0],   # [CLS]
                      [0.1, 0.8, 0.1],   # "neuro" -> word 0
                      [0.9, 0.0, 0.1],   # "##blast" (ignored)
                      [0.2, 0.1, 0.7],   # "oma" -> word 1
                      [1.0, 0.0, 0.0]])  # [SEP]
    assert aggregate_first(probs, [None, 0, 0, 1, None], 2).tolist() == [[0.1, 0.8, 0.1], [0.2, 0.1, 0.7]]
    with pytest.raises(ValueError, match="no sub-word"):
        aggregate_first(probs, [None, 0, 0, 0, None], 2)


def test_postprocess_tags_each_word_by_its_first_subword():
    text = "Familial adenomatous polyposis and colonic\tcarcinoma ."
    words = tokenize(text)  # Familial adenomatous polyposis and colonic carcinoma .
    word_ids = [None, 0, 1, 1, 1, 2, 2, 3, 4, 5, 5, 6, None]
    rows = {  # the first sub-word of each word decides; the later ones say the opposite
        1: [0.1, 0.7, 0.2], 2: [0.1, 0.1, 0.8], 3: [0.9, 0.05, 0.05], 4: [0.9, 0.05, 0.05],
        5: [0.2, 0.1, 0.7], 6: [0.9, 0.1, 0.0], 7: [0.6, 0.3, 0.1], 8: [0.3, 0.6, 0.1],
        9: [0.1, 0.0, 0.9], 10: [1.0, 0.0, 0.0], 11: [0.99, 0.01, 0.0]}
    probs = np.array([rows.get(i, [1.0, 0.0, 0.0]) for i in range(len(word_ids))])
    window = Window(0, words, list(range(len(word_ids))), word_ids)
    spans, decoded = postprocess(text, window, probs, TAGS)
    assert_spans_match_text(text, spans)
    assert [(s.text, s.label) for s in spans] == [
        ("Familial adenomatous polyposis", "Disease"), ("colonic\tcarcinoma", "Disease")]
    assert spans[0].score == pytest.approx((0.7 + 0.8 + 0.7) / 3)
    assert spans[1].score == pytest.approx((0.6 + 0.9) / 2)
    assert decoded.tolist() == pytest.approx([0.7, 0.8, 0.7, 0.6, 0.6, 0.9, 0.99])  # each word's, "O" included


def test_windows_cover_every_word_of_a_long_note_exactly_once(train):
    text = long_note([d.text for d in train])
    tagger = EncoderTagger(["Disease"], max_words_per_chunk=40, max_subwords=32)
    windows = tagger._windows([Document("d", text)])
    assert [(w.start, w.end) for x in windows for w in x.words] == [(w.start, w.end) for w in tokenize(text)]
    assert max(len(x.input_ids) for x in windows) <= 32
    for x in windows:  # every word keeps its first sub-word inside its window
        assert sorted({i for i in x.word_ids if i is not None}) == list(range(len(x.words)))


def test_a_chunk_longer_than_the_encoder_is_windowed_between_words():
    # No sentence boundary and a huge chunk budget: only the encoder's 512 sub-words cut it.
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"  # 17 MiniLM sub-words
    text = " ".join([word] * 300) + " end"
    tagger = EncoderTagger(["Disease"], max_words_per_chunk=100_000)
    windows = tagger._windows([Document("d", text), Document("e", ODD)])
    assert [(x.doc_index, len(x.words), len(x.input_ids)) for x in windows] == [
        *[(0, 30, 512)] * 10, (0, 1, 3), (1, len(tokenize(ODD)), 32)]
    assert [(w.start, w.end) for x in windows[:-1] for w in x.words] == [(w.start, w.end) for w in tokenize(text)]
    assert sorted({i for i in windows[-1].word_ids if i is not None}) == list(range(len(tokenize(ODD))))
    # One word longer than a whole window goes alone and keeps its first sub-words.
    small = EncoderTagger(["Disease"], max_subwords=16)._windows([Document("d", f"a {word} b")])
    assert [([w.text for w in x.words], len(x.input_ids)) for x in small] == [(["a"], 3), ([word], 16), (["b"], 3)]


def test_default_encoder_is_the_packaged_minilm():
    path = encoder_path()
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    tagger = EncoderTagger(["Disease", "Chemical"])
    assert isinstance(tagger, Extractor)
    assert tagger.base_model == str(path) and tagger.labels == ("Disease", "Chemical")
    assert tagger.tags == ["O", "B-Disease", "I-Disease", "B-Chemical", "I-Chemical"]


def test_bad_input_is_refused_clearly(tmp_path):
    tagger = EncoderTagger(["Disease"])
    with pytest.raises(RuntimeError, match="not trained"):
        tagger.predict([Document("1", "x")])
    with pytest.raises(RuntimeError, match="not trained"):
        tagger.save(tmp_path)
    with pytest.raises(ValueError, match="at least one label"):
        EncoderTagger([])
    with pytest.raises(ValueError, match="repeat"):
        EncoderTagger(["Disease", "Disease"])
    with pytest.raises(ValueError, match="no documents"):
        tagger.fit([])
    with pytest.raises(ValueError, match="no documents"):
        tagger.fit([Document("1", "")])


@pytest.fixture(scope="module")
def trained(train) -> EncoderTagger:
    with_empty = [*train, Document("empty", "")]  # skipped, not an error
    return EncoderTagger(["Disease"], epochs=15, learning_rate=3e-4, batch_size=4, seed=1).fit(with_empty)


@pytest.mark.slow
def test_fine_tuning_learns_the_training_spans(trained, train):
    predicted = trained.predict(train)
    gold = {(d.id, s.start, s.end, s.label) for d in train for s in d.entities}
    found = {(d.id, s.start, s.end, s.label) for d in predicted for s in d.entities}
    assert len(gold) >= 20
    assert len(gold & found) >= 0.8 * len(gold), f"recovered {len(gold & found)} of {len(gold)}"
    assert len(gold & found) >= 0.8 * len(found), f"{len(found - gold)} spurious spans"
    assert trained.n_train_docs == 20


@pytest.mark.slow
def test_predictions_keep_offsets_on_adversarial_text(trained, train):
    texts = ["", "   \r\n\t ", ODD, long_note([d.text for d in train])]
    predicted = trained.predict([Document(str(i), t) for i, t in enumerate(texts)], batch_size=16)
    assert [(d.id, d.text) for d in predicted] == [(str(i), t) for i, t in enumerate(texts)]
    assert predicted[0].entities == () and predicted[1].entities == ()
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert all(s.label == "Disease" and 0 < s.score <= 1 for s in doc.entities)
        assert [s.id for s in doc.entities] == [f"T{i}" for i in range(1, len(doc.entities) + 1)]
        assert all(a.end <= b.start for a, b in zip(doc.entities, doc.entities[1:]))  # sorted, disjoint
    assert predicted[3].entities[-1].start > 45_000  # the whole note was read, not its first window


@pytest.mark.slow
def test_predict_drops_gold_and_keeps_only_schema_labels(trained, train):
    doc = train[0]
    noisy = doc.with_annotations([*doc.entities, Span.from_text(doc.text, 0, 1, "Chemical")])
    (predicted,) = trained.predict([noisy])
    assert {s.label for s in predicted.entities} <= {"Disease"}
    assert all(s.id.startswith("T") and s.score is not None for s in predicted.entities)


@pytest.mark.slow
def test_the_task_confidence_is_the_least_sure_word_and_ranks_wrong_readings_first(trained):
    test = list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))
    blank = [d.with_annotations(()) for d in test]
    predicted = trained.predict(blank)
    for doc, windows in zip(predicted, trained.predict_words(blank)):
        least_sure = min(float(decode(doc.text, words, p, trained.tags)[1].min()) for words, p in windows)
        assert doc.meta["confidence"] == pytest.approx(least_sure, abs=1e-6)
        assert all(doc.meta["confidence"] <= s.score + 1e-6 for s in doc.entities)  # "O" words count too
    assert any(not d.entities for d in predicted)  # a reading with no span is scored as well
    right = [int({(s.start, s.end) for s in g.entities} == {(s.start, s.end) for s in p.entities})
             for g, p in zip(test, predicted)]
    assert 0 < sum(right) < len(right)
    assert auroc([d.meta["confidence"] for d in predicted], right) > 0.6  # sorting ascending finds the wrong first


@pytest.mark.slow
def test_save_and_load_give_identical_predictions(trained, tmp_path):
    test = list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))[:30]
    trained.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "clinie.json").read_text())
    assert meta["labels"] == ["Disease"] and meta["tags"] == TAGS and meta["n_train_docs"] == 20
    assert meta["hyperparameters"]["epochs"] == 15 and meta["clinie_version"] and meta["created_at"]
    loaded = EncoderTagger.load(tmp_path / "m")
    assert loaded.labels == ("Disease",) and loaded.base_model == trained.base_model
    expected = trained.predict(test)
    assert sum(len(d.entities) for d in expected) > 0
    assert loaded.predict(test) == expected  # spans, ids and scores


@pytest.mark.slow
def test_fine_tuning_is_deterministic_given_the_seed(train):
    def weights(seed: int) -> np.ndarray:
        tagger = EncoderTagger(["Disease"], epochs=1, batch_size=4, seed=seed).fit(train[:8])
        return tagger._model.classifier.weight.detach().numpy().copy()

    first = weights(7)
    assert np.array_equal(first, weights(7))
    assert not np.array_equal(first, weights(8))


def test_soft_targets_are_each_words_distribution_on_its_first_subword(train):
    tagger = EncoderTagger(["Disease"])
    docs = train[:6]
    one_hot = np.eye(len(tagger.tags), dtype=np.float32)
    index = {tag: i for i, tag in enumerate(tagger.tags)}
    # the spans said as distributions are the spans themselves
    said = [{w.start: one_hot[index[tag]] for w, tag in zip(tokenize(d.text), spans_to_bio(tokenize(d.text),
                                                                                            d.entities))}
            for d in docs]
    for (window, hard), (same, soft) in zip(tagger._examples(docs), tagger._examples(docs, said), strict=True):
        assert window == same and np.array_equal(hard, soft)
    # a teacher's doubt stays a doubt: every word's row, on its first sub-word only
    doubt = np.array([0.5, 0.3, 0.2], dtype=np.float32)
    [(window, rows)] = tagger._examples([Document("d", "neuroblastoma in kids")], [dict.fromkeys((0, 14, 17), doubt)])
    firsts = {window.word_ids.index(w) for w in range(3)}
    assert all(np.array_equal(rows[n], doubt if n in firsts else np.zeros(3)) for n in range(len(rows)))
    with pytest.raises(ValueError, match="soft targets"):
        tagger.fit(docs, taught=docs, soft=said[:2])


@pytest.mark.slow
def test_the_loss_on_one_hot_targets_is_the_token_classifiers_own(train):
    import torch

    tagger = EncoderTagger(["Disease"], max_steps=1, seed=3).fit(train[:4])
    examples = tagger._examples(train[:4])
    width = max(len(w.input_ids) for w, _ in examples)
    labels = torch.full((len(examples), width), -100)
    for i, (_, rows) in enumerate(examples):
        learnt = rows.sum(axis=1) > 0
        labels[i, : len(rows)] = torch.where(torch.from_numpy(learnt), torch.from_numpy(rows.argmax(axis=1)), -100)
    with torch.no_grad():
        own = tagger._model(**tagger._batch([w for w, _ in examples]), labels=labels).loss
        assert torch.isclose(tagger._loss(examples), own, rtol=1e-5)


def test_a_small_training_set_gets_epochs_enough_for_a_hundred_steps_unless_epochs_are_given():
    tagger = EncoderTagger(["Disease"])  # batch 8
    assert [tagger._epochs(n) for n in (100, 80, 16, 5)] == [20, 20, 50, 100]
    assert EncoderTagger(["Disease"], epochs=3)._epochs(5) == 3

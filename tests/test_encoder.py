"""The encoder tagger: explicit sub-word aggregation, windowing, real fine-tuning of MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clinie.core import Document, read_documents, tokenize
from clinie.evaluation import evaluate_spans
from clinie.extractors.encoder import EncoderTagger, aggregate_first, default_encoder_path
from helpers import assert_spans_match_text

NCBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ncbi_disease" / "fewshot"


def test_first_subword_aggregation_ignores_later_subwords_and_specials():
    probs = np.array([[0.9, 0.1, 0.0],   # [CLS]
                      [0.1, 0.8, 0.1],   # "neuro" -> word 0
                      [0.9, 0.0, 0.1],   # "##blast" (ignored)
                      [0.2, 0.1, 0.7],   # "oma" -> word 1
                      [1.0, 0.0, 0.0]])  # [SEP]
    words = aggregate_first(probs, [None, 0, 0, 1, None], 2)
    assert words.tolist() == [[0.1, 0.8, 0.1], [0.2, 0.1, 0.7]]
    with pytest.raises(ValueError, match="no sub-word"):
        aggregate_first(probs, [None, 0, 0, 0, None], 2)


def test_windows_cover_every_word_of_a_long_note_exactly_once():
    tagger = EncoderTagger(["Disease"], max_words_per_chunk=40, max_subwords=32)
    unit = "Patient\twith hereditary non-polyposis colorectal cancer (HNPCC)\r\nand café-au-lait spots. "
    text = (unit * 600)[:50_000]
    windows = tagger._windows(0, Document("d", text))
    covered = [(w.start, w.end) for window in windows for w in window.words]
    assert covered == [(w.start, w.end) for w in tokenize(text)]
    assert max(len(w.input_ids) for w in windows) <= 32
    for window in windows:  # every word keeps its first sub-word inside its window
        assert sorted({i for i in window.word_ids if i is not None}) == list(range(len(window.words)))


def test_default_encoder_is_the_packaged_minilm():
    path = default_encoder_path()
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()


def test_untrained_tagger_refuses_to_predict_or_save(tmp_path):
    tagger = EncoderTagger(["Disease"])
    with pytest.raises(RuntimeError):
        tagger.predict([Document("1", "x")])
    with pytest.raises(RuntimeError):
        tagger.save(tmp_path)
    with pytest.raises(ValueError):
        EncoderTagger([])
    with pytest.raises(ValueError):
        tagger.fit([Document("1", "")])


@pytest.fixture(scope="module")
def trained():
    train = list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))[:30]
    return EncoderTagger(["Disease"], epochs=15, learning_rate=3e-4, seed=1).fit(train), train


@pytest.mark.slow
def test_fine_tuning_learns_the_training_spans(trained):
    tagger, train = trained
    scores = evaluate_spans(train, tagger.predict(train))["strict"]
    assert scores.micro.f1 > 0.7, scores.as_dict()


@pytest.mark.slow
def test_predictions_keep_offsets_on_adversarial_text(trained):
    tagger, _ = trained
    texts = ["", "   \r\n\t ",
             "Pt with breast\tcancer\r\nand ataxia-telangiectasia (A-T) — café über Müller-Syndrom.",
             ("Hereditary breast and ovarian cancer syndrome.\r\n\tNo diabetes. " * 800)[:50_000]]
    predicted = tagger.predict([Document(str(i), t) for i, t in enumerate(texts)])
    assert [d.id for d in predicted] == ["0", "1", "2", "3"]
    assert predicted[0].entities == () and predicted[1].entities == ()
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert all(s.label == "Disease" and 0 <= s.score <= 1 for s in doc.entities)
        assert [s.id for s in doc.entities] == [f"T{i}" for i in range(1, len(doc.entities) + 1)]
    assert len(predicted[3].entities) > 100  # the whole note was read, not its first window


@pytest.mark.slow
def test_save_and_load_give_identical_predictions(trained, tmp_path):
    tagger, _ = trained
    test = list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))[:20]
    tagger.save(tmp_path / "m")
    loaded = EncoderTagger.load(tmp_path / "m")
    assert loaded.labels == ("Disease",) and loaded.n_train_docs == 30
    assert loaded.predict(test) == tagger.predict(test)

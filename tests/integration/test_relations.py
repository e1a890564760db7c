"""Relations: candidate pairs, type constraints, marking, the multiple-choice prompt, relation
metrics, and both relation extractors on real DDI sentences (MiniLM fine-tuned; Gemma in
llama.cpp in-process and behind llama.cpp's OpenAI-compatible server)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from clinie.core import NO_RELATION, Document, Relation, Span, read_documents
from clinie.embedded import llm_gguf
from clinie.evaluation import evaluate_relations
from clinie.extractors.finetune import annotated_repeats
from clinie.extractors.relation_classifier import RelationClassifier, Scored
from clinie.extractors.relation_llm import LLMRelationExtractor
from clinie.labelstudio import LabelConfigError, parse_label_config
from clinie.llm.llamacpp import LlamaCppLLM
from clinie.llm.openai_compat import OpenAICompatibleLLM
from clinie.prompting.choice import grammar, parse_response
from clinie.prompting.relation_mc import generate_prompt, option_texts
from clinie.relations import Pair, PairTypes, candidate_pairs, labelled_pairs, mark, unlisted_pairs
from clinie.relations.priors import Calibration, adjust_to_priors, estimate_priors, fit_calibration, label_frequencies
from clinie.retrieval import Embedder
from harness import DATA, ROOT
from harness.backend_server import LlamaServer
from harness.helpers import assert_relations_join_spans, assert_spans_match_text

DDI = DATA / "ddi"
SPECS = parse_label_config((ROOT / "label_configs" / "drug_interactions.xml").read_text()).relation_labels
MEDICATION = parse_label_config((ROOT / "label_configs" / "medication_attributes.xml").read_text()).relation_labels


def note() -> Document:
    text = "Lasix\t40 mg PO daily.\r\nAspirin 81 mg for pain.  Next sentence: heparin."
    spans = [Span.from_text(text, *where, id=f"s{n}") for n, where in enumerate([
        (0, 5, "Medication"), (6, 11, "Dosage"), (12, 14, "Route"), (15, 20, "Frequency"),
        (23, 30, "Medication"), (31, 36, "Dosage"), (41, 45, "Reason"), (63, 70, "Medication")])]
    assert_spans_match_text(text, spans)
    return Document("n", text, tuple(spans), (Relation("s0", "s1", "has_dosage"), Relation("s0", "s2", "has_route"),
                                              Relation("s4", "s5", "has_dosage")))


# --- candidates ---------------------------------------------------------------------------


def test_declared_types_orient_and_prune_pairs_within_a_sentence():
    pairs = candidate_pairs(note(), PairTypes(MEDICATION))
    got = {(p.head.text, p.tail.text, p.labels) for p in pairs}
    assert ("Lasix", "40 mg", ("has_dosage",)) in got and ("Aspirin", "pain", ("has_reason",)) in got
    assert all(p.head.label == "Medication" for p in pairs)  # declared heads, whatever the text order
    assert not any({p.head.text, p.tail.text} == {"Lasix", "81 mg"} for p in pairs)  # another sentence
    assert not any(p.tail.text == "heparin" or p.head.text == "heparin" for p in pairs)  # nothing to join in its own
    wider = candidate_pairs(note(), PairTypes(MEDICATION), window=2)
    assert ("Lasix", "81 mg", ("has_dosage",)) in {(p.head.text, p.tail.text, p.labels) for p in wider}


def test_a_dosage_before_its_medication_is_still_the_tail():
    text = "Give 5 mg of warfarin."
    doc = Document("d", text, (Span.from_text(text, 5, 9, "Dosage", "d"),
                               Span.from_text(text, 13, 21, "Medication", "m")))
    [pair] = candidate_pairs(doc, PairTypes(MEDICATION))
    assert (pair.head.text, pair.tail.text, pair.labels) == ("warfarin", "5 mg", ("has_dosage",))


def test_undeclared_types_are_learned_from_annotations_and_run_in_text_order():
    text = "Aspirin with warfarin and antacids and MPTP."
    spans = (Span.from_text(text, 0, 7, "drug", "a"), Span.from_text(text, 13, 21, "drug", "w"),
             Span.from_text(text, 26, 34, "group", "g"), Span.from_text(text, 39, 43, "drug_n", "n"))
    doc = Document("d", text, spans, (Relation("w", "a", "effect"), Relation("a", "g", "mechanism")))
    assert len(candidate_pairs(doc, PairTypes(SPECS))) == 6  # nothing seen: every pair, each once
    types = PairTypes.learn(SPECS, [doc])
    pairs = {(p.head.id, p.tail.id): p.labels for p in candidate_pairs(doc, types)}
    # effect was seen between drugs only, mechanism between a drug and a group; advise and int
    # were never seen, so any pair may still carry them
    assert pairs[("a", "w")] == ("effect", "advise", "int") and pairs[("a", "g")] == ("mechanism", "advise", "int")
    assert pairs[("a", "n")] == ("advise", "int")
    labelled = {(p.head.id, p.tail.id): label for p, label in labelled_pairs(doc, types)}
    assert labelled[("a", "w")] == "effect"  # drawn right to left, matched in text order
    assert labelled[("w", "g")] == NO_RELATION
    assert PairTypes.from_dict(SPECS, types.as_dict()).as_dict() == types.as_dict()


def test_listed_pairs_are_the_only_examples_of_a_pair_file():
    docs = list(read_documents(DDI / "fewshot" / "gutierrez_train100_balanced_seed42.jsonl"))
    listed = [labelled_pairs(d, PairTypes(SPECS), listed=True) for d in docs]
    assert all(len(pairs) == 1 for pairs in listed)
    labels = [label for pairs in listed for _, label in pairs]
    assert (labels.count(NO_RELATION) == 20
            and all(labels.count(t) == 20 for t in ("advise", "effect", "int", "mechanism")))
    exhaustive = labelled_pairs(docs[0], PairTypes(SPECS))
    assert len(exhaustive) >= 1


def test_unlisted_pairs_are_every_candidate_no_row_of_a_pair_file_lists():
    docs = list(read_documents(DDI / "fewshot" / "gutierrez_train100_balanced_seed42.jsonl"))
    types = PairTypes.learn(SPECS, docs)
    unlisted = unlisted_pairs(docs, types)
    texts = {d.text for d in docs}
    assert {doc.text for doc, _ in unlisted} <= texts and len({doc.id for doc, _ in unlisted}) <= len(texts)
    listed = {(d.text, frozenset(((p.head.start, p.head.end), (p.tail.start, p.tail.end))))
              for d in docs for p, _ in labelled_pairs(d, types, listed=True)}
    every = {(d.text, frozenset(((p.head.start, p.head.end), (p.tail.start, p.tail.end))))
             for d in {d.text: d for d in docs}.values() for p in candidate_pairs(d, types)}
    got = [(doc.text, frozenset(((p.head.start, p.head.end), (p.tail.start, p.tail.end)))) for doc, p in unlisted]
    assert len(got) == len(set(got)) and set(got) == every - listed and len(got) > 10 * len(docs)
    with pytest.raises(ValueError, match="exhaustive"):
        RelationClassifier(SPECS).fit(docs, negatives=10)
    with pytest.raises(ValueError, match="a row per pair and a column per"):  # a teacher of other classes
        RelationClassifier(SPECS).fit(docs, listed=True, taught=[Scored(docs[0], unlisted[:2], np.full((2, 3), 1 / 3))])


@given(st.text(alphabet=st.sampled_from("ab \t\r\n.é"), min_size=4, max_size=40), st.data())
def test_marking_keeps_the_mentions_whatever_their_order(text, data):
    cut = sorted(data.draw(st.sets(st.integers(0, len(text)), min_size=4, max_size=4)))
    first, second = (text[cut[0]:cut[1]], text[cut[2]:cut[3]])
    assume(first.strip() and second.strip())
    a, b = Span.from_text(text, cut[0], cut[1], "x"), Span.from_text(text, cut[2], cut[3], "y")
    head, tail = (b, a) if data.draw(st.booleans()) else (a, b)
    marked = mark(text, Pair(head, tail, ()))
    for open_, close, span in (("[E1]", "[/E1]", head), ("[E2]", "[/E2]", tail)):
        assert marked.count(open_) == marked.count(close) == 1
        assert marked[marked.index(open_) + len(open_) : marked.index(close)].split() == span.text.split()


# --- multiple choice ----------------------------------------------------------------------


def test_options_are_the_allowed_relations_and_none_of_these():
    options = option_texts(SPECS, ("effect", "advise"), "aspirin", "warfarin")
    assert len(options) == 3 and options[-1].startswith("None of these")
    assert "aspirin" in options[0] and "warfarin" in options[0]
    assert options[0].startswith("aspirin and warfarin interact, and")  # effect's template, in spec order
    prompt = generate_prompt("<< aspirin >> and << warfarin >>", options, [("<< a >> x << b >>", options, 2)])
    assert prompt.endswith("Answer:") and "Answer: C\n" in prompt and prompt.count("Options:") == 2
    assert grammar(3) == 'root ::= " A" | " B" | " C"'


@pytest.mark.parametrize("answer, expected", [
    (" A", 0), ("B.", 1), ("(c) none", 2), ("Answer: B", 1), ("option a", 0), ("\n\nC)", 2),
    ("D", None), ("I think it is A", None), ("", None), ("none of these", None), ("Bleeding", None),
])
def test_parsing_an_answer_never_guesses(answer, expected):
    assert parse_response(answer, 3) == expected


def test_a_config_naming_unknown_span_labels_or_a_bad_template_is_refused():
    config = ('<View><Labels name="l" toName="t"><Label value="Medication"/></Labels>'
              '<Relations><Relation value="r" {attrs}/></Relations><Text name="t" value="$text"/></View>')
    with pytest.raises(LabelConfigError, match="Dosage"):
        parse_label_config(config.format(attrs='clinie-head="Medication" clinie-tail="Dosage"'))
    with pytest.raises(LabelConfigError, match="clinie-template"):
        parse_label_config(config.format(attrs='clinie-template="{head} only"'))
    [spec] = parse_label_config(config.format(attrs='clinie-head=" Medication, "')).relation_labels
    assert spec.heads == ("Medication",) and spec.tails == ()


# --- class priors -------------------------------------------------------------------------


def test_em_recovers_the_priors_of_unlabelled_pairs_from_a_balanced_classifier():
    # a calibrated classifier learnt on a balanced sample (1/3 each) meets pairs that are 80 %
    # negative: its posteriors, exact by Bayes' rule, over-predict relations until the prior is adapted
    rng = np.random.default_rng(0)
    true_priors, trained = np.array([0.8, 0.15, 0.05]), np.full(3, 1 / 3)
    classes = rng.choice(3, size=4000, p=true_priors)
    means = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    x = means[classes] + rng.normal(size=(4000, 2))
    likelihood = np.exp(-0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1))
    posteriors = likelihood * trained / (likelihood * trained).sum(1, keepdims=True)
    assert (posteriors.argmax(1) != 0).mean() > 0.35  # as trained: twice the 20 % that are relations
    priors = estimate_priors(posteriors, trained)
    assert np.allclose(priors, true_priors, atol=0.03) and np.isclose(priors.sum(), 1)
    adapted = adjust_to_priors(posteriors, trained, priors)
    assert (adapted.argmax(1) == classes).mean() > (posteriors.argmax(1) == classes).mean()
    assert estimate_priors(np.zeros((0, 3)), trained).tolist() == trained.tolist()  # no pairs: as trained


def test_adapting_priors_keeps_masked_labels_out_and_unseen_labels_as_they_are():
    trained = label_frequencies(["false", "effect", "false", "effect"], ("false", "effect", "int"))
    assert trained.tolist() == [0.5, 0.5, 0.0]
    posteriors = np.array([[0.5, 0.5, 0.0], [0.2, 0.0, 0.8]])  # pair 2 may not be an effect
    assert np.allclose(adjust_to_priors(posteriors, trained, trained), posteriors)  # same priors: unchanged
    adapted = adjust_to_priors(posteriors, trained, np.array([0.9, 0.1, 0.0]))
    assert np.allclose(adapted.sum(1), 1) and adapted[1, 1] == 0
    assert np.allclose(adapted[0], [0.9, 0.1, 0.0])
    assert adapted[1, 0] > 0.2 and adapted[1, 2] > 0  # int, never trained, is weighted 1: not erased



def test_calibration_lets_em_find_the_priors_an_overconfident_classifier_hides():
    # the same pairs, seen by a classifier sure of every answer (posteriors sharpened 8-fold): EM
    # then stays near the share it predicts; calibrated on held-out labelled pairs, it finds the priors
    rng = np.random.default_rng(1)
    trained = np.full(3, 1 / 3)
    means = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])

    def pairs(priors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        classes = rng.choice(3, size=n, p=priors)
        x = means[classes] + rng.normal(size=(n, 2))
        sharp = np.exp(-4.0 * ((x[:, None, :] - means[None]) ** 2).sum(-1))
        return sharp / sharp.sum(1, keepdims=True), classes

    held_out, labels = pairs(trained, 600)  # cross-validation folds of the balanced training sample
    calibration = fit_calibration(held_out, labels)
    assert 0 < calibration.scale < 0.3
    posteriors, _ = pairs(np.array([0.8, 0.15, 0.05]), 4000)
    assert estimate_priors(posteriors, trained)[0] < 0.75
    assert np.allclose(estimate_priors(calibration.apply(posteriors), trained), [0.8, 0.15, 0.05], atol=0.04)
    masked = np.array([[0.3, 0.0, 0.7]])
    assert calibration.apply(masked)[0, 1] == 0 and Calibration().apply(masked).tolist() == masked.tolist()
    assert fit_calibration(np.zeros((0, 3)), []) == Calibration()

# --- metrics ------------------------------------------------------------------------------


def test_relation_metrics_need_exact_spans_and_judge_listed_pairs_only():
    doc = note()
    moved = Span.from_text(doc.text, 0, 4, "Medication", "s0")  # "Lasi": a boundary error
    pred = [doc.with_annotations((moved, *doc.entities[1:]),
                                 (Relation("s0", "s1", "has_dosage"), Relation("s4", "s5", "has_dosage"),
                                  Relation("s4", "s6", "has_reason")))]
    strict = evaluate_relations([doc], pred)["strict"]
    assert (strict.micro.tp, strict.micro.fp, strict.micro.fn) == (1, 2, 2)
    assert strict.per_label["has_dosage"].tp == 1 and strict.per_label["has_route"].fn == 1
    with pytest.raises(ValueError, match="span id"):
        evaluate_relations([doc], [doc.with_annotations(doc.entities, (Relation("s0", "zz", "has_route"),))])


# --- extractors ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddi():
    train = list(read_documents(DDI / "fewshot" / "gutierrez_train100_balanced_seed42.jsonl"))
    test = list(read_documents(DDI / "fewshot" / "chen2023_test_sample200.jsonl"))
    return train, test


@pytest.mark.heavy
@pytest.mark.slow
def test_the_encoder_classifier_learns_pairs_and_round_trips(ddi, tmp_path):
    train, test = ddi
    classifier = RelationClassifier(SPECS, epochs=4).fit(train, listed=True)
    assert classifier.n_train_pairs == 100
    docs = [d.with_annotations(d.entities) for d in test[:20]]
    predicted = classifier.predict(docs)
    for doc in predicted:
        assert_relations_join_spans(doc)
        assert all(r.label in classifier.labels and 0 < r.score <= 1 for r in doc.relations)
    assert sum(len(d.relations) for d in predicted) > 0
    # listed pairs, 20 per label: predict labels as trained; EM estimates the pairs' priors
    assert classifier.listed and np.allclose(classifier.train_priors, 0.2)
    scored = classifier.score(docs)
    assert [d.relations for d in classifier.label(scored)] == [d.relations for d in predicted]
    assert [(r.label, r.score) for r in predicted[0].relations] == \
        [c for c in classifier.classify(docs[0], scored[0].pairs) if c[0] != NO_RELATION]
    priors = classifier.pair_priors(scored)
    assert np.isclose(priors.sum(), 1) and len(classifier.label(scored, priors)) == len(docs)
    again = RelationClassifier.load(classifier.save(tmp_path / "relations")).predict(docs)
    assert [[(r.head, r.tail, r.label) for r in d.relations] for d in again] == \
        [[(r.head, r.tail, r.label) for r in d.relations] for d in predicted]
    # a student: the listed pairs, and the pairs of other sentences as the classifier reads them
    unannotated = classifier.score([d.with_annotations(d.entities) for d in test[20:40]])  # relations dropped
    read = sum(len(s.pairs) for s in unannotated)
    student = RelationClassifier(SPECS, epochs=1).fit(train, listed=True, taught=unannotated)
    assert (student.n_train_pairs, student.n_negative_pairs, student.n_taught_pairs) == (100, 0, read) and read >= 20
    expected = np.mean([*[np.eye(5)[c] for c in range(5) for _ in range(20)] * annotated_repeats(100, read),
                        *[row for s in unannotated for row in s.posteriors]], axis=0)
    assert np.allclose(student.train_priors, expected)  # the teacher's doubts count as they were learnt
    assert RelationClassifier.load(student.save(tmp_path / "student")).n_taught_pairs == read
    # a 50,000-character note with a drug pair every 200 sentences: pairs only within a sentence
    text = "Aspirin increases warfarin levels. " * 1400
    spans = tuple(Span.from_text(text, i * 35 + offset, i * 35 + offset + len(word), "drug", f"{word[0]}{i}")
                  for i in range(0, 1400, 200) for offset, word in ((0, "Aspirin"), (18, "warfarin")))
    long = Document("long", text, spans)
    assert len(candidate_pairs(long, classifier.types)) == 7
    [long] = classifier.predict([long])
    assert_relations_join_spans(long)
    assert all(r.head[1:] == r.tail[1:] for r in long.relations)


@pytest.mark.heavy
@pytest.mark.slow
def test_the_llm_answers_multiple_choice_in_process_and_through_a_server(ddi, tmp_path):
    train, test = ddi
    embedder = Embedder()
    extractor = LLMRelationExtractor(SPECS, LlamaCppLLM(), k=2, embedder=embedder).fit(train, listed=True)
    assert len(extractor.pool) == 100 and extractor.questions.constrained
    docs = [d.with_annotations(d.entities) for d in test[:2]]
    predicted = extractor.predict(docs)
    n_pairs = sum(len(candidate_pairs(d, extractor.types)) for d in docs)
    assert extractor.usage.calls == n_pairs > 0
    for doc in predicted:
        assert_relations_join_spans(doc)
        assert all(r.label in extractor.labels and 0 < r.score <= 1 for r in doc.relations)
    with LlamaServer(llm_gguf(), tmp_path / "server.log") as server:
        remote = OpenAICompatibleLLM("gemma", base_url=server.url + "/v1", timeout=300)
        guided = LLMRelationExtractor(SPECS, remote, k=2, embedder=embedder, guided=True).fit(train, listed=True)
        [(pair, _)] = labelled_pairs(test[0], PairTypes(SPECS), listed=True)
        label, score = guided.classify(test[0], pair)
    assert guided.unparsed == 0 and label in (*extractor.labels, NO_RELATION)
    assert score is None or 0 < score <= 1

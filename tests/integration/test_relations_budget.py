"""Relations on a step budget (issue 40): the relation classifier's training stops at the
tagger's step budget and reports its steps, learns a seeded sample of a long note's candidate
pairs at every label's real share, and pairs no spans further apart than the encoder reads."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, strategies as st

from clinie.core import NO_RELATION, Document, Span, read_documents
from clinie.extractors.finetune import STEP_BUDGET, fine_tune, planned_steps
from clinie.extractors.relation_classifier import SAMPLED_EPOCHS, RelationClassifier
from clinie.labelstudio import parse_label_config
from clinie.relations import MAX_DISTANCE, PairTypes, candidate_pairs, labelled_pairs, sample_at_shares
from harness import DATA, ROOT

SPECS = parse_label_config((ROOT / "label_configs" / "drug_interactions.xml").read_text()).relation_labels


def test_fine_tune_stops_at_max_steps_and_reports_every_step():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    examples = [torch.randn(2) for _ in range(40)]

    def loss(batch: list) -> torch.Tensor:
        return model(torch.stack(batch)).pow(2).mean()

    seen: list[tuple[int, int]] = []
    options = {"epochs": 3, "learning_rate": 1e-2, "batch_size": 4, "seed": 1}
    assert fine_tune(model.parameters(), examples, loss, max_steps=7, on_step=lambda *s: seen.append(s), **options)
    assert seen == [(n, 7) for n in range(1, 8)]
    seen.clear()
    assert not fine_tune(model.parameters(), examples, loss, on_step=lambda *s: seen.append(s), **options)
    assert seen == [(n, 30) for n in range(1, 31)] and planned_steps(40, epochs=3, batch_size=4) == 30
    assert not fine_tune(model.parameters(), examples, loss, max_steps=30, **options)  # the budget is not hit


def test_the_classifier_takes_the_taggers_budget_and_samples_what_it_covers_several_times():
    classifier = RelationClassifier(SPECS)  # batch 8
    assert classifier._step_budget() == STEP_BUDGET and classifier._pair_cap() == STEP_BUDGET * 8 // SAMPLED_EPOCHS
    assert [classifier._epochs(n) for n in (200, 100, 16)] == [20, 20, 50]  # at least 100 steps
    given_epochs = RelationClassifier(SPECS, epochs=20)  # as given: every pair, every epoch
    assert given_epochs._step_budget() is None and given_epochs._pair_cap() is None and given_epochs._epochs(16) == 20
    capped = RelationClassifier(SPECS, epochs=20, max_steps=50)
    assert capped._step_budget() == 50 and capped._pair_cap() == 50 * 8 // SAMPLED_EPOCHS
    assert RelationClassifier(SPECS, max_pairs=70)._pair_cap() == 70
    assert RelationClassifier(SPECS, max_steps=1)._pair_cap() == 8  # a batch at least
    # 2,600 pairs of 4 long notes: 20 epochs would be 6,500 steps; the budget, 300 over 600 sampled
    assert classifier._steps(2600, 0) == STEP_BUDGET and given_epochs._steps(2600, 0) == 6500


@given(st.dictionaries(st.sampled_from([NO_RELATION, "effect", "advise", "int", "mechanism"]), st.integers(1, 300),
                       min_size=1), st.integers(5, 400), st.integers(0, 3))
def test_a_sample_keeps_every_labels_share_and_is_seeded(counts, size, seed):
    labelled = [(n, label) for label, count in counts.items() for n in range(count)]
    sample = sample_at_shares(labelled, size, seed)
    assert sample == sample_at_shares(labelled, size, seed) and len(sample) == min(size, len(labelled))
    assert len(set(sample)) == len(sample) and set(sample) <= set(labelled)
    assert [item for item in labelled if item in set(sample)] == sample  # in their order
    got = Counter(label for _, label in sample)
    for label, count in counts.items():
        quota = count * min(size, len(labelled)) / len(labelled)
        assert abs(got[label] - quota) < 1 + len(counts)  # largest remainders, a rare label kept once
        assert got[label] >= 1 or size < len(counts)


def test_a_long_notes_sample_has_the_real_share_of_no_relation_and_another_seed_draws_others():
    labelled = [(n, NO_RELATION if n % 8 else "effect") for n in range(2600)] + [(2600, "int")]
    sample = sample_at_shares(labelled, 600, seed=13)
    share = sum(label == NO_RELATION for _, label in labelled) / len(labelled)
    assert abs(sum(label == NO_RELATION for _, label in sample) / 600 - share) <= 1 / 600
    assert (2600, "int") in sample  # one in 2,601: kept once, else it could never be predicted
    assert sample_at_shares(labelled, 600, seed=14) != sample
    assert sample_at_shares(labelled[:500], 600, seed=13) == labelled[:500]  # fewer than the cap: all


def test_spans_further_apart_than_max_distance_are_no_candidates():
    # a table the sentence splitter finds no end in: one "sentence" of 200 drugs
    text = " ".join(f"drug{n:03d} 5 mg" for n in range(200))
    spans = tuple(Span.from_text(text, n * 13, n * 13 + 7, "drug", f"d{n}") for n in range(200))
    doc = Document("table", text, spans)
    types = PairTypes(SPECS)
    bounded = candidate_pairs(doc, types)
    assert all(abs(p.tail.start - p.head.start) - 7 <= MAX_DISTANCE for p in bounded)
    assert len(bounded) == sum(min(199 - n, (MAX_DISTANCE + 6) // 13) for n in range(200))  # linear in the spans
    assert len(candidate_pairs(doc, types, max_distance=None)) == 200 * 199 // 2  # every pair: quadratic
    assert len(labelled_pairs(doc, types)) == len(bounded)


def test_a_pair_late_in_a_long_sentence_keeps_its_markers():
    classifier = RelationClassifier(SPECS)
    text = "The patient received " + ", ".join(f"drug{n}" for n in range(300)) + " and [E1] aspirin [/E1] " \
           "raised [E2] warfarin [/E2] levels."
    short = "[E1] aspirin [/E1] raised [E2] warfarin [/E2] levels."
    batch = classifier._encode([text, short])
    ids = batch["input_ids"].tolist()
    assert len(ids[0]) == 256 and sum(batch["attention_mask"][0].tolist()) == 256
    tokenizer = classifier._tokenizer
    assert ids[0][0] == tokenizer.cls_token_id and ids[0][-1] == tokenizer.sep_token_id
    assert all(marker in ids[0] for marker in classifier._all_marker_ids)
    assert ids[1][: sum(batch["attention_mask"][1].tolist())] == tokenizer(short)["input_ids"]  # short: as it was


@pytest.mark.slow
def test_a_long_note_trains_within_its_budget_on_a_sample_at_the_real_share(tmp_path):
    sentences = [d for d in read_documents(DATA / "ddi" / "train.jsonl") if d.entities][:40]
    text = "\n\n".join(d.text for d in sentences)
    spans, relations, offset = [], [], 0
    for k, d in enumerate(sentences):
        spans += [Span(s.start + offset, s.end + offset, s.label, s.text, f"{k}.{s.id}") for s in d.entities]
        relations += [type(r)(f"{k}.{r.head}", f"{k}.{r.tail}", r.label) for r in d.relations]
        offset += len(d.text) + 2
    note = Document("note", text, tuple(spans), tuple(relations))
    steps: list[tuple[int, int]] = []
    classifier = RelationClassifier(SPECS, max_steps=2, max_pairs=40).fit([note], on_step=lambda *s: steps.append(s))
    assert classifier.cut_short and steps == [(1, 2), (2, 2)]
    labels = [label for _, label in labelled_pairs(note, classifier.types)]
    assert classifier.n_labelled_pairs == len(labels) > 100 and classifier.n_train_pairs == 40
    real = labels.count(NO_RELATION) / len(labels)
    assert abs(classifier.train_priors[0] - real) <= len(classifier.classes) / 40  # the real share, near enough
    assert classifier.pair_priors(classifier.score([note])) is None  # learnt at the real priors: nothing to adapt
    # progress over every fit: two calibration folds and the final fit, a step each
    steps.clear()
    RelationClassifier(SPECS, max_steps=1, max_pairs=40).fit([note], calibration_folds=2,
                                                             on_step=lambda *s: steps.append(s))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    # a note's pairs are batched among themselves (by length): scored or classified, the same figures
    scored = classifier.score([Document("a", note.text, note.entities[: len(spans) // 2]), note])
    assert len(scored[1].pairs) > 32  # more than a batch
    for s in scored:
        assert np.array_equal(s.posteriors, classifier.posteriors(s.doc, s.pairs))
    again = RelationClassifier.load(classifier.save(tmp_path / "relations"))
    assert again.hyperparameters == classifier.hyperparameters and again.n_labelled_pairs == len(labels)
    assert math.isclose(again.train_priors[0], classifier.train_priors[0])


@pytest.mark.slow
def test_relation_thresholds_are_chosen_on_a_held_out_share_of_the_documents_with_relations():
    """Precision first for relations (``ml_backend.training.relation_thresholds``): a classifier
    fitted without a held-out quarter of the documents with relations, its relations between
    their own regions scored against theirs; none to choose from one document, or at precision 0."""
    from clinie.labelstudio import parse_label_config
    from clinie.settings import Settings
    from ml_backend.training import relation_thresholds

    specs = parse_label_config((ROOT / "label_configs" / "drug_interactions.xml").read_text()).relation_labels
    docs = [d for d in read_documents(DATA / "ddi" / "train.jsonl") if d.relations and len(d.text) < 160][:8]
    settings = Settings(min_precision=0.5)  # the default budget: MIN_STEPS steps for so few pairs
    thresholds = relation_thresholds(settings, specs, docs)
    assert "" in thresholds and set(thresholds) <= {"", *(spec.name for spec in specs)}
    assert all(t is None or 0 <= t <= 1 for t in thresholds.values())
    assert relation_thresholds(settings, specs, docs[:1]) == {}
    assert relation_thresholds(Settings(min_precision=0.0), specs, docs) == {}

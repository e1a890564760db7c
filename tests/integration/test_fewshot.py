"""True few-shot cross-validation: folds, selection, no leakage, reproducibility — on real models."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from clinie.cli import main
from clinie.core import Document, LabelSpec, Span, read_documents
from clinie.evaluation.fewshot import (
    SAMPLED_CHARS,
    CrossValidation,
    StrategyRun,
    cross_validate,
    folds,
    label_specs,
    subsample,
)
from clinie.evaluation.study import load_run, run_study
from clinie.extractors.gated import Gated
from clinie.extractors.llm import LLMTagger
from clinie.extractors.rerank import Rerank
from clinie.llm.llamacpp import LlamaCppLLM
from clinie.strategies import Strategy, StrategyBuilder, parse_strategies
from harness import DATA
from harness.helpers import assert_spans_match_text

NCBI = DATA / "ncbi_disease" / "fewshot"
LABELS = [LabelSpec("Disease", "a disease, disorder or syndrome")]


@pytest.fixture(scope="module")
def pool() -> list[Document]:
    return list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))


# --- folds and selection (pure) -----------------------------------------------------------


@pytest.mark.parametrize("n, k, loo_below, expected", [(4, 5, 10, 4), (9, 5, 10, 9), (10, 5, 10, 5), (100, 5, 10, 5),
                                                        (3, 5, 2, 3)])
def test_every_document_is_held_out_exactly_once(n, k, loo_below, expected):
    parts = folds(n, k, loo_below, seed=7)
    assert len(parts) == expected
    assert sorted(i for part in parts for i in part) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == folds(n, k, loo_below, seed=7)


def test_folds_depend_on_the_seed_and_need_two_documents():
    assert folds(50, seed=1) != folds(50, seed=2)
    with pytest.raises(ValueError, match="at least 2"):
        folds(1)


def test_strategy_names_round_trip_and_bad_ones_are_refused():
    for strategy in parse_strategies("encoder,probe,llm-k2,llm,rerank,rerank-0.95,gated,gated-0.85", bands=(0.6,)):
        assert Strategy.parse(strategy.name) == strategy
    with pytest.raises(ValueError, match="unknown strategy 'gpt'"):
        parse_strategies("encoder,gpt")
    with pytest.raises(ValueError, match="repeat"):
        parse_strategies("llm,llm-k5")


def test_the_best_mean_f1_is_selected_and_ties_go_to_the_first_listed():
    cv = CrossValidation([], [[0, 1], [2, 3]])
    for name, f1 in (("encoder", [0.5, 0.7]), ("llm-k5", [0.9, 0.3]), ("rerank-0.80", [0.7, 0.5])):
        cv.runs[name] = StrategyRun(Strategy.parse(name), [], f1)
    assert cv.selected.name == "encoder"  # 0.6 each: the first listed
    cv.runs["rerank-0.80"].fold_f1[0] = 0.71
    assert cv.selected.name == "rerank-0.80"
    assert cv.summary()["selected"] == "rerank-0.80" and cv.summary()["scheme"] == "2-fold"


@dataclass(frozen=True)
class Named:
    name: str


class Answers:
    """An extractor that answers with the gold ("perfect") or nothing, and says what it was asked."""

    def __init__(self, name: str, asked: dict[str, list[str]]) -> None:
        self.name, self.asked = name, asked

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        self.asked.setdefault(self.name, []).extend(d.id for d in docs)
        return [d if self.name.startswith("perfect") else d.with_annotations(()) for d in docs]


def test_an_incumbent_scored_on_a_sample_is_compared_with_a_challenger_on_those_documents(pool):
    docs, asked = pool[:10], {}
    build = lambda strategy, train: Answers(strategy.name, asked)  # noqa: E731
    cv = cross_validate(docs, [Named("nothing"), Named("perfect, slow")], build, k=5, loo_below=2,
                        incumbent="perfect, slow", sample={"perfect, slow": 3})
    assert len(asked["nothing"]) == 10 and len(asked["perfect, slow"]) == 3  # one document in each of 3 folds
    assert len(cv.runs["perfect, slow"].predictions) == 3 and len(cv.runs["perfect, slow"].fold_f1) == 3
    assert sum(len(gold) for gold, _ in cv.fold_predictions("perfect, slow")) == 3
    assert cv.versus_incumbent() == {"nothing": 0.0, "perfect, slow": 1.0}
    assert cv.selected.name == "perfect, slow" and cv.summary()["incumbent_documents"] == 3
    cv.incumbent = "nothing"  # once another serves, a strategy scored on a sample is no challenger
    assert cv.selected.name == "nothing"
    sampled = set(asked["perfect, slow"])
    cv = cross_validate(docs, [Named("perfect"), Named("nothing, slow")], build, k=5, loo_below=2,
                        incumbent="nothing, slow", sample={"nothing, slow": 3})
    assert set(asked["nothing, slow"]) == sampled  # the same seeded sample
    assert cv.selected.name == "perfect" and cv.summary()["versus_incumbent"] == {"perfect": 1.0, "nothing, slow": 0.0}


def test_a_sampled_incumbent_reads_the_opening_of_long_notes_and_is_compared_on_it_alone(pool):
    """A long note would cost a strategy of seconds a sentence an hour: it reads the note's
    opening sentences, and the challengers are compared with it on that opening only."""
    notes = []
    for n in range(6):
        parts = pool[10 * n:10 * n + 10]
        text, spans = "", []
        for doc in parts:
            spans += [replace(s, start=s.start + len(text), end=s.end + len(text), id=f"{len(spans) + k}")
                      for k, s in enumerate(doc.entities)]
            text += doc.text + "\n\n"
        notes.append(Document(f"note{n}", text, tuple(spans)))
    asked: dict[str, list[str]] = {}

    class Texts(Answers):
        def predict(self, docs):
            asked.setdefault(self.name, []).extend(d.text for d in docs)
            return [d if self.name != "late" else d.with_annotations([s for s in d.entities if s.start >= 1000])
                    for d in docs]

    build = lambda strategy, train: Texts(strategy.name, asked)  # noqa: E731
    cv = cross_validate(notes, [Named("late"), Named("perfect, slow")], build, k=3, loo_below=2,
                        incumbent="perfect, slow", sample={"perfect, slow": 2})
    read = asked["perfect, slow"]
    assert len(read) == 2 and all(SAMPLED_CHARS <= len(t) < 1000 and any(n.text.startswith(t) for n in notes)
                                  for t in read)
    assert sorted(asked["late"]) == sorted(n.text for n in notes)  # the challenger reads every note whole
    # right only beyond the opening: on what the incumbent read, it found nothing
    assert cv.versus_incumbent() == {"late": 0.0, "perfect, slow": 1.0} and cv.selected.name == "perfect, slow"


def test_the_preferred_strategy_is_kept_while_within_one_standard_error_of_the_best():
    cv = CrossValidation([], [[0, 1], [2, 3]], prefer="probe")
    cv.runs["encoder"] = StrategyRun(Strategy("encoder"), [], [0.9, 0.5])  # mean 0.70, standard error 0.20
    cv.runs["probe"] = StrategyRun(Strategy("probe"), [], [0.6, 0.55])     # 0.575: within it
    assert cv.selected.name == "probe" and cv.summary()["prefer"] == "probe"
    cv.runs["probe"] = StrategyRun(Strategy("probe"), [], [0.5, 0.4])      # 0.45: clearly beaten
    assert cv.selected.name == "encoder"


def test_a_strategy_above_the_llm_budget_is_not_selected_however_good():
    def read(to_llm: int) -> list[Document]:  # what a strategy's cross-validated predictions say it cost
        return [Document("a", "x", meta={"llm": {"sentences": 4, "sentences_to_llm": to_llm}})]

    cv = CrossValidation([], [[0]], max_llm_share=0.25)
    cv.runs["encoder"] = StrategyRun(Strategy("encoder"), [Document("a", "x")], [0.5])
    cv.runs["gated-0.80"] = StrategyRun(Strategy.parse("gated-0.80"), read(1), [0.7])
    cv.runs["probe"] = StrategyRun(Strategy("probe"), read(4), [0.9])
    assert [r.llm_share for r in cv.runs.values()] == [0.0, 0.25, 1.0]
    assert cv.selected.name == "gated-0.80"
    assert cv.summary()["strategies"]["probe"]["llm_share"] == 1.0 and cv.summary()["max_llm_share"] == 0.25
    cv.max_llm_share = 1.0
    assert cv.selected.name == "probe"
    cv.max_llm_share = 0.0
    assert cv.selected.name == "encoder"
    del cv.runs["encoder"]  # none within the budget: the one that sends the fewest sentences
    assert cv.selected.name == "gated-0.80"
    with pytest.raises(ValueError, match="share of sentences"):
        cross_validate([], [Strategy("encoder")], lambda s, t: None, max_llm_share=1.5)


def test_pools_are_seeded_subsamples_and_labels_keep_their_descriptions(pool):
    assert [d.id for d in subsample(pool, 10, 42)] == [d.id for d in subsample(pool, 10, 42)]
    assert subsample(pool, 10, 42) != subsample(pool, 10, 43)
    assert len(subsample(pool, 500, 1)) == len(pool)
    assert label_specs(pool, LABELS) == LABELS
    assert label_specs(pool) == [LabelSpec("Disease")]


def test_repeated_document_ids_are_refused(pool):
    with pytest.raises(ValueError, match="ids repeat"):
        cross_validate([pool[0], pool[0]], [Strategy("encoder")], lambda s, t: None)


@dataclass(frozen=True)
class Lookup:
    """A candidate that tags each surface form of at least ``shortest`` characters its training
    spans had: a real reader, pure and instant, for what a study keeps of its runs."""

    shortest: int
    forms: tuple[str, ...] = ()  # longest first
    labels = ("Disease",)

    @property
    def name(self) -> str:
        return f"lookup-{self.shortest}"

    def fit(self, train: Sequence[Document]) -> Lookup:
        forms = {s.text for d in train for s in d.entities if len(s.text) >= self.shortest}
        return replace(self, forms=tuple(sorted(forms, key=len, reverse=True)))

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        out = []
        for doc in docs:
            spans: list[Span] = []
            for form in self.forms:
                for m in re.finditer(re.escape(form), doc.text):
                    found = Span.from_text(doc.text, m.start(), m.end(), "Disease")
                    if not any(found.overlaps(s) for s in spans):
                        spans.append(found)
            out.append(doc.with_annotations(sorted(spans, key=lambda s: s.start)))
        return out


def test_a_study_runs_only_what_its_saved_run_lacks_picks_again_and_keeps_the_rest(pool, tmp_path):
    fitted: list[str] = []

    def build(candidate: Lookup, train: Sequence[Document]) -> Lookup:
        fitted.append(candidate.name)
        return candidate.fit(train)

    study = functools.partial(run_study, pool[:50], pool[60:70], [20], [1], build=build, folds=4)
    [nothing] = study([Lookup(999)], runs_dir=tmp_path)  # no form that long: F1 0
    fitted.clear()
    [both] = study([Lookup(3), Lookup(999)], runs_dir=tmp_path)
    assert set(fitted) == {"lookup-3"}  # the saved strategy is not fitted again
    assert list(both["test"]) == list(both["cv"]["strategies"]) == ["lookup-3", "lookup-999"]
    assert both["cv"]["strategies"]["lookup-999"] == nothing["cv"]["strategies"]["lookup-999"]
    assert both["selected"] == both["cv"]["selected"] == "lookup-3" != nothing["selected"]
    as_saved = json.loads(json.dumps(both))
    assert load_run(tmp_path, 20, 1) == as_saved
    [fresh] = study([Lookup(3), Lookup(999)], runs_dir=None)
    assert json.loads(json.dumps(fresh)) == as_saved  # as if both had been run together
    fitted.clear()
    [alone] = study([Lookup(999)], runs_dir=tmp_path)  # fewer strategies than the saved run holds
    assert fitted == []  # answered from the saved run ...
    assert json.loads(json.dumps(alone)) == json.loads(json.dumps(nothing))  # ... as if run alone
    assert load_run(tmp_path, 20, 1) == as_saved  # ... which keeps what it measured
    [three] = study([Lookup(4), Lookup(999)], runs_dir=tmp_path)  # one added, one saved not asked for
    assert fitted == ["lookup-4"] * 5
    assert list(three["test"]) == ["lookup-4", "lookup-999"]
    assert list(load_run(tmp_path, 20, 1)["test"]) == ["lookup-4", "lookup-999", "lookup-3"]


# --- on real models -----------------------------------------------------------------------


class Recorder:
    """Builds real extractors and records what each was fitted on."""

    def __init__(self, build: StrategyBuilder) -> None:
        self.build = build
        self.calls: list[tuple[str, set[str], set[str]]] = []  # strategy, training ids, ids its demos come from

    def __call__(self, strategy: Strategy, train):
        extractor = self.build(strategy, train)
        if isinstance(extractor, LLMTagger):
            demos = {d.id.split("#")[0] for d in extractor.pool.docs}  # split_document names parts "<id>#n"
        elif isinstance(extractor, Rerank):
            demos = {d.id.split("#")[0] for d in extractor.pool.docs}
            assert extractor.encoder.n_train_docs == len(train)
        elif isinstance(extractor, Gated):
            demos = set()
            assert extractor.encoder.n_train_docs == extractor.probe.n_train_docs == len(train)
        else:
            demos = set()
            assert extractor.n_train_docs == len(train)
        self.calls.append((strategy.name, {d.id for d in train}, demos))
        return extractor


@pytest.mark.heavy
@pytest.mark.slow
def test_folds_never_leak_a_document_into_its_own_training_set_or_demonstrations(pool):
    docs = pool[:8]
    recorder = Recorder(StrategyBuilder(LABELS, llm=LlamaCppLLM, encoder_options={"epochs": 1}))
    strategies = parse_strategies("encoder,probe,gated-0.9,llm-k2,rerank-0.9")
    cv = cross_validate(docs, strategies, recorder, k=4, loo_below=5, seed=3)
    assert len(recorder.calls) == 4 * len(strategies)
    for (name, train, demos), fold in zip(recorder.calls, [f for f in cv.folds for _ in strategies]):
        held = {docs[i].id for i in fold}
        assert train == {d.id for d in docs} - held, name
        assert not demos & held and demos <= train, name
    for run in cv.runs.values():
        assert [p.id for p in run.predictions] == [d.id for d in docs]  # every document predicted once, in order
        for doc in run.predictions:
            assert_spans_match_text(doc.text, doc.entities)


class Sabotaged:
    """A real encoder whose every span loses its last character: strictly wrong on purpose."""

    def __init__(self, tagger) -> None:
        self.tagger, self.labels = tagger, tagger.labels

    def predict(self, docs):
        return [d.with_annotations([Span.from_text(d.text, s.start, s.end - 1, s.label) for s in d.entities
                                    if s.end - s.start > 1]) for d in self.tagger.predict(docs)]


@pytest.mark.heavy
@pytest.mark.slow
def test_a_strategy_made_worse_on_purpose_is_not_selected(pool):
    build = StrategyBuilder(LABELS)  # default epochs: at least 100 steps, even on 16 documents
    worse = Strategy("llm", k=99)  # stands for the sabotaged one; listed first, so it would win a tie

    encoders: dict[tuple[str, ...], object] = {}  # one training per fold, shared by both strategies

    def sabotaging(strategy: Strategy, train):
        key = tuple(d.id for d in train)
        if key not in encoders:
            encoders[key] = build(Strategy("encoder"), train)
        encoder = encoders[key]
        return Sabotaged(encoder) if strategy == worse else encoder

    cv = cross_validate(pool[:24], [worse, Strategy("encoder")], sabotaging, k=3, seed=0)
    assert cv.runs["encoder"].mean_f1 > cv.runs[worse.name].mean_f1
    assert cv.selected == Strategy("encoder")


@pytest.mark.heavy
@pytest.mark.slow
def test_the_same_seed_gives_the_same_report_figures(tmp_path):
    pool_file, test_file = tmp_path / "pool.jsonl", tmp_path / "test.jsonl"
    pool_file.write_text("".join((NCBI / "gutierrez_train100_seed42.jsonl").read_text().splitlines(True)[:10]))
    test_file.write_text("".join((NCBI / "chen2023_test_sample200.jsonl").read_text().splitlines(True)[:6]))

    def study(out: Path, seeds: str) -> dict:
        assert main(["fewshot", "--pool", str(pool_file), "--test", str(test_file), "--sizes", "6", "--seeds", seeds,
                     "--strategies", "encoder,llm-k1,rerank-0.9", "--epochs", "2", "--folds", "3",
                     "--loo-below", "4", "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text())
        for run in report["runs"]:  # wall-clock time is the one thing allowed to differ
            for result in run["test"].values():
                result.get("llm_cost", {}).pop("seconds", None)
        return report

    first, second = study(tmp_path / "a", "7,"), study(tmp_path / "b", "7,")  # one seed: 7
    assert [r["seed"] for r in first["runs"]] == [7]
    assert first["runs"] == second["runs"] and first["comparison"] == second["comparison"]
    for name in ("report.html", "report.md", "learning_curve.svg"):
        assert (tmp_path / "a" / name).stat().st_size > 500
    assert (tmp_path / "a" / "runs" / "size6-seed7.json").exists()

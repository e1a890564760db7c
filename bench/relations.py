"""Relations on DDI: the encoder relation classifier and the LLM (multiple choice), true few-shot,
and where the end-to-end figure is lost.

Training pairs and demonstrations only from ``ddi/fewshot/gutierrez_train100_balanced_seed*.jsonl``
(100 listed pairs, 20 per label); no test sentence is trained or tuned on. Measured per seed:

1. **Gold entities given, listed pairs**: each of the 200 pairs of ``chen2023_test_sample200.jsonl``
   is classified as trained (``classify``); macro F1 over the four interaction types, as Chen et
   al. 2023 report for GPT-3.5 / GPT-4 on the same items. Encoder: every seed; LLM (Gemma 3 270M
   in llama.cpp, k retrieved demonstrations, letters scored from the logits): seed 42, as GPT-3 was run.
2. **The loss breakdown** on the full DDI test set (1299 sentences), strict relation F1 (both
   spans exact, label right), each step changing one thing:

   - *gold entities, every candidate pair, as trained*: candidate pairs and the class prior of
     the balanced training sample, no entity error;
   - *gold entities, priors adapted*: the same posteriors under the class priors that EM estimates
     on these unlabelled pairs (``clinie.relations.priors``: the sample is 20 % ``false``, real
     candidate pairs about 83 %);
   - *candidate ceiling*: the share of gold relations whose pair is a candidate with gold spans,
     under the type constraints the classifier learnt (and under the declared ones: none);
   - *tagger entities, as trained*: the encoder tagger (trained on the same 100 sentences'
     entities) finds the drugs; what ``RelationClassifier.predict`` does;
   - *tagger entities, priors adapted*: the same under the priors EM estimates.

   With ``--negatives N`` the classifier also learns N of the training sentences' unlisted
   candidate pairs as ``false`` (``RelationClassifier.fit(negatives=N)``; the listed pairs keep
   half of every epoch): the negatives a sample drawn by label lacks, a few of them relations
   nobody listed. With ``--unannotated N``, **teacher -> student**: N sentences of DDI's train split
   (none of the few-shot file's or the test's, their gold annotations dropped) get their drugs from
   the tagger, the classifier (the teacher, as configured) reads their candidate pairs, and a
   student is fitted like it on the same listed pairs (and negatives) and on those pairs, each
   learnt as the teacher's posterior row (soft labels; ``RelationClassifier.fit(taught=...)``):
   under the class priors EM estimates on these pairs (``--teacher-priors adapted``, the default:
   the listed sample's 20 % ``false`` is not the text's) or as trained. The student also learns
   relations on spans a tagger found, which is what it is applied to end to end. Teacher and
   student are measured in the same run, one row each. With ``--calibration-folds N`` the
   classifier's posteriors are first calibrated by N-fold cross-validation over the 100 training
   pairs (``clinie.relations.priors.Calibration``; N more fits): every step then reads calibrated
   posteriors, which EM needs.

   Per step: predicted relations against gold ones (over-prediction shows as predicted >> gold and
   low precision), micro precision and recall, macro F1; per seed the priors EM estimated beside
   the true ones of the gold-span candidates (read only, never used).

3. **Long notes** (``--long-notes N``): the classifier as the backend trains it, on exhaustive
   annotations (every candidate pair of a sentence that DDI lists no relation for is ``false``), of
   N notes of about ``--note-chars`` characters (a case report's 17,000 by default) made of DDI
   train sentences drawn with the seed, a paragraph each; scored on ``--test-notes`` notes made of
   DDI test sentences the same way (gold entities, every candidate pair, strict macro F1). Once per
   ``--variants``: ``before``, the classifier before issue 40 (20 epochs over every candidate pair,
   no step budget, no distance limit); ``default``, its defaults (the step budget over a sample of
   the pairs at their real shares); ``every-pair``, the step budget over every candidate pair. Per
   variant: the fit's steps and seconds, the pairs learnt, their share of ``false`` beside the real
   one, the prediction's seconds, F1, and predicted / gold relations. ``--max-steps`` caps the
   budgeted variants (a small run); the LLM and the few-shot rows are not run.

Writes ``bench/results/relations/ddi.json`` (kept in git; a run replaces the rows it measured again
with the same settings and keeps the others, each row with the command that made it); a long-notes
run writes ``long_notes.json`` beside it (read by no results page: ``--out`` elsewhere for a small run).

    python -m bench.relations --seeds 42,33,21       # all of it: about 50 min on 2 idle cores
    python -m bench.relations --seeds 42 --llm-n 0 --negatives 400 --unannotated 2000   # and a student
    python -m bench.relations --seeds 42 --llm-n 200 --skip-e2e
    python -m bench.relations --seeds 42 --llm-n 0 --train-limit 10 --test-limit 30 --epochs 1 \\
        --tagger-steps 2 --out /tmp/relations-smoke    # smoke: that it runs, no figure to read
    python -m bench.relations --seeds 42 --long-notes 4 --test-notes 4    # the issue's 4 case reports
    python -m bench.relations --seeds 42 --long-notes 1 --note-chars 6000 --test-notes 2 --max-steps 60 \\
        --variants default,every-pair --out /tmp/relations-long    # a few minutes: ratios, not figures
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import command_line
from bench.student import unannotated_sentences
from clinie.core import NO_RELATION, Document, Relation, read_documents
from clinie.evaluation import evaluate_relations, evaluate_spans
from clinie.labelstudio import parse_label_config
from clinie.relations import Pair, PairTypes, candidate_pairs, labelled_pairs
from harness import DATA, ROOT

DDI = DATA / "ddi"
OUT = ROOT / "bench" / "results" / "relations"
TYPES = ("advise", "effect", "int", "mechanism")
SPECS = parse_label_config((ROOT / "label_configs" / "drug_interactions.xml").read_text()).relation_labels
PUBLISHED = {"GPT-3.5 0-shot": 0.3349, "GPT-3.5 1-shot": 0.3440, "GPT-4 0-shot": 0.6325, "GPT-4 1-shot": 0.6558}
#: The issue's goals (issue 23): macro F1 on the 200 listed pairs, and end to end (the tagger's
#: entities, every candidate pair, strict).
GOALS = {"listed pairs": 0.68, "end to end": 0.35}
#: The classifiers ``--long-notes`` compares: options of ``RelationClassifier``.
VARIANTS: dict[str, dict[str, Any]] = {"before": {"epochs": 20, "max_distance": None}, "default": {},
                                       "every-pair": {"max_pairs": 10**9}}
STEPS = ("gold entities, every candidate pair, as trained", "gold entities, every candidate pair, priors adapted",
         "tagger entities, as trained (predict)", "tagger entities, priors adapted")


def macro_f1(gold: list[Document], pred: list[Document], mode: str) -> float:
    scores = evaluate_relations(gold, pred)[mode]
    return statistics.mean(scores.per_label[t].f1 if t in scores.per_label else 0.0 for t in TYPES)


def classify_listed(test: list[Document],
                    classify: Callable[[Document, Pair], tuple[str, float | None]]) -> list[Document]:
    """Each test document with a prediction for its one listed pair (gold spans given)."""
    out = []
    for doc in test:
        [(pair, _)] = labelled_pairs(doc, PairTypes(SPECS), listed=True)
        label, score = classify(doc, pair)
        relations = [] if label == NO_RELATION else [Relation(pair.head.id, pair.tail.id, label, score)]
        out.append(doc.with_annotations(doc.entities, relations))
    return out


def outcome(gold: list[Document], pred: list[Document]) -> dict[str, Any]:
    """Strict macro F1 over the four types, and whether the errors are relations too many
    (predicted > gold, low precision) or too few."""
    strict = evaluate_relations(gold, pred)["strict"]
    return {"macro_f1": round(macro_f1(gold, pred, "strict"), 4), "micro_f1": round(strict.micro.f1, 4),
            "precision": round(strict.micro.precision, 4), "recall": round(strict.micro.recall, 4),
            "predicted": strict.micro.tp + strict.micro.fp, "gold": strict.micro.tp + strict.micro.fn,
            "predicted_by_label": {label: s.tp + s.fp for label, s in sorted(strict.per_label.items())}}


def ceiling(docs: Sequence[Document], types: PairTypes) -> dict[str, Any]:
    """How many gold relations are candidate pairs (either direction) that may carry their label,
    with gold spans."""
    reachable = total = 0
    for doc in docs:
        allowed = {(p.head.id, p.tail.id, label) for p in candidate_pairs(doc, types) for label in p.labels}
        total += len(doc.relations)
        reachable += sum((r.head, r.tail, r.label) in allowed or (r.tail, r.head, r.label) in allowed
                         for r in doc.relations)
    return {"reachable": reachable, "gold": total, "share": round(reachable / total, 4) if total else None}


def true_priors(docs: Sequence[Document], types: PairTypes, classes: Sequence[str]) -> list[float]:
    """The share of each class among the gold-span candidate pairs: what EM should find (read, never used)."""
    labels = [label for doc in docs for _, label in labelled_pairs(doc, types)]
    return [round(labels.count(c) / max(len(labels), 1), 4) for c in classes]


def breakdown(classifier: Any, test: list[Document], tagged: list[Document]) -> dict[str, Any]:
    """The steps from gold entities to the tagger's, each scored once as trained and once under
    the priors EM estimates on the pairs themselves (one forward pass per candidate pair)."""
    steps, priors, seconds = {}, {}, {}
    for entities, docs, (raw, adapted) in (("gold", [d.with_annotations(d.entities) for d in test], STEPS[:2]),
                                           ("tagger", tagged, STEPS[2:])):
        started = time.perf_counter()
        scored = classifier.score(docs)
        seconds[f"{entities} entities scored"] = round(time.perf_counter() - started, 1)
        estimated = classifier.pair_priors(scored)
        steps[raw] = outcome(test, classifier.label(scored))
        steps[adapted] = outcome(test, classifier.label(scored, estimated))
        steps[raw]["candidate_pairs"] = steps[adapted]["candidate_pairs"] = sum(len(s.pairs) for s in scored)
        priors[f"{entities} entities, estimated"] = [round(float(p), 4) for p in estimated]
    priors["gold entities, true"] = true_priors(test, classifier.types, classifier.classes)
    priors["trained"] = [round(float(p), 4) for p in classifier.train_priors]
    return {"steps": steps, "classes": list(classifier.classes), "priors": priors, "seconds": seconds}


def key(row: dict[str, Any]) -> tuple:
    """What a row measured: a later run with the same settings replaces it."""
    return tuple(sorted(row["settings"].items()))


def configurations(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """The rows grouped by what they measured but the seed (and the LLM's pairs, run on one seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        settings = {k: v for k, v in row["settings"].items() if k not in ("seed", "llm_pairs")}
        groups.setdefault(tuple(sorted(settings.items())), []).append(row)
    return groups


def write(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Merge ``rows`` into the run file under ``out``: rows of other settings are kept."""
    path = out / "ddi.json"
    kept = json.loads(path.read_text())["runs"] if path.exists() else []
    measured = {key(r) for r in rows}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"corpus": "ddi", "runs": sorted([r for r in kept if key(r) not in measured] + rows,
                                                                key=key)}, indent=2) + "\n")
    return path


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a markdown table, seeds as columns, then the mean and sd."""
    seeds = [r["settings"]["seed"] for r in rows]
    lines = ["| DDI, macro F1 over the 4 interaction types | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean ± sd |",
             "|---|" + "---|" * (len(seeds) + 1)]
    figures = {"encoder, gold entities (200 listed pairs)": [r["gold_200_macro_f1"] for r in rows]}
    if all("steps" in r for r in rows):
        figures["tagger entity F1 (full test)"] = [r["tagger_entity_f1"] for r in rows]
        for step in STEPS:
            figures[step] = [r["steps"][step]["macro_f1"] for r in rows]
            figures[f"{step}: predicted / gold relations"] = [r["steps"][step]["predicted"] / r["steps"][step]["gold"]
                                                             for r in rows]
        figures["candidate ceiling, gold spans, learnt types"] = [r["ceiling"]["learnt types"]["share"] for r in rows]
    for name, values in figures.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {statistics.mean(values):.3f} ± {sd:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--llm-n", type=int, default=200, help="test pairs for the LLM (0: skip it)")
    parser.add_argument("--k", type=int, default=5, help="LLM demonstrations per pair")
    parser.add_argument("--skip-e2e", action="store_true", help="the 200 listed pairs only, no breakdown")
    parser.add_argument("--train-limit", type=int, default=0, help="the first N training pairs only (0: all 100)")
    parser.add_argument("--test-limit", type=int, default=0,
                        help="the first N test sentences and listed pairs only (0: all)")
    parser.add_argument("--epochs", type=int, default=20, help="relation classifier epochs (its default: 20)")
    parser.add_argument("--tagger-steps", type=int, default=0, help="the tagger's max optimiser steps (0: its budget)")
    parser.add_argument("--negatives", type=int, default=0,
                        help="unlisted candidate pairs of the training sentences learnt as false (0: none)")
    parser.add_argument("--calibration-folds", type=int, default=0,
                        help="calibrate the posteriors by cross-validation over the training pairs (0: not)")
    parser.add_argument("--unannotated", type=int, default=0,
                        help="train-split sentences whose tagged pairs the classifier teaches a student (0: none)")
    parser.add_argument("--teacher-priors", choices=("adapted", "trained"), default="adapted",
                        help="the teacher's posteriors under the priors EM estimates on those pairs, or as trained")
    parser.add_argument("--long-notes", type=int, default=0,
                        help="train on that many long notes of DDI train sentences, exhaustively (0: few-shot runs)")
    parser.add_argument("--note-chars", type=int, default=17_000, help="characters of a long note")
    parser.add_argument("--test-notes", type=int, default=4, help="long notes of DDI test sentences scored")
    parser.add_argument("--variants", default="before,default,every-pair", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--max-steps", type=int, default=0, help="caps the budgeted variants' steps (0: their budget)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from clinie.extractors.encoder import EncoderTagger
    from clinie.extractors.relation_classifier import RelationClassifier

    command = command_line("bench.relations")
    if args.long_notes:
        run_long_notes(args, command)
        return
    limit = args.test_limit or None
    test200 = list(read_documents(DDI / "fewshot" / "chen2023_test_sample200.jsonl"))[:limit]
    full_test = list(read_documents(DDI / "test.jsonl"))[:limit]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        train = list(read_documents(DDI / "fewshot" / f"gutierrez_train100_balanced_seed{seed}.jsonl"))
        train = train[: args.train_limit or None]
        settings = {"seed": seed, "train_pairs": len(train), "test_limit": args.test_limit, "epochs": args.epochs,
                    "tagger_steps": args.tagger_steps, "calibration_folds": args.calibration_folds,
                    **({"negatives": args.negatives} if args.negatives else {}), "breakdown": not args.skip_e2e}
        row: dict[str, Any] = {"settings": {**settings, "llm_pairs": min(args.llm_n, len(test200)) if seed == seeds[0]
                                            else 0}, "command": command, "seconds": {}}
        started = time.perf_counter()
        classifier = RelationClassifier(SPECS, epochs=args.epochs).fit(train, listed=True, negatives=args.negatives,
                                                                       calibration_folds=args.calibration_folds)
        row["seconds"]["relation fit"] = round(time.perf_counter() - started, 1)
        tagger, tagged = None, None
        if args.unannotated or not args.skip_e2e:
            sentences = list({d.text: Document(d.id, d.text, d.entities) for d in train}.values())
            started = time.perf_counter()
            tagger = EncoderTagger(["drug", "drug_n", "brand", "group"],
                                   max_steps=args.tagger_steps or None).fit(sentences)
            tagged = tagger.predict(full_test)
            row["seconds"]["tagger fit and predict"] = round(time.perf_counter() - started, 1)
        if row["settings"]["llm_pairs"]:
            row["llm"] = run_llm(train, test200[: args.llm_n], args.k)
        rows.append(measure(classifier, row, test200, full_test, tagged))
        if args.unannotated:
            student, taught = teach(classifier, tagger, train, seed, args)
            rows.append(measure(student, {"settings": {**settings, "llm_pairs": 0, "unannotated": args.unannotated,
                                                       "teacher_priors": args.teacher_priors},
                                          "command": command, "teacher": taught}, test200, full_test, tagged))

    print(f"\nwritten: {write(args.out, rows)}\n")
    for group in configurations(rows).values():
        print("\n".join(table(group)))
    if "llm" in rows[0]:
        llm = rows[0]["llm"]
        print(f"| LLM Gemma 3 270M, k={llm['k']}, gold entities ({llm['pairs']} listed pairs, seed {seeds[0]}) | "
              f"{llm['macro_f1']:.3f} |" + " |" * len(seeds))
    for name, value in PUBLISHED.items():
        print(f"| {name} (Chen et al. 2023, same 200 pairs) | {value:.3f} |" + " |" * len(seeds))


def measure(classifier: Any, row: dict[str, Any], test200: list[Document], full_test: list[Document],
            tagged: list[Document] | None) -> dict[str, Any]:
    """``row`` with the classifier's figures: the 200 listed pairs, then (unless the row's settings
    skip it) the breakdown on the full test set, entities from gold and the tagger's (``tagged``)."""
    seed = row["settings"]["seed"]
    name = "student" if "unannotated" in row["settings"] else "classifier"
    row.update(test_sentences=len(full_test), listed_test_pairs=len(test200))
    pred = classify_listed(test200, lambda doc, pair: classifier.classify(doc, [pair])[0])
    row["gold_200_macro_f1"] = round(macro_f1(test200, pred, "pairs"), 4)
    print(f"seed {seed}: relation {name} fitted on {classifier.n_train_pairs} listed pairs, "
          f"{classifier.n_negative_pairs} unlisted ones and {classifier.n_taught_pairs} a teacher read; "
          f"{len(test200)} listed pairs: macro F1 {row['gold_200_macro_f1']:.3f}", flush=True)
    if not row["settings"]["breakdown"]:
        return row
    assert tagged is not None
    row["tagger_entity_f1"] = round(evaluate_spans(full_test, tagged)["strict"].micro.f1, 4)
    row["ceiling"] = {"learnt types": ceiling(full_test, classifier.types),
                      "declared types": ceiling(full_test, PairTypes(SPECS))}
    found = breakdown(classifier, full_test, tagged)
    row.setdefault("seconds", {}).update(found.pop("seconds"))
    row.update(found)
    print(f"seed {seed}: tagger entity F1 {row['tagger_entity_f1']:.3f}; candidate ceiling "
          f"{row['ceiling']['learnt types']['share']}", flush=True)
    for step, o in row["steps"].items():
        print(f"  {step}: macro F1 {o['macro_f1']:.3f}, {o['predicted']} predicted / {o['gold']} gold "
              f"relations, P {o['precision']:.3f} R {o['recall']:.3f}", flush=True)
    print(f"  priors ({', '.join(classifier.classes)}): " +
          "; ".join(f"{name} {values}" for name, values in row["priors"].items()), flush=True)
    return row


def teach(teacher: Any, tagger: Any, train: list[Document], seed: int, args: argparse.Namespace) -> tuple[Any, dict]:
    """A student fitted as ``teacher`` was, and on the candidate pairs of ``args.unannotated``
    train-split sentences (none of the few-shot file's or the test's) between the spans ``tagger``
    finds, each learnt as the teacher reads it; with what the teaching took."""
    from clinie.extractors.relation_classifier import RelationClassifier, Scored
    from clinie.relations.priors import adjust_to_priors

    excluded = [*read_documents(DDI / "test.jsonl"),
                *read_documents(DDI / "fewshot" / f"gutierrez_train100_balanced_seed{seed}.jsonl")]
    texts = unannotated_sentences(list(read_documents(DDI / "train.jsonl")), excluded, args.unannotated, seed)
    started = time.perf_counter()
    scored = teacher.score(tagger.predict(texts))
    read = time.perf_counter() - started
    priors = teacher.pair_priors(scored) if args.teacher_priors == "adapted" else None
    if priors is not None:
        scored = [Scored(s.doc, s.pairs, adjust_to_priors(s.posteriors, teacher.train_priors, priors)) for s in scored]
    started = time.perf_counter()
    student = RelationClassifier(SPECS, epochs=args.epochs).fit(train, listed=True, negatives=args.negatives,
                                                                taught=scored, calibration_folds=args.calibration_folds)
    return student, {"sentences": len(texts), "pairs": student.n_taught_pairs,
                     "priors": None if priors is None else [round(float(p), 4) for p in priors],
                     "seconds": {"tagging and reading the pairs": round(read, 1),
                                 "student fit": round(time.perf_counter() - started, 1)}}


def long_notes(sentences: Sequence[Document], n: int, chars: int, seed: int) -> list[Document]:
    """``n`` notes of at least ``chars`` characters (fewer if the sentences run out), each made of
    ``sentences`` drawn with ``seed``, a paragraph each (a blank line ends a sentence), with their
    spans and relations: DDI's exhaustive annotation at a case report's length."""
    order = random.Random(seed).sample(list(sentences), len(sentences))
    notes: list[Document] = []
    while order and len(notes) < n:
        parts: list[Document] = []
        while order and sum(len(d.text) + 2 for d in parts) < chars:
            parts.append(order.pop())
        spans, relations, offset = [], [], 0
        for k, doc in enumerate(parts):
            spans += [replace(s, start=s.start + offset, end=s.end + offset, id=f"{k}.{s.id}") for s in doc.entities]
            relations += [replace(r, head=f"{k}.{r.head}", tail=f"{k}.{r.tail}") for r in doc.relations]
            offset += len(doc.text) + 2
        notes.append(Document(f"note{len(notes)}", "\n\n".join(d.text for d in parts), tuple(spans), tuple(relations)))
    return notes


def run_long_notes(args: argparse.Namespace, command: str) -> None:
    """The classifier variants on long notes, exhaustively annotated (``--long-notes``): fit
    and prediction time, the share of ``false`` learnt beside the real one, and F1."""
    from clinie.extractors.relation_classifier import RelationClassifier

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        train = long_notes(list(read_documents(DDI / "train.jsonl")), args.long_notes, args.note_chars, seed)
        test = long_notes(list(read_documents(DDI / "test.jsonl")), args.test_notes, args.note_chars, seed)
        unlabelled = [d.with_annotations(d.entities) for d in test]
        for name in args.variants.split(","):
            options = dict(VARIANTS[name])
            if args.max_steps and "epochs" not in options:
                options["max_steps"] = args.max_steps
            steps: list[int] = []
            started = time.perf_counter()
            classifier = RelationClassifier(SPECS, seed=seed, **options).fit(
                train, on_step=lambda done, total, steps=steps: steps.append(done))
            fit_seconds = time.perf_counter() - started
            started = time.perf_counter()
            predicted = classifier.predict(unlabelled)
            predict_seconds = time.perf_counter() - started
            distance = classifier.hyperparameters["max_distance"]
            pairs = sum(len(candidate_pairs(d, classifier.types, max_distance=distance)) for d in unlabelled)
            row = {"settings": {"seed": seed, "variant": name, "options": options, "notes": len(train),
                                "note_chars": args.note_chars, "test_notes": len(test)},
                   "command": command, "train_chars": sum(len(d.text) for d in train),
                   "labelled_pairs": classifier.n_labelled_pairs, "trained_pairs": classifier.n_train_pairs,
                   "false_share": {"trained": round(float(classifier.train_priors[0]), 4),
                                   "real": true_priors(train, classifier.types, classifier.classes)[0]},
                   "steps": steps[-1], "cut_short": classifier.cut_short,
                   "seconds": {"fit": round(fit_seconds, 1), "per step": round(fit_seconds / steps[-1], 2),
                               "predict": round(predict_seconds, 1)},
                   "test_candidate_pairs": pairs, **outcome(test, predicted)}
            rows.append(row)
            print(f"seed {seed}, {name} {options}: {row['trained_pairs']} of {row['labelled_pairs']} pairs, "
                  f"false {row['false_share']}, {row['steps']} steps in {row['seconds']['fit']} s "
                  f"(cut short: {row['cut_short']}); predicted {pairs} pairs in {row['seconds']['predict']} s; "
                  f"macro F1 {row['macro_f1']:.3f}, P {row['precision']:.3f} R {row['recall']:.3f}, "
                  f"{row['predicted']} predicted / {row['gold']} gold", flush=True)
    path = args.out / "long_notes.json"
    kept = json.loads(path.read_text())["runs"] if path.exists() else []
    measured = {json.dumps(r["settings"], sort_keys=True) for r in rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"corpus": "ddi", "runs": [r for r in kept if json.dumps(r["settings"], sort_keys=True)
                                                          not in measured] + rows}, indent=2) + "\n")
    print(f"\nwritten: {path}")


def run_llm(train: list[Document], test: list[Document], k: int) -> dict[str, Any]:
    from clinie.llm.llamacpp import LlamaCppLLM
    from clinie.retrieval import Embedder
    from clinie.strategies import LLMAccess

    extractor = LLMAccess(LlamaCppLLM(n_threads=2), Embedder()).relations(SPECS, k, train, listed=True)
    started = time.perf_counter()
    pred = classify_listed(test, extractor.classify)
    seconds = (time.perf_counter() - started) / len(test)
    score = macro_f1(test, pred, "pairs")
    usage = extractor.usage
    print(f"LLM (Gemma 3 270M, k={k}): {len(test)} pairs, {seconds:.2f} s/pair, "
          f"{usage.prompt_tokens / len(test):.0f} prompt tokens/pair; macro F1 {score:.3f}", flush=True)
    return {"k": k, "pairs": len(test), "macro_f1": round(score, 4), "seconds_per_pair": round(seconds, 2),
            "prompt_tokens_per_pair": round(usage.prompt_tokens / len(test))}


if __name__ == "__main__":
    main()

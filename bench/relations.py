"""Relations on DDI: the encoder relation classifier and the LLM (multiple choice), true few-shot.

Training pairs and demonstrations only from ``ddi/fewshot/gutierrez_train100_balanced_seed*.jsonl``
(100 listed pairs, 20 per label). Two settings:

1. **Gold entities given** (pair level): each of the 200 pairs of ``chen2023_test_sample200.jsonl``
   is classified; macro F1 over the four interaction types, as Chen et al. 2023 report for
   GPT-3.5 / GPT-4 on the same items. Encoder: every seed; LLM (Gemma 3 270M in llama.cpp,
   k retrieved demonstrations, letters scored from the logits): seed 42, as GPT-3 was run.
2. **End to end** on the full DDI test set (1299 sentences): the encoder tagger (trained on the
   same 100 sentences' entities) finds the drugs, candidate pairs are built between them, the
   relation classifier labels them; strict relation F1 (both spans exact, label right). The
   ceiling that candidate generation leaves (share of gold relations whose pair is a candidate
   given gold spans) is printed too.

    python -m bench.relations --seeds 42,33,21
    python -m bench.relations --seeds 42 --llm-n 200 --skip-e2e
"""

from __future__ import annotations

import argparse
import statistics
import time

from clinie.core import NO_RELATION, Document, Relation, read_documents
from clinie.evaluation import evaluate_relations, evaluate_spans
from clinie.labelstudio import parse_label_config
from clinie.relations import PairTypes, candidate_pairs, labelled_pairs
from tests.support import DATA, ROOT

DDI = DATA / "ddi"
TYPES = ("advise", "effect", "int", "mechanism")
SPECS = parse_label_config((ROOT / "label_configs" / "drug_interactions.xml").read_text()).relation_labels
PUBLISHED = {"GPT-3.5 0-shot": 0.3349, "GPT-3.5 1-shot": 0.3440, "GPT-4 0-shot": 0.6325, "GPT-4 1-shot": 0.6558}


def macro_f1(gold: list[Document], pred: list[Document], mode: str) -> float:
    scores = evaluate_relations(gold, pred)[mode]
    return statistics.mean(scores.per_label[t].f1 if t in scores.per_label else 0.0 for t in TYPES)


def classify_listed(test: list[Document], classify) -> list[Document]:
    """Each test document with a prediction for its one listed pair (gold spans given)."""
    out = []
    for doc in test:
        [(pair, _)] = labelled_pairs(doc, PairTypes(SPECS), listed=True)
        label, score = classify(doc, pair)
        relations = [] if label == NO_RELATION else [Relation(pair.head.id, pair.tail.id, label, score)]
        out.append(doc.with_annotations(doc.entities, relations))
    return out



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--llm-n", type=int, default=200, help="test pairs for the LLM (0: skip it)")
    parser.add_argument("--k", type=int, default=5, help="LLM demonstrations per pair")
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    from clinie.extractors.encoder import EncoderTagger
    from clinie.extractors.relation_encoder import RelationClassifier

    test200 = list(read_documents(DDI / "fewshot" / "chen2023_test_sample200.jsonl"))
    full_test = list(read_documents(DDI / "test.jsonl"))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, list[float]] = {"encoder, gold entities (200 pairs)": [], "encoder, end to end (full test)": [],
                                    "tagger entity F1 (full test)": []}
    llm_row = None
    for seed in seeds:
        train = list(read_documents(DDI / "fewshot" / f"gutierrez_train100_balanced_seed{seed}.jsonl"))
        started = time.perf_counter()
        classifier = RelationClassifier(SPECS).fit(train, listed=True)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        pred = classify_listed(test200, lambda doc, pair: classifier.classify(doc, [pair])[0])
        rows["encoder, gold entities (200 pairs)"].append(macro_f1(test200, pred, "pairs"))
        print(f"seed {seed}: encoder relation classifier fitted on {classifier.n_train_pairs} pairs in "
              f"{fit_seconds:.0f} s; 200 pairs in {time.perf_counter() - started:.1f} s; "
              f"macro F1 {rows['encoder, gold entities (200 pairs)'][-1]:.3f}", flush=True)
        if seed == seeds[0] and args.llm_n:
            llm_row = run_llm(train, test200[: args.llm_n], args.k)
        if args.skip_e2e:
            continue
        sentences = list({d.text: Document(d.id, d.text, d.entities) for d in train}.values())
        tagger = EncoderTagger(["drug", "drug_n", "brand", "group"]).fit(sentences)
        started = time.perf_counter()
        tagged = tagger.predict(full_test)
        predicted = classifier.predict(tagged)
        seconds = time.perf_counter() - started
        rows["tagger entity F1 (full test)"].append(evaluate_spans(full_test, tagged)["strict"].micro.f1)
        strict = evaluate_relations(full_test, predicted)["strict"]
        rows["encoder, end to end (full test)"].append(macro_f1(full_test, predicted, "strict"))
        print(f"seed {seed}: end to end on {len(full_test)} sentences in {seconds:.0f} s: entity F1 "
              f"{rows['tagger entity F1 (full test)'][-1]:.3f}, relation micro F1 {strict.micro.f1:.3f}, "
              f"macro F1 {rows['encoder, end to end (full test)'][-1]:.3f}", flush=True)

    if not args.skip_e2e:
        types = PairTypes(SPECS)
        reachable = total = 0
        for doc in full_test:
            pairs = {(p.head.id, p.tail.id) for p in candidate_pairs(doc, types)}
            total += len(doc.relations)
            reachable += sum((r.head, r.tail) in pairs or (r.tail, r.head) in pairs for r in doc.relations)
        print(f"candidate ceiling with gold spans: {reachable}/{total} gold relations are candidates "
              f"({reachable / total:.3f})")

    print("\n| DDI, macro F1 over the 4 interaction types | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for name, values in rows.items():
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {statistics.mean(values):.3f} ± {sd:.3f} |")
    if llm_row:
        print(f"| {llm_row[0]} | {llm_row[1]:.3f} |" + " |" * len(seeds))
    for name, value in PUBLISHED.items():
        print(f"| {name} (Chen et al. 2023, same 200 pairs) | {value:.3f} |" + " |" * len(seeds))


def run_llm(train: list[Document], test: list[Document], k: int) -> tuple[str, float]:
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
    return f"LLM Gemma 3 270M, k={k}, gold entities ({len(test)} pairs, seed 42)", score


if __name__ == "__main__":
    main()

"""What filter-then-rerank could gain at most, and how much of it the local LLM takes.

On the same pool as ``bench/loop.py`` (``gutierrez_train100_seed<seed>``, drawn in the same
order) the encoder is fine-tuned once; for one band, its hard cases on the 200 Chen et al. items
are answered four ways and scored (strict F1):

- *encoder*: its own answer (the hard spans kept, the possibly missed ones not added);
- *drop hard*: every hard case answered "not an entity" (a confidence threshold, no LLM);
- *rerank*: the LLM's answers (``Rerank.predict``, what the loop measures);
- *oracle*: each hard case answered right — the ceiling of the question as asked; and
  *oracle + boundaries*: right, with the hard span also allowed to move each of its ends by one
  word (what questions offering boundary alternatives could reach at most).

Then per hard case: how often the LLM, the encoder and "not an entity" are right.

    python -m bench.headroom                              # NCBI-disease, seed 42, band < 0.80
    python -m bench.headroom --corpus bc5cdr_chem --band 0.8 --seed 33
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from clinie.core import Document, LabelSpec, Span, Token, number_spans, read_documents, split_sentences, word_ranges
from clinie.evaluation import evaluate_spans
from clinie.evaluation.fewshot import subsample
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.rerank import HardCase, triage
from clinie.llm import LLMOptions, make_llm
from clinie.llm.cache import CallCache
from clinie.retrieval import Embedder
from clinie.strategies import LLMAccess
from harness import DATA

LABELS = {"ncbi_disease": "Disease", "bc5cdr_chem": "Chemical"}


def moved(text: str, words: Sequence[Token], case: HardCase, gold: set[tuple[int, int, str]]) -> Span | None:
    """The gold span among the hard span with each end moved by at most one word, if any."""
    [(first, last)] = word_ranges(words, [case.span])
    for a in (first, first - 1, first + 1):
        for b in (last, last + 1, last - 1):
            for label in case.candidates:
                if 0 <= a <= b < len(words) and (words[a].start, words[b].end, label) in gold:
                    return Span.from_text(text, words[a].start, words[b].end, label)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="ncbi_disease", choices=sorted(LABELS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--band", type=float, default=0.8, help="upper confidence bound of the band")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    args = parser.parse_args()

    files = DATA / args.corpus / "fewshot"
    pool = subsample(list(read_documents(files / f"gutierrez_train100_seed{args.seed}.jsonl")), 100, args.seed)
    test = list(read_documents(files / "chen2023_test_sample200.jsonl"))
    encoder = EncoderTagger([LABELS[args.corpus]]).fit(pool)
    access = LLMAccess(make_llm(LLMOptions(threads=args.threads)), Embedder(), CallCache(":memory:"))
    rerank = access.rerank(encoder, [LabelSpec(LABELS[args.corpus])], (0.0, args.band), pool)

    kinds = ("encoder", "drop hard", "oracle", "oracle + boundaries")
    answers: dict[str, list[Document]] = {name: [] for name in kinds}
    right = {"LLM": 0, "encoder": 0, "not an entity": 0}
    cases = 0
    for doc, windows in zip(test, encoder.predict_words(test)):
        gold = {(s.start, s.end, s.label) for s in doc.entities}
        sentences = split_sentences(doc.text)
        spans: dict[str, list[Span]] = {name: [] for name in answers}
        for words, probabilities in windows:
            sure, hard = triage(doc.text, words, probabilities, encoder.tags, rerank.band, rerank.top)
            for found in spans.values():
                found.extend(sure)
            for case in hard:
                truth = (case.span.start, case.span.end, case.span.label) in gold
                [(first, _)] = word_ranges(words, [case.span])
                predicted = probabilities[first].argmax() != 0  # column 0 is O
                if predicted:  # a span the encoder tagged; a possibly missed mention it did not
                    spans["encoder"].append(case.span)
                if truth:
                    spans["oracle"].append(case.span)
                if (fixed := case.span if truth else moved(doc.text, words, case, gold)) is not None:
                    spans["oracle + boundaries"].append(fixed)
                decided = rerank.decide(doc.text, case, sentences)
                cases += 1
                right["LLM"] += (decided is not None and (decided.start, decided.end, decided.label) in gold) or (
                    decided is None and not truth)
                right["encoder"] += predicted == truth
                right["not an entity"] += not truth
        for name, found in spans.items():
            answers[name].append(number_spans(doc, found))
    answers["rerank (LLM)"] = rerank.predict(test)  # the same questions: answered from the call cache

    print(f"{args.corpus}, pool of 100 (seed {args.seed}), band < {args.band:.2f}: "
          "strict F1 on the 200 Chen et al. items")
    for name in ("encoder", "drop hard", "rerank (LLM)", "oracle", "oracle + boundaries"):
        scores = evaluate_spans(test, answers[name])["strict"].micro
        print(f"  {name:20s} P {scores.precision:.3f}  R {scores.recall:.3f}  F1 {scores.f1:.3f}")
    print(f"{cases} hard cases; answered right by: " + ", ".join(f"{k} {v} ({v / max(cases, 1):.0%})"
                                                                 for k, v in right.items()))


if __name__ == "__main__":
    main()

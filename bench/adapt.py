"""Domain adaptation without a hub download: does continued masked-language-model pretraining of
the embedded encoder (all-MiniLM-L6-v2) on a project's own text make a better tagger?

For each corpus and seed: the project's text is the 100 sentences of
``fewshot/gutierrez_train100_seed<seed>.jsonl`` and the ``--unannotated`` train-split sentences
``bench.student`` draws with the same seed (never a test sentence). MiniLM is pretrained further
on that text (BERT's masking: 15 % of the sub-words, 80 % of them ``[MASK]``; the MLM head is new,
the sentence-transformers checkpoint has none) for ``--epochs`` passes, then the encoder tagger is
fine-tuned from it on the 100 annotations with its defaults, and from MiniLM itself in the same
run; both are scored on the 200 items of ``fewshot/chen2023_test_sample200.jsonl`` (strict
entity F1, as ``bench.loop``).

Writes ``bench/results/adapt/<corpus>.json`` (kept in git; a run replaces the seeds it measured
again with the same settings), rendered by ``python -m bench.results_doc``.

    python -m bench.adapt                                  # 2 corpora x 3 seeds: about 1 h alone on 2 cores
    python -m bench.adapt --corpora ncbi_disease --seeds 42
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import command_line
from bench.loop import LABELS
from bench.student import unannotated_sentences
from clinie.core import read_documents
from clinie.embedded import encoder_path
from clinie.evaluation import evaluate_spans
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.finetune import fine_tune
from harness import DATA, ROOT

OUT = ROOT / "bench" / "results" / "adapt"


def adapt(base: Path, texts: Sequence[str], out: Path, *, epochs: int, learning_rate: float, batch_size: int,
          seed: int) -> Path:
    """``base`` pretrained further on ``texts`` by masked-language modelling, saved to ``out``
    (the weights a token classifier starts from, and the tokenizer)."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_pretrained(base)
    model.train()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    examples = [{"input_ids": tokenizer(t, truncation=True, max_length=128)["input_ids"]} for t in texts if t.strip()]
    fine_tune(model.parameters(), examples, lambda part: model(**collator(part)).loss, epochs=epochs,
              learning_rate=learning_rate, batch_size=batch_size, seed=seed, desc="masked-language modelling")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def run_seed(corpus: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both taggers of one seed, and the adaptation's cost."""
    fewshot = DATA / corpus / "fewshot"
    test = list(read_documents(fewshot / "chen2023_test_sample200.jsonl"))
    pool = list(read_documents(fewshot / f"gutierrez_train100_seed{seed}.jsonl"))
    unannotated = unannotated_sentences(list(read_documents(DATA / corpus / "train.jsonl")), [*pool, *test],
                                        args.unannotated, seed)
    labels = [LABELS[corpus]]

    def f1(model: Path) -> float:
        tagged = EncoderTagger(labels, model).fit(pool).predict(test)
        return round(evaluate_spans(test, tagged)["strict"].micro.f1, 4)

    row: dict[str, Any] = {"settings": {"seed": seed, "unannotated": len(unannotated), "epochs": args.epochs,
                                        "learning_rate": args.learning_rate, "batch_size": args.batch_size}}
    row["encoder_f1"] = f1(encoder_path())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        adapted = adapt(encoder_path(), [d.text for d in [*pool, *unannotated]], Path(tmp), epochs=args.epochs,
                        learning_rate=args.learning_rate, batch_size=args.batch_size, seed=seed)
        row["adapt_seconds"] = round(time.perf_counter() - started, 1)
        row["adapted_f1"] = f1(adapted)
    row["command"] = command_line("bench.adapt")
    return row


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: both taggers' F1 seed by seed, mean ± sd, and the adaptation's time."""
    seeds = [r["settings"]["seed"] for r in rows]
    lines = ["| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |", "|---" * (len(seeds) + 2) + "|"]
    for name, key, digits in (("encoder from MiniLM", "encoder_f1", 3),
                              ("encoder from MiniLM adapted", "adapted_f1", 3),
                              ("adapted − MiniLM", None, 3), ("adaptation seconds", "adapt_seconds", 0)):
        values = [r[key] if key else r["adapted_f1"] - r["encoder_f1"] for r in rows]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in values)
                     + f" | {statistics.fmean(values):.{digits}f} ± {sd:.{digits}f} |")
    return lines


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Merge ``rows`` into the run file at ``path``: rows of other settings or seeds are kept."""
    def key(row: dict[str, Any]) -> tuple:
        return tuple(sorted(row["settings"].items()))

    kept = json.loads(path.read_text())["runs"] if path.exists() else []
    measured = {key(r) for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": sorted([r for r in kept if key(r) not in measured] + rows, key=key)},
                               indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="ncbi_disease,bc5cdr_chem")
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--unannotated", type=int, default=2000, help="unannotated train-split sentences per seed")
    parser.add_argument("--epochs", type=int, default=3, help="passes of masked-language modelling over the text")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for corpus in args.corpora.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_seed(corpus, seed, args)
            write(args.out / f"{corpus}.json", [row])  # saved seed by seed: an interrupted run keeps what it measured
            print(f"{corpus} seed {seed}: encoder {row['encoder_f1']:.3f}, adapted {row['adapted_f1']:.3f} "
                  f"(adaptation {row['adapt_seconds']:.0f} s)", flush=True)
        same = {k: v for k, v in row["settings"].items() if k != "seed"}
        runs = [r for r in json.loads((args.out / f"{corpus}.json").read_text())["runs"]
                if {k: v for k, v in r["settings"].items() if k != "seed"} == same]
        print(f"\n{corpus}\n", *table(runs), sep="\n")


if __name__ == "__main__":
    main()

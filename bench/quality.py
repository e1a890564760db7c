"""Quality at 100 annotations (issue 40): the probe and the encoder, BIO-constrained decoding of
each, and the two combined, on NCBI-disease and BC5CDR-chemical, true few-shot.

For each corpus and seed, the encoder and the probe are fitted once on the 100 sentences of
``fewshot/gutierrez_train100_seed<seed>.jsonl`` (drawn in the order ``bench.loop`` draws its pool
of 100, with the same default hyper-parameters), and read the 200 items of
``fewshot/chen2023_test_sample200.jsonl`` once (``predict_words``: each word's tag distribution);
every variant is decoded from those distributions and scored by strict entity F1
(``evaluate_spans``), as ``bench.loop``:

- ``probe``, ``encoder``: argmax per word (what the strategies did before these runs);
- ``probe-bio``, ``encoder-bio``: BIO-constrained decoding (``clinie.extractors.decoding``), which
  every tagger does since (``decode``);
- ``averaged``, ``averaged-bio``: per word, the mean of the probe's and the encoder's
  distributions (``average_words``), argmax or constrained: not better than ``probe-bio`` over
  the seeds, so no strategy.

Nothing is tuned on the test items: the variants have no parameter (the average is an equal one,
fixed a priori). ``--probe-layers 3,6,9,12,15,18`` adds ``probe-L3-6-9-12-15-18`` (and its
``-bio`` decoding): the probe on the hidden states of those layers instead of ``DEPTHS``' (Gemma
270M: 6, 9, 12, 15), read by a second copy of the LLM. ``--probe-steps 3000`` adds
``probe-S3000``: the probe's head trained for at most 3,000 steps (``probe.STEP_BUDGET``, its
default since; ``probe`` in the runs saved before it is the 60 epochs unbudgeted, as its
hyperparameters say).

Each (corpus, seed) run is a JSON file ``--out/<corpus>/seed<seed>.json`` with the command that
wrote it; a saved run is read, not run again, and only the variants it lacks are computed (the
encoder is then fitted only if an encoder variant is missing).

    python -m bench.quality                                   # 6 runs: about half an hour on 2 cores
    python -m bench.quality --corpora ncbi_disease --seeds 42
    python -m bench.quality --variants probe,probe-bio        # the probe's alone: minutes
    python -m bench.quality --variants= --probe-layers 3,6,9,12,15,18  # the layers variant alone, added
    python -m bench.quality --variants= --probe-steps 3000    # the step-budget variant alone, added
    python -m bench.quality --saved                           # the table of the runs saved so far
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import command_line
from bench.loop import LABELS
from clinie.core import Document, Token, number_spans, read_documents
from clinie.evaluation.fewshot import subsample
from clinie.evaluation.metrics import evaluate_spans
from clinie.extractors.encoder import EncoderTagger, decode
from clinie.extractors.probe import ProbeTagger
from clinie.llm.hidden import HiddenStates
from harness import DATA, ROOT

Pieces = list[tuple[list[Token], np.ndarray]]  # a document's words and tag distributions, piece by piece


def average_words(first: Pieces, second: Pieces, weight: float = 0.5) -> Pieces:
    """``first``'s pieces with each word's distribution averaged with ``second``'s for the same
    word (matched by its offsets): ``weight`` of ``first``'s, the rest of ``second``'s. A word
    ``second`` does not tag keeps ``first``'s distribution.

    >>> from clinie.core import tokenize
    >>> words = tokenize("acute asthma")
    >>> [(_, p)] = average_words([(words, np.array([[1., 0.], [.2, .8]]))], [(words[1:], np.array([[.6, .4]]))])
    >>> p.round(3).tolist()
    [[1.0, 0.0], [0.4, 0.6]]
    """
    rows = {(w.start, w.end): p[n] for words, p in second for n, w in enumerate(words)}
    out: Pieces = []
    for words, p in first:
        mixed = np.array(p, dtype=np.float64, copy=True)
        for n, w in enumerate(words):
            if (other := rows.get((w.start, w.end))) is not None:
                mixed[n] = weight * p[n] + (1 - weight) * other
        out.append((words, mixed))
    return out


BASE = ("probe", "probe-bio", "encoder", "encoder-bio", "averaged", "averaged-bio")
POOL_SIZE = 100


def decoded(test: Sequence[Document], read: Sequence[Pieces], tags: Sequence[str], constrained: bool) -> list[Document]:
    """``test`` with the spans decoded from each document's pieces."""
    return [number_spans(doc, [s for words, p in pieces
                               for s in decode(doc.text, words, p, tags, constrained=constrained)[0]])
            for doc, pieces in zip(test, read)]


def scored(test: Sequence[Document], predicted: Sequence[Document]) -> dict[str, Any]:
    """Strict micro precision, recall, F1 and counts."""
    return evaluate_spans(test, predicted)["strict"].micro.as_dict()


def layered_states(layers: Sequence[int]) -> HiddenStates:
    """A copy of the LLM of its own (features cached apart) reading ``layers`` instead of ``DEPTHS``'."""
    states = HiddenStates()
    states.layers = tuple(sorted(set(layers)))
    states.dim = states._lm.config.hidden_size * len(states.layers)
    return states


#: a probe variant beside the default one: its name, and the probe it fits (given the labels)
OtherProbe = tuple[str, Callable[[Sequence[str]], ProbeTagger]]


def one_run(corpus: str, seed: int, test: Sequence[Document], saved: dict[str, Any] | None,
            states: Callable[[], HiddenStates], others: Sequence[OtherProbe],
            command: str, base: Sequence[str] = BASE) -> dict[str, Any]:
    """The run of (corpus, seed): ``saved`` with the variants of ``base`` (and ``others``') it lacks."""
    labels = [LABELS[corpus]]
    pool = subsample(list(read_documents(DATA / corpus / "fewshot" / f"gutierrez_train100_seed{seed}.jsonl")),
                     POOL_SIZE, seed)
    run = saved or {"corpus": corpus, "seed": seed, "pool": f"gutierrez_train100_seed{seed}.jsonl",
                    "pool_ids": [d.id for d in pool], "test": "chen2023_test_sample200.jsonl",
                    "test_items": len(test), "variants": {}, "seconds": {}, "commands": []}
    if run["pool_ids"] != [d.id for d in pool]:
        raise ValueError(f"{corpus} seed {seed}: the saved run was fitted on another pool")
    wanted = [*base, *(v for name, _ in others for v in (name, f"{name}-bio"))]
    missing = [v for v in wanted if v not in run["variants"]]
    if not missing:
        return run
    read: dict[str, list[Pieces]] = {}
    tags: list[str] = []
    if any(v.removesuffix("-bio") in ("probe", "averaged") for v in missing):
        started = time.perf_counter()
        probe = ProbeTagger(labels, states).fit(pool)
        read["probe"] = probe.predict_words(test)
        tags = list(probe.tags)
        run["seconds"]["probe"] = round(time.perf_counter() - started, 1)
        run["probe"] = {"layers": list(probe.states.layers), "hyperparameters": probe.hyperparameters}
    if any(v.startswith(("encoder", "averaged")) for v in missing):
        started = time.perf_counter()
        encoder = EncoderTagger(labels).fit(pool)
        read["encoder"] = encoder.predict_words(test)
        tags = list(encoder.tags)
        run["seconds"]["encoder"] = round(time.perf_counter() - started, 1)
        run["encoder"] = {"base_model": encoder.base_model, "hyperparameters": encoder.hyperparameters}
    for name, other in others:
        if any(v.removesuffix("-bio") == name for v in missing):
            started = time.perf_counter()
            probe = other(labels).fit(pool)
            read[name] = probe.predict_words(test)
            tags = list(probe.tags)
            run["seconds"][name] = round(time.perf_counter() - started, 1)
            run[name] = {"layers": list(probe.states.layers), "hyperparameters": probe.hyperparameters}
    if "probe" in read and "encoder" in read:
        read["averaged"] = [average_words(p, e) for p, e in zip(read["probe"], read["encoder"])]
    for variant in missing:
        source, constrained = variant.removesuffix("-bio"), variant.endswith("-bio")
        run["variants"][variant] = scored(test, decoded(test, read[source], tags, constrained))
    run["variants"] = {v: run["variants"][v] for v in [*wanted, *(v for v in run["variants"] if v not in wanted)]}
    run["commands"].append({"command": command, "variants": missing})
    return run


def mean_sd(values: Sequence[float]) -> str:
    return (f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1
            else f"{values[0]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="ncbi_disease,bc5cdr_chem")
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--variants", default=",".join(BASE),
                        help="of " + ", ".join(BASE) + " (those of the probe alone need no encoder)")
    parser.add_argument("--probe-layers", default="", help="also the probe on these layers (comma-separated)")
    parser.add_argument("--probe-steps", type=int, default=0, help="also the probe of at most these many steps")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality")
    parser.add_argument("--saved", action="store_true", help="run nothing: the table of the saved runs")
    args = parser.parse_args()

    corpora, seeds = args.corpora.split(","), [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(BASE):
        parser.error(f"unknown variants {sorted(unknown)}: of {', '.join(BASE)}")
    command = command_line("bench.quality")
    shared: dict[str, HiddenStates] = {}

    def states() -> HiddenStates:
        if "default" not in shared:
            shared["default"] = HiddenStates.shared()
        return shared["default"]

    others: list[OtherProbe] = []
    if args.probe_steps:
        others.append((f"probe-S{args.probe_steps}",
                       lambda labels: ProbeTagger(labels, states, max_steps=args.probe_steps)))
    if args.probe_layers:
        layers = [int(n) for n in args.probe_layers.split(",")]

        def other() -> HiddenStates:
            if "layers" not in shared:
                shared["layers"] = layered_states(layers)
            return shared["layers"]

        others.append(("probe-L" + "-".join(map(str, sorted(set(layers)))),
                       lambda labels: ProbeTagger(labels, other)))

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in corpora}
    for corpus in corpora:
        test = list(read_documents(DATA / corpus / "fewshot" / "chen2023_test_sample200.jsonl"))
        for seed in seeds:
            path = args.out / corpus / f"seed{seed}.json"
            saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
            if args.saved:
                if saved:
                    runs[corpus].append(saved)
                continue
            started = time.perf_counter()
            run = one_run(corpus, seed, test, saved, states, others, command, variants)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(run, indent=1), encoding="utf-8")
            runs[corpus].append(run)
            print(f"{corpus} seed {seed}: " + ", ".join(f"{v} {r['f1']:.3f}" for v, r in run["variants"].items())
                  + f" [{time.perf_counter() - started:.0f} s]", flush=True)

    for corpus, done in runs.items():
        if not done:
            continue
        names = [v for v in done[0]["variants"] if all(v in r["variants"] for r in done)]
        print(f"\n{corpus}: strict F1 on the 200 Chen et al. items, 100 annotations, mean ± sd over seeds "
              f"{', '.join(str(r['seed']) for r in done)}\n")
        print("| variant | F1 | precision | recall |\n|---|---|---|---|")
        for name in names:
            cells = [mean_sd([r["variants"][name][key] for r in done]) for key in ("f1", "precision", "recall")]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

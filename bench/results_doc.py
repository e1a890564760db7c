"""Write ``docs/results.md`` and the README's summary table from the run files kept in git.

Every figure on that page, and in the README between the ``results-summary`` markers, is read
from the run files under ``bench/results/`` (today the learning loop's,
``bench/results/loop/<corpus>/runs/size<n>-seed<s>.json``, written by ``python -m bench.loop``)
with ``clinie.evaluation.study``; nothing is typed by hand. A new run file is picked up the next
time this runs. ``tests/unit/test_results_doc.py`` fails when either differs from what this writes.

    python -m bench.results_doc            # rewrite docs/results.md and the README's summary
    python -m bench.results_doc --check    # write nothing; exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from bench.loop import GPT4_ZERO_SHOT
from clinie.evaluation.study import PICKS, best_in_cv, default_pick, load_run, mean_sd_text, summarise

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
COMMAND = "python -m bench.results_doc"
START = f"<!-- results-summary: written by `{COMMAND}` from bench/results/; do not edit by hand -->"
END = "<!-- /results-summary -->"

CORPORA = {"ncbi_disease": "NCBI-disease", "bc5cdr_chem": "BC5CDR-chem"}
RUN_FILE = re.compile(r"size(\d+)-seed(\d+)\.json")


# ---------------------------------------------------------------------------------------- reading

def loop_runs(results: Path = RESULTS) -> dict[str, list[dict[str, Any]]]:
    """Every saved learning-loop run, per corpus: pool sizes ascending, seeds as the bench lists
    them (42, 33, 21: descending)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    corpora = sorted((p.parent.name for p in (results / "loop").glob("*/runs") if p.is_dir()),
                     key=lambda c: (list(CORPORA).index(c) if c in CORPORA else len(CORPORA), c))
    for corpus in corpora:
        runs_dir = results / "loop" / corpus / "runs"
        keys = sorted(((int(m[1]), int(m[2])) for f in runs_dir.glob("*.json") if (m := RUN_FILE.fullmatch(f.name))),
                      key=lambda key: (key[0], -key[1]))
        if loaded := [run for size, seed in keys if (run := load_run(runs_dir, size, seed))]:
            runs[corpus] = loaded
    return runs


def budget(run: dict[str, Any]) -> float:
    return run["cv"].get("max_llm_share", 1.0)


def studies(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The runs grouped by the command that made them (same strategies, same LLM budget), the
    group with the most runs first."""
    groups: dict[tuple, dict[str, list]] = {}
    for corpus, corpus_runs in runs.items():
        for run in corpus_runs:
            groups.setdefault((tuple(run["test"]), budget(run)), {}).setdefault(corpus, []).append(run)
    out = [{"strategies": list(key[0]), "budget": key[1], "runs": by_corpus} for key, by_corpus in groups.items()]
    return sorted(out, key=lambda s: -sum(map(len, s["runs"].values())))


def _ordered(values: Iterable[int], descending: bool = False) -> list[int]:
    return sorted(set(values), reverse=descending)


def study_command(study: dict[str, Any]) -> str:
    """The bench command that (re)makes a study's runs (it reuses the saved ones)."""
    all_runs = [r for rs in study["runs"].values() for r in rs]
    sizes = _ordered(r["size"] for r in all_runs)
    seeds = _ordered((r["seed"] for r in all_runs), descending=True)
    folds = {r["cv"]["n_folds"] for r in all_runs if r["cv"].get("scheme", "").endswith("-fold")}
    command = (f"python -m bench.loop --corpora {','.join(study['runs'])} --sizes {','.join(map(str, sizes))} "
               f"--seeds {','.join(map(str, seeds))} --strategies {','.join(study['strategies'])} "
               f"--max-llm-share {study['budget']:g}")
    if len(folds) == 1 and (n := folds.pop()) != 5:
        command += f" --folds {n}"
    return command


def study_files(study: dict[str, Any]) -> str:
    all_runs = [r for rs in study["runs"].values() for r in rs]
    sizes = _ordered(r["size"] for r in all_runs)
    seeds = _ordered((r["seed"] for r in all_runs), descending=True)
    corpora = list(study["runs"])

    def brace(items: Sequence[Any]) -> str:
        return str(items[0]) if len(items) == 1 else "{" + ",".join(map(str, items)) + "}"

    return (f"bench/results/loop/{brace(corpora)}/runs/size{brace(sizes)}-seed{brace(seeds)}.json"
            f" ({len(all_runs)} files)")


# ------------------------------------------------------------------------------------- formatting

def pct(share: float) -> str:
    """A share as the tables show it.

    >>> pct(0.255), pct(0.0)
    ('26 %', '0 %')
    """
    return f"{share * 100:.0f} %"


def title(name: str) -> str:
    """A strategy's name as the tables show it."""
    if name == "probe":
        return "probe (every sentence)"
    if name == "llm":
        return "LLM"
    return name.replace("llm-k", "LLM k=") if name.startswith("llm-k") else name


def row_title(name: str) -> str:
    """A strategy's name in the README's summary, said in words."""
    if name == "encoder":
        return "encoder alone"
    if m := re.fullmatch(r"gated-(0\.\d+)", name):
        return f"filter-then-probe, band {m[1]}"
    if m := re.fullmatch(r"rerank-(0\.\d+)", name):
        return f"filter-then-rerank, band {m[1]}"
    if name == "probe":
        return "probe, every sentence"
    return title(name)


def budget_text(share: float) -> str:
    return {0.25: "¼", 0.5: "½"}.get(share, pct(share))


def corpus_name(corpus: str) -> str:
    return CORPORA.get(corpus, corpus)


def f1_of(run: dict[str, Any], name: str) -> float:
    return run["test"][name]["per_label"]["all"]["f1"]


def share_of(run: dict[str, Any], name: str) -> float | None:
    """The share of the test sentences ``name`` sent to the LLM; None when it has no LLM cost."""
    cost = run["test"][name].get("llm_cost")
    return cost["sentence_share"] if cost else None


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def span(values: Sequence[float], fmt=lambda v: f"{v:.3f}") -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


def pct_span(values: Sequence[float]) -> str:
    low, high = f"{min(values) * 100:.0f}", f"{max(values) * 100:.0f}"
    return f"{low} %" if low == high else f"{low}–{high} %"


# ----------------------------------------------------------------------------------- the tables

def mean_table(study: dict[str, Any]) -> list[str]:
    names = study["strategies"]
    within = f"CV picked within {budget_text(study['budget'])}"
    header = ["corpus", "pool", "seeds", *map(title, names), f"{within} (picks)", "CV picked, no budget (picks)",
              "the backend's default (picks)", "GPT-4 zero-shot (published)"]
    rows = []
    for corpus, runs in study["runs"].items():
        summary = summarise(runs)
        for size in summary["sizes"]:
            row = summary["by_size"][size]
            cells = [mean_sd_text(row["strategies"][n]["f1"]) for n in names]
            picks = [f"{mean_sd_text(row['strategies'][p]['f1'])} ({', '.join(row[p])})" for p in PICKS]
            gpt4 = f"{GPT4_ZERO_SHOT[corpus]:.3f}" if corpus in GPT4_ZERO_SHOT else "–"
            rows.append([corpus_name(corpus), str(size), ", ".join(map(str, row["seeds"])), *cells, *picks, gpt4])
    return table(header, rows)


def run_table(study: dict[str, Any]) -> list[str]:
    names = study["strategies"]
    within = f"CV picked within {budget_text(study['budget'])} → test F1"
    header = ["corpus, seed", "pool", *map(title, names), within,
              "sentences the LLM read", "CV picked, no budget → test F1", "the backend's default → test F1",
              "ECE of the pick, raw → calibrated"]
    rows = []
    for corpus, runs in study["runs"].items():
        for run in runs:
            cells = []
            for name in names:
                cell = f"{f1_of(run, name):.3f} ({run['cv']['strategies'][name]['mean_f1']:.3f})"
                if (share := share_of(run, name)) is not None and share < 1:
                    cell += f", {pct(share)}"
                cells.append(cell)
            picked = run["selected"]
            overall = run["test"][picked]["per_label"]["all"]
            test_share = share_of(run, picked) or 0.0
            cv_share = run["cv"]["strategies"][picked].get("llm_share", 0.0)
            free, default = best_in_cv(run), default_pick(run)
            calibration = run["test"][picked].get("calibration", {})
            ece = (f"{calibration['ece_raw']:.2f} → {calibration['ece_calibrated']:.2f}"
                   if "ece_calibrated" in calibration else "–")
            rows.append([f"{corpus_name(corpus)}, {run['seed']}", str(run["size"]), *cells,
                         f"{picked} → **{overall['f1']:.3f} [{overall['f1_low']:.3f}, {overall['f1_high']:.3f}]**",
                         f"{pct(test_share)} ({pct(cv_share)} in CV)", f"{free} → {f1_of(run, free):.3f}",
                         f"{default} → {f1_of(run, default):.3f}", ece])
    return table(header, rows)


def _count(names: Iterable[str]) -> str:
    return ", ".join(f"{name} ×{n}" for name, n in Counter(names).most_common())


def findings(study: dict[str, Any]) -> list[str]:
    """What the runs show, counted from them: nothing here is typed by hand."""
    runs = [(corpus, r) for corpus, rs in study["runs"].items() for r in rs]
    names = study["strategies"]
    n = len(runs)
    lines = []
    best = []
    for _, run in runs:
        top = max(round(f1_of(run, name), 3) for name in names)
        best.append(" = ".join(name for name in names if round(f1_of(run, name), 3) == top))
    lines.append(f"- Highest test F1 (to three decimals; ties joined by =), per run: {_count(best)} — of {n} runs.")
    bands = [name for name in names if name.startswith(("gated-", "rerank-"))]
    if "encoder" in names and bands:
        beat = sum(all(f1_of(run, b) > f1_of(run, "encoder") for b in bands) for _, run in runs)
        lines.append(f"- Every band ({', '.join(bands)}) scored above the encoder alone in {beat} of {n} runs.")
    if "probe" in names:
        above = [(c, r) for c, r in runs if c in GPT4_ZERO_SHOT]
        won = sum(f1_of(r, "probe") > GPT4_ZERO_SHOT[c] for c, r in above)
        lines.append(f"- The probe reading every sentence scored above GPT-4 zero-shot's published figure in "
                     f"{won} of {len(above)} runs.")
    lines.append(f"- Picked by cross-validation within {pct(study['budget'])} of the sentences: "
                 f"{_count(r['selected'] for _, r in runs)}; with no budget: {_count(best_in_cv(r) for _, r in runs)}; "
                 f"by the backend's default: {_count(default_pick(r) for _, r in runs)}.")
    picked_llm = [(c, r) for c, r in runs if share_of(r, r["selected"])]
    if picked_llm:
        more = [r for _, r in picked_llm
                if share_of(r, r["selected"]) > r["cv"]["strategies"][r["selected"]].get("llm_share", 0.0)]
        over = [share_of(r, r["selected"]) for _, r in picked_llm if share_of(r, r["selected"]) > study["budget"]]
        lines.append(f"- Where the pick sent sentences to the LLM ({len(picked_llm)} runs), it sent a larger share of "
                     f"the test sentences than of the pool's in cross-validation in {len(more)}, and more than the "
                     f"budget in {len(over)}" + (f" ({', '.join(pct(s) for s in over)})." if over else "."))
    gaps_encoder, gaps_probe = [], []
    for corpus_runs in study["runs"].values():
        summary = summarise(corpus_runs)
        for size in summary["sizes"]:
            at = summary["by_size"][size]["strategies"]
            if "encoder" in at:
                gaps_encoder.append(at["selected"]["f1_mean"] - at["encoder"]["f1_mean"])
            if "probe" in at:
                gaps_probe.append(at["probe"]["f1_mean"] - at["selected"]["f1_mean"])
    if gaps_encoder and gaps_probe:
        lines.append(f"- On the mean over seeds, per corpus and pool, the pick within the budget scored from "
                     f"{min(gaps_encoder):+.3f} to {max(gaps_encoder):+.3f} against the encoder alone, and from "
                     f"{min(gaps_probe):.3f} to {max(gaps_probe):.3f} below the probe.")
    if "probe" in names:
        gaps = default_gaps(study)
        lines.append("- The backend's default against the best single strategy of each corpus and pool (mean test F1 "
                     "over seeds; the mean over corpora per pool size): "
                     + "; ".join(f"{size} sentences {fmean(g):+.3f} ({len(g)} corpora)" for size, g in gaps.items())
                     + ".")
    ece = [r["test"][r["selected"]].get("calibration", {}) for _, r in runs]
    ece = [c for c in ece if "ece_calibrated" in c]
    if ece:
        lines.append(f"- Calibration on the pool's cross-validated spans took the pick's expected calibration error "
                     f"on the test spans from {span([c['ece_raw'] for c in ece], lambda v: f'{v:.2f}')} to "
                     f"{span([c['ece_calibrated'] for c in ece], lambda v: f'{v:.2f}')} ({len(ece)} runs).")
    return lines


METHOD = """\
Each run: a pool of `n` sentences is drawn from `data/<corpus>/fewshot/gutierrez_train100_seed<seed>.jsonl`
(the only training data: each pool the first `n` of that file shuffled with the seed); cross-validation over
the pool alone picks a strategy, among those that sent at most the budget's share of the pool's sentences to
the LLM in that cross-validation; then every strategy is fitted on the whole pool and scored — strict entity
F1, exact span and label — on the 200 items of `data/<corpus>/fewshot/chen2023_test_sample200.jsonl`, the
items behind Chen et al. 2023's published GPT-4 figures. The strategies are those of the backend's selection
([learning-loop.md](learning-loop.md)): `encoder` the fine-tuned MiniLM alone; `gated-0.NN` filter-then-probe (the
probe reads only the sentences holding a case the encoder is less sure of than 0.NN); `probe` the tagger on
the local LLM's hidden states, reading every sentence; `rerank-0.NN` filter-then-rerank; `llm-kN` the
prompted LLM.

Reading the tables: a strategy's cell is its test F1 with its CV F1 (mean over the pool's folds) in brackets,
and, for a strategy that sends only some sentences to the LLM, the share of the test sentences it sent. The
pick's test F1 comes with its 95 % bootstrap interval over the test documents, and the share of sentences it
sent to the LLM on the test items and in cross-validation. "No budget" is what cross-validation would have
picked from the same folds with `--max-llm-share 1` (the backend's default): the best CV F1. The expected
calibration error is the pick's, on the test spans, raw and calibrated on the pool's cross-validated spans."""


def cold_start_section(results: Path = RESULTS) -> list[str]:
    """What a fresh project is shown before its first model (``python -m bench.cold_start``)."""
    runs = [json.loads(f.read_text()) for f in sorted((results / "cold_start").glob("*.json"))]
    if not runs:
        return []
    lines = ["", "## Cold start: what a fresh project is shown", "",
             "Before a project's first model, on held-out sentences (the first items of the Chen et al. 2023 "
             "test sample), with the embedded Gemma 3 270M: strict precision, recall and F1 of the regions each "
             "option shows, the wrong regions an annotator must find and delete per 100 sentences, how well the "
             "regions' scores rank right above wrong (AUROC; – where there is nothing to rank), and the time. "
             "`llm-kN`: the word/TAG tagger with N demonstrations; `verified-kN`: its regions the LLM confirms "
             "on a second look; with N = 5 the demonstrations come from a project's first few annotations. "
             "Showing nothing (`CLINIE_COLD_START=none`) shows no wrong region and no right one. Times compare "
             "within a run only; `verified-kN` reuses the run's cached word/TAG answers of `llm-kN`, so its time "
             "is the second look alone."]
    for run in runs:
        rows = [[name, f"{o['precision']:.3f}", f"{o['recall']:.3f}", f"{o['f1']:.3f}", str(o["regions_shown"]),
                 f"{o['wrong_per_100_sentences']:.0f}", "–" if o["auroc"] is None else f"{o['auroc']:.2f}",
                 f"{o['seconds_per_sentence']:.1f}"] for name, o in run["options"].items()]
        lines += ["", f"### {corpus_name(run['corpus'])}: {run['items']} sentences, {run['gold_regions']} gold "
                      f"regions, {run['demos']} annotations to retrieve from", "",
                  f"`{run['command']}` (model `{run['llm']}`):", "",
                  *table(["option", "precision", "recall", "F1", "regions shown", "wrong / 100 sentences",
                          "AUROC of scores", "s / sentence"], rows)]
    return lines


def first_model_section(results: Path = RESULTS) -> list[str]:
    """How long a project waits after Start training, and what it is served (``python -m bench.first_model``)."""
    runs = [json.loads(f.read_text()) for f in sorted((results / "first_model").glob("*.json"))
            if f.name != "relations.json"]
    lines = []
    for run in runs:
        lines += ["", "## Time to a first model, and to the selected strategy", "",
                  f"After *Start training*, {corpus_name(run['corpus'])} annotations by webhook into a fresh backend "
                  "on the embedded models, which loaded what it loads at start (the LLMs of the cold start and of "
                  "the probe; rows before that change loaded them within the training): each version that served, "
                  "seconds after the training started, and how "
                  f"it pre-annotates the first {run['test_items']} Chen et al. 2023 test items as /predict shows them "
                  "(precision-first thresholds applied): strict precision, recall, F1 and wrong regions per 100 "
                  "sentences. The cold start before it (the LLM's confirmed regions) is measured in *Cold start*. "
                  "One run each, alone on 2 cores."]
        for row in (r for r in run.get("runs", []) if "versions" in r):  # older rows lack them
            lines += ["", f"### {row['annotations']} annotations", "", f"`{row['command']}`: the training took "
                      f"{row['training_seconds']:.0f} s; the selected strategy, {row['selected']}, served at "
                      f"{row['selected_seconds']:.0f} s.", "", *version_table(row["versions"]),
                      *(["", f"Its stages: {stages_text(row['stages'])}."] if row.get("stages") else [])]
        if busy := run.get("busy"):
            lines += ["", "### A busy project", "",
                      f"`{busy['command']}`: an annotation every {busy['every_seconds']:g} s up to "
                      f"{busy['annotations']}, a training every {busy['train_every']} ({busy['trainings']} started, "
                      f"{busy['selections_superseded']} selections superseded by a newer training): what served "
                      "over time.", "", *version_table(busy["versions"])]
    if (path := results / "first_model" / "relations.json").exists():
        run = json.loads(path.read_text())
        rows = [[f"{v['seconds']:.0f}", f"`{v['version']}`", "yes" if v["relations"] else "no"]
                for v in run["versions"]]
        lines += ["", "### A relation project on long notes", "",
                  f"`{run['command']}`: {run['notes']} notes of "
                  f"{min(run['characters']):,}–{max(run['characters']):,} "
                  f"characters made of DDI training sentences ({run['regions']} regions, {run['arrows']} arrows), "
                  "imported with their region ids under the drug-interaction config, then *Start training*, alone on "
                  f"2 cores: the entities served at {run['entities_seconds']:.0f} s, the relations at "
                  + (f"{run['relations_seconds']:.0f} s" if run["relations_seconds"] is not None else "no time (never)")
                  + f" (watched until then; the selection's later stages went on). The version served last "
                  f"(`{run['served_last']}`) on {run['test_notes']} notes of DDI test sentences: entity F1 "
                  f"{run['entity_f1']:.3f} (precision {run['entity_precision']:.3f}), relation F1 (end to end) "
                  f"{run['relation_f1']:.3f}.", "", *table(["serves from (s)", "version", "relations"], rows),
                  "", f"Its stages: {stages_text(run['stages'])}."]
    return lines


def stages_text(stages: Sequence[Sequence[Any]]) -> str:
    """A training's stages as ``bench.first_model`` watched them: each one's name and start."""
    return "; ".join(f"{name} from {seconds:.0f} s" for seconds, name in stages)


def version_table(versions: Sequence[dict[str, Any]]) -> list[str]:
    """The versions that served, from when, and how they pre-annotate (``bench.first_model``)."""
    rows = [[f"{v['seconds']:.0f}", f"`{v['version']}`", v["strategy"],
             *(("–",) * 4 if "f1" not in v else (f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}",
                                                 f"{v['wrong_per_100']:.0f}"))] for v in versions]
    return table(["serves from (s)", "version", "strategy", "precision", "recall", "F1", "wrong / 100 sentences"], rows)


def precision_section(results: Path = RESULTS) -> list[str]:
    """What each CLINIE_MIN_PRECISION shows on test items (``python -m bench.precision``)."""
    from bench.precision import summary

    lines = []
    for corpus_dir in sorted(p for p in (results / "precision").glob("*") if p.is_dir()):
        runs = [json.loads(f.read_text()) for f in sorted((corpus_dir / "runs").glob("*.json"))]
        if not runs:
            continue
        if not lines:
            lines += ["", "## Precision first: what each `CLINIE_MIN_PRECISION` shows", "",
                      "Thresholds per label chosen on the strategy's cross-validated predictions over the pool alone, "
                      "applied to its predictions of the 200 Chen et al. 2023 test items (never used to choose them): "
                      "precision, recall, F1 and wrong regions per 100 sentences of what is shown, mean over seeds; "
                      "level 0 shows every region. `python -m bench.precision` (its runs so far below; no timing)."]
        for size in sorted({r["size"] for r in runs}):
            at = [r for r in runs if r["size"] == size]
            for strategy in at[0]["test"]:
                rows = [[f"{level:g}", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                         f"{m['wrong_per_100']:.0f}"] for level, m in summary(at, strategy).items()]
                lines += ["", f"### {corpus_name(corpus_dir.name)}, {size} annotations, {strategy} "
                              f"(seeds {', '.join(str(r['seed']) for r in at)})", "",
                          *table(["CLINIE_MIN_PRECISION", "precision", "recall", "F1", "wrong / 100 sentences"], rows)]
    return lines


def mean_sd_of(values: Sequence[float]) -> str:
    """``0.684 ± 0.022`` (the sample's sd), or the one value."""
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def quality_section(results: Path = RESULTS) -> list[str]:
    """Decoding and combinations at 100 annotations (``python -m bench.quality``)."""
    lines: list[str] = []
    for corpus_dir in sorted(p for p in (results / "quality").glob("*") if p.is_dir()):
        runs = [json.loads(f.read_text()) for f in sorted(corpus_dir.glob("seed*.json"))]
        if not runs:
            continue
        if not lines:
            lines += ["", "## Quality at 100 annotations: decoding, the probe and the encoder combined", "",
                      "The encoder and the probe fitted once per seed on the 100 sentences of the pool, each variant "
                      "decoded from their per-word tag distributions on the 200 Chen et al. 2023 test items "
                      "(`-bio`: BIO-constrained decoding, `clinie.extractors.decoding`; `averaged`: the mean of the "
                      "probe's and the encoder's distributions, equal weights fixed a priori; `probe-L…`: the probe "
                      "on those layers of the LLM instead of its default ones; `probe-S…`: the probe's head trained "
                      "for at most that many steps, `probe` being the 60 epochs unbudgeted). Strict F1, mean ± sd over "
                      "the seeds, "
                      "and per seed; nothing tuned on the test items."]
        seeds = [r["seed"] for r in runs]
        variants = sorted((v for v in runs[0]["variants"] if all(v in r["variants"] for r in runs)),
                          key=lambda v: v.startswith(("probe-L", "probe-S")))
        rows = [[v, mean_sd_of([r["variants"][v]["f1"] for r in runs]),
                 f"{statistics.fmean(r['variants'][v]['precision'] for r in runs):.3f}",
                 " / ".join(f"{r['variants'][v]['f1']:.3f}" for r in runs)] for v in variants]
        commands = ", ".join(sorted({f"`{c['command']}`" for r in runs for c in r["commands"]}))
        lines += ["", f"### {corpus_name(corpus_dir.name)} (seeds {', '.join(map(str, seeds))})", "",
                  *table(["variant", "F1", "precision (mean)", "F1 per seed"], rows), "", f"Run by {commands}."]
    return lines


def active_section(results: Path = RESULTS) -> list[str]:
    """Annotating in clinie's order against random order (``python -m bench.active``)."""
    runs = [json.loads(f.read_text()) for f in sorted((results / "active").glob("*.json"))]
    if not runs:
        return []
    lines = ["", "## Active learning: annotating the tasks clinie is least sure of first", "",
             "Two simulated teams annotate the same pool of unannotated train sentences, both starting with the "
             "same random sentences; one goes on in random order, the other in clinie's order (the lowest task "
             "score first, as Label Studio's data manager sorts by *Prediction score* ascending; the task score is "
             "the encoder's least sure word). At each size the encoder is trained on what is annotated and scored "
             "on the 200 Chen et al. 2023 test items: strict F1, mean ± sd over the seeds, and the words annotated "
             "(annotators pay by the word). Then how well the raw scores tell right from wrong on the test items, "
             "clinie's order: spans (exact span and label) and tasks (every span exact, none missing) — AUROC, "
             "Brier score, expected calibration error."]
    for run in runs:
        seeds = run["runs"]
        sizes = [point["annotations"] for point in seeds[0]["curves"]["random"]]
        rows, separation = [], []
        for i, size in enumerate(sizes):
            at = {team: [r["curves"][team][i] for r in seeds] for team in ("random", "clinie")}
            f1 = {team: [p["f1"] for p in points] for team, points in at.items()}
            rows.append([str(size), mean_sd_text(f1["random"]), mean_sd_text(f1["clinie"]),
                         f"{fmean(f1['clinie']) - fmean(f1['random']):+.3f}",
                         f"{sum(b > a for a, b in zip(f1['random'], f1['clinie']))} of {len(seeds)}",
                         f"{fmean([p['words'] for p in at['random']]):.0f}",
                         f"{fmean([p['words'] for p in at['clinie']]):.0f}"])
            for kind in ("span_scores", "task_scores"):
                values = [p[kind] for p in at["clinie"]]
                aurocs = [v["auroc"] for v in values if v["auroc"] is not None]
                separation.append([str(size), kind.split("_")[0], "–" if not aurocs else f"{fmean(aurocs):.2f}",
                                   f"{fmean([v['brier'] for v in values]):.3f}",
                                   f"{fmean([v['ece'] for v in values]):.3f}"])
        commands = sorted({r["command"] for r in seeds})
        lines += ["", f"### {corpus_name(run['corpus'])}: seeds {', '.join(str(r['seed']) for r in seeds)}, "
                      f"a pool of {seeds[0]['pool']} train sentences, {seeds[0]['start']} random annotations first", "",
                  "; ".join(f"`{c}`" for c in commands) + ":", "",
                  *table(["annotations", "random order F1", "clinie's order F1", "difference",
                          "seeds where clinie's order is higher", "words annotated, random", "words annotated, clinie"],
                         rows), "",
                  *table(["annotations", "scores of", "AUROC", "Brier", "ECE"], separation)]
    return lines


def goals_table(runs: dict[str, list[dict[str, Any]]], results: Path = RESULTS, size: int = 100) -> list[str]:
    """Issue 23's goal table at ``size`` annotations: the encoder, the probe, the best student on
    the test and cross-validation's pick on NER (the student runs ``runs``, per corpus), the
    relation classifier and its student on DDI (``bench.relations``, the seeds that have a
    student); mean ± sd over the seeds, against GPT-4 (published) and the goal."""
    from bench.loop import GPT4_ONE_SHOT
    from bench.relations import GOALS as RELATION_GOALS, PUBLISHED, STEPS
    from bench.student import GOALS
    from clinie.strategies import parse_strategies

    rows = []
    for corpus, saved in runs.items():
        at_size = [r for r in saved if r["size"] == size]
        if not at_size:
            continue
        summary = summarise(at_size)
        at = summary["by_size"][size]
        students = [n for n in summary["strategies"] if parse_strategies(n)[0].kind.learns_from_unannotated]
        best = best_single(at["strategies"], students)
        rows.append([corpus_name(corpus), ", ".join(map(str, at["seeds"])),
                     *(mean_sd_text(at["strategies"][n]["f1"]) for n in ("encoder", "probe")),
                     f"{mean_sd_text(at['strategies'][best]['f1'])} ({best})",
                     f"{mean_sd_text(at['strategies']['selected']['f1'])} ({_count(at['selected'])})",
                     f"{GPT4_ZERO_SHOT[corpus]:.3f} / {GPT4_ONE_SHOT[corpus]:.3f}", f"{GOALS[corpus]:.2f}"])
    path = results / "relations" / "ddi.json"
    measured = json.loads(path.read_text())["runs"] if path.exists() else []

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        """What a row measured but its seed and its teaching: a student's and its teacher's are one."""
        return {k: v for k, v in row["settings"].items()
                if k not in ("seed", "llm_pairs", "unannotated", "teacher_priors")}

    taught = [r for r in measured if r["settings"].get("unannotated") and not r["settings"]["test_limit"]]
    pairs = [(teacher, student) for student in taught for teacher in measured
             if "unannotated" not in teacher["settings"] and plain(teacher) == plain(student)
             and teacher["settings"]["seed"] == student["settings"]["seed"]]
    if pairs:
        seeds = ", ".join(str(student["settings"]["seed"]) for _, student in pairs)
        gpt4 = f"{PUBLISHED['GPT-4 0-shot']:.3f} / {PUBLISHED['GPT-4 1-shot']:.3f}"
        figures = [("DDI relations, gold entities (200 listed pairs, macro)", lambda r: r["gold_200_macro_f1"], gpt4,
                    RELATION_GOALS["listed pairs"])]
        figures += [(f"DDI relations end to end ({how}, strict macro)",
                     lambda r, step=step: r["steps"][step]["macro_f1"], "–", RELATION_GOALS["end to end"])
                    for step, how in zip(STEPS[2:], ("as trained", "priors adapted"))]
        for name, figure, published, goal in figures:
            rows.append([name, seeds, mean_sd_text([figure(t) for t, _ in pairs]), "–",
                         mean_sd_text([figure(s) for _, s in pairs]), "–", published, f"{goal:.2f}"])
    if not rows:
        return []
    return ["", f"### The goals at {size} annotations", "",
            "Mean ± sd over the seeds named. *Best student*: the student variant with the best mean test F1, named "
            "(read on the test, so an upper bound on what choosing a variant gives); *CV's pick*: what "
            "cross-validation over the annotations picked with the students among the candidates, counted over the "
            "seeds. On DDI the *encoder* is the relation classifier, the students' teacher, measured in the same "
            "run.", "",
            *table(["", "seeds", "encoder", "probe", "best student", "CV's pick", "GPT-4 0-shot / 1-shot (published)",
                    "goal"], rows)]


def student_section(results: Path = RESULTS) -> list[str]:
    """Teacher -> student (``python -m bench.student``), per corpus, after the goal table. The
    tables read the runs that hold every strategy of ``bench.student.STRATEGIES``; a run still
    missing some (a study run strategy by strategy) is named as under way, so that it neither
    narrows the tables to what it has nor enters their means."""
    from bench.student import STRATEGIES, tables
    from clinie.strategies import parse_strategies

    every = {s.name for s in parse_strategies(STRATEGIES)}
    saved = {corpus: [json.loads(f.read_text()) for f in sorted((results / "student" / corpus / "runs").glob("*.json"))]
             for corpus in CORPORA}
    runs = {corpus: [r for r in found if every <= set(r["test"])] for corpus, found in saved.items()}
    under_way = {corpus: [r for r in found if not every <= set(r["test"])] for corpus, found in saved.items()}
    if not any(saved.values()):
        return []
    lines = ["", "## Teacher → student: the probe teaches the encoder on unannotated text", "",
             "Pools of annotated sentences drawn from `fewshot/gutierrez_train100_seed<seed>.jsonl`; the unannotated "
             "text is train-split sentences drawn with the seed, none of them a sentence of that file or of the test "
             "items, their gold spans dropped. The teacher is the probe fitted on the same annotations (in "
             "cross-validation, on the fold's alone); `student-0.NN` is an encoder trained on the annotations and on "
             "the sentences the teacher labels at least 0.NN sure (`student-0.00`: all of them); `distilled` is an "
             "encoder trained on the annotations and on every unannotated sentence, each word learnt as the "
             "teacher's distribution over the tags (soft labels). Cross-validation over the pool picks among the "
             "strategies, each then fitted on the whole pool and scored on the test items."]
    lines += goals_table(runs, results)
    for corpus, complete in runs.items():
        if complete or under_way[corpus]:
            lines += ["", f"### {corpus_name(corpus)}"]
        if complete:
            commands = sorted({run["command"] for run in complete if "command" in run})
            lines += ["", "Runs made by " + "; ".join(f"`{c}`" for c in commands)
                      + f" (resumable), read from `bench/results/student/{corpus}/runs/`.", "",
                      *tables(corpus, complete)]
        if under_way[corpus]:
            lines += ["", "Under way, not in the tables: "
                      + "; ".join(f"pool {r['size']}, seed {r['seed']}, {', '.join(sorted(every - set(r['test'])))} "
                                  f"to add (`python -m bench.student --corpora {corpus} --sizes {r['size']} "
                                  f"--seeds {r['seed']}`)"
                                  for r in sorted(under_way[corpus], key=lambda r: (r["size"], r["seed"]))) + "."]
    return lines


def adapt_section(results: Path = RESULTS) -> list[str]:
    """Masked-language-model domain adaptation of the encoder (``python -m bench.adapt``), per corpus."""
    from bench.adapt import table

    saved = {corpus: json.loads(path.read_text())["runs"] for corpus in CORPORA
             if (path := results / "adapt" / f"{corpus}.json").exists()}
    if not saved:
        return []
    lines = ["", "## Domain adaptation: MiniLM pretrained further on the project's text", "",
             "All-MiniLM-L6-v2 pretrained further by masked-language modelling on the 100 annotated sentences of "
             "`fewshot/gutierrez_train100_seed<seed>.jsonl` and the unannotated train-split sentences "
             "`bench.student` draws with the seed, then fine-tuned as the encoder tagger on the 100 annotations; "
             "against the encoder fine-tuned from MiniLM itself in the same run. Strict F1 on the 200 Chen et al. "
             "items; read from `bench/results/adapt/<corpus>.json`."]
    for corpus, runs in saved.items():
        configurations: dict[tuple, list[dict]] = {}
        for run in runs:
            settings = {k: v for k, v in run["settings"].items() if k != "seed"}
            configurations.setdefault(tuple(sorted(settings.items())), []).append(run)
        for configuration, group in configurations.items():
            commands = "; ".join(sorted({f"`{r['command']}`" for r in group}))
            described = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in configuration)
            lines += ["", f"### {corpus_name(corpus)}: {described}", "", f"Runs made by {commands}.", "",
                      *table(group)]
    return lines


def relations_section(results: Path = RESULTS) -> list[str]:
    """DDI relations and where the end-to-end figure is lost (``python -m bench.relations``)."""
    from bench.relations import PUBLISHED, configurations, table

    path = results / "relations" / "ddi.json"
    if not path.exists():
        return []
    runs = [r for r in json.loads(path.read_text())["runs"] if not r["settings"]["test_limit"]]
    if not runs:
        return []
    lines = ["", "## Relations (DDI): where the end-to-end figure is lost", "",
             "The relation classifier (MiniLM, entity markers) is fitted on the 100 listed pairs of "
             "`ddi/fewshot/gutierrez_train100_balanced_seed<seed>.jsonl` (20 per label), the encoder tagger on the "
             "same sentences' entities. *Listed pairs*: the 200 pairs of Chen et al. 2023, gold spans given. The "
             "other rows score every candidate pair of the full DDI test set (strict: both spans exact, label "
             "right), one change at a time: gold or tagger entities, labelled as trained (the sample's 20 % "
             "`false`) or under the class priors EM estimates on the unlabelled candidate pairs themselves "
             "(`clinie.relations.priors`; `RelationClassifier.predict` labels as trained). *Predicted / gold "
             "relations* above 1 is over-prediction.",
             "", "Read from `bench/results/relations/ddi.json`; one table per configuration, each with the runs "
             "that made it."]
    for configuration, group in configurations(runs).items():
        settings = dict(configuration)
        folds, negatives = settings.get("calibration_folds", 0), settings.get("negatives", 0)
        title = f"Posteriors calibrated by {folds}-fold cross-validation" if folds else "Posteriors as trained"
        title += f", {negatives} unlisted pairs learnt as `false`" if negatives else ", listed pairs only"
        if settings.get("unannotated"):
            priors = ("under the priors EM estimates on them" if settings["teacher_priors"] == "adapted"
                      else "as trained")
            title += (f"; its student, also taught the pairs between the tagger's spans in {settings['unannotated']} "
                      f"unannotated train sentences as the classifier reads them ({priors})")
        commands = "; ".join(sorted({f"`{r['command']}`" for r in group}))
        lines += ["", f"### {title}", "", f"Runs made by {commands}.", "", *table(group)]
        lines += [f"| {name} (Chen et al. 2023, same 200 pairs; published) | {value:.3f} |" + " |" * len(group)
                  for name, value in PUBLISHED.items()]
        with_priors = [r for r in group if "priors" in r]
        if with_priors:
            lines += ["", "Class priors of the candidate pairs (" + ", ".join(with_priors[0]["classes"]) + "): as "
                      "trained, as EM estimates them (no label read), and the true ones of the gold-span candidates "
                      "(read for this table only):", ""]
            lines += [f"- seed {r['settings']['seed']}: " + "; ".join(f"{k} {v}" for k, v in r["priors"].items())
                      for r in with_priors]
    return lines


def loopback_runs(results: Path, bench: str) -> list[dict[str, Any]]:
    """The runs of a bench on loopback (``bench/results/<bench>/loopback.json``); none if it never ran."""
    path = results / bench / "loopback.json"
    return json.loads(path.read_text())["runs"] if path.exists() else []


def webhooks_section(results: Path = RESULTS) -> list[str]:
    """Webhook latency under concurrent annotators (``python -m bench.webhooks``)."""
    runs = loopback_runs(results, "webhooks")
    if not runs:
        return []
    lines = ["", "## Webhooks under concurrent annotators", "",
             "`ANNOTATION_CREATED` events from concurrent senders to a `clinie serve` on loopback, one per "
             "configuration, each on a fresh store; the servers take turns round by round, so both see the same "
             "background load (the machine's load average before the run is given: the comparison holds, the "
             "absolute figures are that machine's under that load). `per-event`: each event its own transaction "
             "(`CLINIE_WEBHOOK_GROUP_COMMIT=0`); `group`: events arriving together committed at once; `@ REV`: the "
             "same, on the code of git revision REV (`--before REV`: a change measured against its base). Label "
             "Studio gives up on a webhook after 1.0 s."]
    for run in runs:
        rows = [[name, *(f"{s[k]} ms" for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")),
                 str(s["over_1s"]), str(s["errors"]), "yes" if s["all_stored"] else "no"]
                for name, s in run["configs"].items()]
        lines += ["", f"`{run['command']}`: {run['rounds']} rounds × {run['events']} events, {run['senders']} "
                      f"concurrent senders, {run['cpus']} CPUs, load average {run['load_average_before'][0]:.2f} "
                      "before:", "",
                  *table(["configuration", "mean", "p50", "p95", "p99", "max", "over 1.0 s", "errors",
                          "all stored"], rows)]
    return lines


def fault(round_: dict[str, Any]) -> str:
    """A fault round's fault, in words.

    >>> fault({"kind": "full-disk", "file_size_limit": 3_000_000})
    'files ≤ 3 MB'
    >>> fault({"kind": "full-disk", "disk_free_mb": 5, "spare_wal": False, "postgres_said": {"FATAL": 1, "PANIC": 1},
    ...        "postgres_stopped": True})
    'disk 5 MB free: FATAL ×1, PANIC ×1, stopped'
    """
    if round_["kind"] == "full-disk" and "disk_free_mb" in round_:  # PostgreSQL's disk
        said = ", ".join(f"{level} ×{n}" for level, n in round_["postgres_said"].items())
        return (f"disk {round_['disk_free_mb']} MB free{', spare WAL' * round_['spare_wal']}: {said}"
                f"{', stopped' * round_['postgres_stopped']}")
    if round_["kind"] == "full-disk":
        return f"files ≤ {round_['file_size_limit'] / 1e6:g} MB"
    if round_["kind"] == "sigkill":
        return f"SIGKILL after {round_['kill_after']} acknowledged"
    return f"purge exit {round_['purge_exit']}, report exit {round_['report_exit']}"


def faults_section(results: Path = RESULTS) -> list[str]:
    """Nothing acknowledged is lost, under faults (``python -m bench.faults``)."""
    runs = loopback_runs(results, "faults")
    if not runs:
        return []
    lines = ["", "## Faults: nothing acknowledged is lost", "",
             "Each round floods a `clinie serve` on loopback (fresh store, nothing but the store at work) with "
             "`ANNOTATION_CREATED` events from concurrent senders, injects a fault, SIGKILLs it, restarts it on the "
             "same data directory and reads the store file. `full-disk`: the backend under a file-size limit "
             "(`RLIMIT_FSIZE`), notes of about 100 KB; `sigkill`: killed once the given number of events was "
             "acknowledged; `second-process`: `clinie purge` of project 2 and `clinie report` of project 3 run "
             "beside it while project 1's events flow, then 50 more events. *Answers*: per HTTP status, `none` "
             "for no answer (the process was killed); *lost*: answered 200 and not in the store after the restart "
             "(must be 0); *purged, back*: project 2's purged annotations, and how many were in the store again "
             "(must be 0). A run with `--code REV` ran the backend and the command line of git revision REV: "
             "the code before a fix, to show what the bench catches. With `--database postgresql` the store is a "
             "database of a throwaway PostgreSQL cluster, read with psycopg after the restart; `integrity_check` "
             "there is amcheck (`verify_heapam` with TOAST, `bt_index_check` with every row) on the store's tables "
             "and indexes, `ok` when it found nothing. Its `full-disk` is a real full disk, not a file-size limit "
             "(which does not reach the database server's files): each round's own cluster has its data directory "
             "on a filesystem of its own (a tmpfs) left the given MB free once the store's database exists, 100 "
             "events of about 100 KB of random letters (PostgreSQL compresses long values); *spare WAL*: WAL files "
             "recycled ahead, so that a table rather than the WAL fills the disk first. The fault column then says "
             "what PostgreSQL logged of the full disk, lines per level (`ERROR`: a table's file not extended, the "
             "transaction rolled back, or a checkpoint's write cut short; `PANIC`: a WAL write failed, the server "
             "restarted; `FATAL`: its recovery failed on the full disk), *stopped* when the server had stopped; "
             "the filesystem is then grown back (the operator freeing space), the server started if it had "
             "stopped, and the backend restarted as in every round."]
    for run in runs:
        rows = []
        for n, r in enumerate(run["results"], 1):
            answers = ", ".join(f"{code} ×{k}" for code, k in r["answers"].items())
            rows.append([str(n), r["kind"], fault(r), str(r["sent"]), answers, str(r["acknowledged"]),
                         str(r["found"]), f"**{r['lost']}**",
                         f"{r['purged']}, **{r['purged_back']}**" if "purged" in r else "–", r["integrity"],
                         f"{r['seconds']:.0f} s"])
        rounds = f"{run['rounds']} round{'s' * (run['rounds'] != 1)}"
        code = f", the code of git revision `{run['code']}`" if run.get("code") else ""
        code += ", the store on PostgreSQL" if run.get("database") == "postgresql" else ""
        lines += ["", f"`{run['command']}`: {rounds} of {', '.join(run['kinds'])}{code}, seed {run['seed']}, "
                      f"{run['senders']} concurrent senders, {run['cpus']} CPUs, load average "
                      f"{run['load_average_before'][0]:.2f} before:", "",
                  *table(["round", "kind", "fault", "sent", "answers", "acknowledged", "found after restart",
                          "lost", "purged, back", "integrity_check", "time"], rows)]
        if run["rounds"] > 1:
            lines += ["", "All rounds, per kind:", "",
                      *table(["kind", "rounds", "sent", "acknowledged", "found after restart", "lost", "purged, back"],
                             [[kind, str(t["rounds"]), str(t["sent"]), str(t["acknowledged"]), str(t["found"]),
                               f"**{t['lost']}**", f"{t['purged']}, **{t['purged_back']}**" if "purged" in t else "–"]
                              for kind, t in run["totals"].items()])]
        if hostile := run["hostile"]:
            answers = ", ".join(f"{code} ×{k}" for code, k in hostile["answers"].items())
            lines += ["", f"Hostile inputs (`harness.hostile`) to a live backend: {hostile['inputs']} tried "
                          f"({answers}); **{hostile['5xx']}** answered 5xx, {hostile['unanswered']} unanswered."]
        lines += ["", "Failed: " + "; ".join(run["failures"]) + "." if run["failures"] else
                  "Nothing acknowledged lost, nothing purged back, every `integrity_check` ok"
                  + (", no hostile input answered 5xx." if hostile else ".")]
    return lines


def probe_speed_section(results: Path = RESULTS) -> list[str]:
    """How fast the probe reads, batched against one sentence at a time (``python -m bench.serve --parts probe``)."""
    path = results / "serve" / "probe.json"
    if not path.exists():
        return []
    lines = ["", "## How fast the probe reads", "",
             "A trained probe tags Chen et al. 2023 test sentences one at a time (a forward pass each) and all at "
             "once (the LLM reading them in batched forward passes), each path on an empty feature cache, in turn: "
             "sentences per second per round and the median of each path's ratio to one at a time in the same round "
             "(the figure to compare: absolute rates move with the machine's load, given before and after)."]
    for run in json.loads(path.read_text())["runs"]:
        rows = [[name, " / ".join(f"{v:.2f}" for v in figures["sentences_per_second"]), f"{figures['median']:.2f}",
                 f"{figures['median_ratio']:.2f}"] for name, figures in run["paths"].items()]
        lines += ["", f"`{run['command']}`: {run['sentences']} sentences, {run['rounds']} rounds, {run['cpus']} CPUs, "
                      f"load average {run['load_average_before'][0]:.1f} before and {run['load_average_after'][0]:.1f} "
                      f"after; batched and one at a time found the same spans: "
                      f"{'yes' if run['same_spans'] else 'no'}.", "",
                  *table(["path", "sentences / s, per round", "median", "ratio to one at a time (median)"], rows)]
    return lines


def scale_section(results: Path = RESULTS) -> list[str]:
    """Beyond one machine: PostgreSQL, replicas and workers against the embedded default
    (``python -m bench.scale``)."""
    runs = loopback_runs(results, "scale")
    if not runs:
        return []
    lines = ["", "## Beyond one machine", "",
             "The embedded default (SQLite, one process) against the store in PostgreSQL with web replicas and "
             "`clinie worker` processes, all on one machine: replicas and workers share its cores, so the figures say "
             "what the processes cost and whether anything is lost, not what more machines would add."]
    for run in runs:
        lines += ["", f"`{run['command']}`: {run['cpus']} CPUs, load average {run['load_average_before'][0]:.2f} "
                      "before."]
        if hooks := run.get("webhooks"):
            kill = hooks["kill"]
            lines += ["", f"Webhooks, {hooks['rounds']} rounds × {hooks['events']} events from {hooks['senders']} "
                          "concurrent senders (to two replicas: alternately):", "",
                      *table(["store", "p50", "p99", "max", "errors"],
                             [[name, f"{c['p50_ms']} ms", f"{c['p99_ms']} ms", f"{c['max_ms']} ms", str(c["errors"])]
                              for name, c in hooks["configs"].items()]),
                      "", f"One of two replicas SIGKILLed mid-flood: {kill['sent']} sent, {kill['acknowledged']} "
                          f"acknowledged, **{kill['lost']}** of them lost."]
        if predict := run.get("predict"):
            rates = {name: r["tasks_per_second"] for name, r in predict.items() if name != "seconds"}
            lines += ["", f"/predict, requests of 8 tasks from 4 concurrent clients for {predict['seconds']:g} s, "
                          "the encoder serving: " + ", ".join(f"{name} {rate} tasks/s" for name, rate in rates.items())
                      + f" (ratio {rates['2 replicas'] / rates['1 replica']:.2f})."]
        if trainings := run.get("trainings"):
            makespan, one = trainings["makespan"], trainings["one_project"]
            thread, worker = one["SQLite, in-process thread"], one["PostgreSQL, clinie worker"]
            lines += ["", f"Trainings of {trainings['projects']} projects of 20 annotations, *Start training* for all "
                          f"at once, selection among `{trainings['strategies']}`: every project serving its selected "
                          f"strategy after {makespan['1 worker']['seconds']:g} s with one worker, "
                          f"{makespan['2 workers']['seconds']:g} s with two (ratio {trainings['ratio']:.2f}). One "
                          f"project, *Start training* to its selected strategy serving: {thread:g} s in the embedded "
                          f"thread, {worker:g} s on a worker ({(worker / thread - 1) * 100:+.0f} %)."]
    return lines


def render_results(results: Path = RESULTS) -> str:
    """The whole of docs/results.md."""
    runs = loop_runs(results)
    lines = ["# Results", "",
             f"<!-- Generated by `{COMMAND}` from the run files under bench/results/. Do not edit: "
             "tests/unit/test_results_doc.py fails when this page differs from what the run files give. -->", "",
             f"Generated by `{COMMAND}` from the run files committed under `bench/results/`: every figure "
             "on this page is read from them (GPT-4's, published by Chen et al. 2023, excepted and marked so). "
             "Nothing here is typed by hand; a bench command that writes a run file there adds its figures at "
             f"the next `{COMMAND}`. Figures recorded before run files were kept in git — the learning loop at "
             "10 and 100 sentences, the encoder and LLM benchmarks and their speed, relations, the reranker's "
             "headroom, the backend under load — are in [earlier-measurements.md](earlier-measurements.md).", "",
             "## The learning loop: true few-shot selection", "", METHOD]
    if not runs:
        lines += ["", "No run files under `bench/results/loop/` yet."]
    for study in studies(runs):
        all_runs = [r for rs in study["runs"].values() for r in rs]
        sizes = ", ".join(map(str, _ordered(r["size"] for r in all_runs)))
        seeds = ", ".join(map(str, _ordered((r["seed"] for r in all_runs), descending=True)))
        lines += ["", f"### Pools of {sizes} sentences, seeds {seeds}, budget {pct(study['budget'])} of the sentences",
                  "", f"Runs made by `{study_command(study)}` (resumable; each run kept as it ends), read from "
                      f"`{study_files(study)}`.",
                  "", "Test F1, mean ± sd over the seeds; each pick column also names what was picked, seed by seed:",
                  "", *mean_table(study),
                  "", "Each run (test F1, CV F1 in brackets, each band's share of the test sentences the LLM read):",
                  "", *run_table(study),
                  "", "Counted from these runs:", "", *findings(study)]
    lines += (cold_start_section(results) + precision_section(results) + quality_section(results)
              + first_model_section(results)
              + active_section(results)
              + student_section(results) + adapt_section(results) + relations_section(results)
              + webhooks_section(results) + faults_section(results) + scale_section(results)
              + probe_speed_section(results))
    return "\n".join(lines) + "\n"


def best_single(at: dict[str, Any], names: Sequence[str]) -> str:
    """The strategy with the highest mean test F1 in a summary row (the first listed among equals):
    what a user who knew the test figures would have chosen for every seed at once."""
    return max(names, key=lambda name: round(at[name]["f1_mean"], 3))


def default_gaps(study: dict[str, Any]) -> dict[int, list[float]]:
    """Per pool size, per corpus: the default pick's mean test F1 minus the best single strategy's."""
    gaps: dict[int, list[float]] = {}
    for corpus_runs in study["runs"].values():
        summary = summarise(corpus_runs)
        for size in summary["sizes"]:
            at = summary["by_size"][size]["strategies"]
            best = best_single(at, summary["strategies"])
            gaps.setdefault(size, []).append(at["default"]["f1_mean"] - at[best]["f1_mean"])
    return dict(sorted(gaps.items()))


def render_summary(results: Path = RESULTS) -> str:
    """The README's summary table, markers included: the largest study, a row per corpus and pool
    size, the default's pick beside the best single strategy."""
    runs = loop_runs(results)
    if not runs:
        return f"{START}\nNo run files under `bench/results/loop/` yet.\n{END}"
    study = studies(runs)[0]
    names = study["strategies"]
    header = ["pool (seeds)", "corpus", "encoder", "probe (every sentence)", "best single strategy",
              "the default's pick", "default − best", "GPT-4 zero-shot (published)"]
    rows = []
    for corpus, corpus_runs in study["runs"].items():
        summary = summarise(corpus_runs)
        for size in summary["sizes"]:
            at = summary["by_size"][size]
            best = best_single(at["strategies"], names)
            gap = at["strategies"]["default"]["f1_mean"] - at["strategies"][best]["f1_mean"]
            rows.append([f"{size} ({', '.join(map(str, at['seeds']))})", corpus_name(corpus),
                         *(mean_sd_text(at["strategies"][n]["f1"]) if n in names else "–"
                           for n in ("encoder", "probe")),
                         best, f"{mean_sd_text(at['strategies']['default']['f1'])}: {_count(at['default'])}",
                         f"{gap:+.3f}", f"{GPT4_ZERO_SHOT[corpus]:.3f}" if corpus in GPT4_ZERO_SHOT else "–"])
    rows.sort(key=lambda row: int(row[0].split()[0]))
    all_runs = [r for rs in study["runs"].values() for r in rs]
    lines = [START, "", *table(header, rows), "",
             f"Strict entity F1, mean ± sd over the seeds; pool: annotated sentences; test: the 200 items of "
             f"Chen et al. 2023. From {len(all_runs)} run files — every strategy, each run, and the command that "
             "made them, in [docs/results.md](docs/results.md).", "", END]
    return "\n".join(lines)


def splice(readme: str, summary: str) -> str:
    """``readme`` with the text between the markers (markers included) replaced by ``summary``."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {START!r} … {END!r}")
    return readme[:start] + summary + readme[end + len(END):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args()
    wanted = {DOC: render_results(), README: splice(README.read_text(encoding="utf-8"), render_summary())}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    for path in stale:
        if args.check:
            print(f"{path.relative_to(ROOT)} is out of date: run `{COMMAND}`", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path], encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()

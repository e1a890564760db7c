"""Reports a researcher can cite: ``report.json`` (every figure), ``report.md`` and a
self-contained ``report.html`` (plots inline as SVG; the Markdown links the same plots as files).

A report is a plain dict; ``blocks`` turns it into a sequence of headings, paragraphs, tables
and plots that both renderers share, so the two documents cannot disagree. Keys it reads (all
optional but ``title``): ``summary`` (pairs), ``comparison`` (a table), ``learning_curve``,
``evaluation`` (``clinie.evaluation.study.evaluation``) with ``evaluation_of`` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

from clinie import __version__
from clinie.clock import utc_now
from clinie.evaluation.plots import line_chart, reliability_chart

Block = tuple  # ("h2", text) | ("p", text) | ("table", columns, rows) | ("plot", file name, svg)


def new_report(title: str, kind: str, command: str) -> dict[str, Any]:
    return {"title": title, "kind": kind, "command": command, "clinie_version": __version__,
            "created": utc_now()}


def _auroc(value: float | None) -> str:
    return "–" if value is None else _f(value)


def _f(value: float) -> str:
    return f"{value:.3f}"


def _evaluation_blocks(ev: dict[str, Any], of: str) -> Iterator[Block]:
    yield ("h2", f"Per label ({of})")
    yield ("p", "Strict matching (exact offsets and label); 95 % intervals by bootstrap over documents.")
    yield ("table", ["label", "precision", "recall", "F1", "95 % interval", "support"],
           [[label, _f(s["precision"]), _f(s["recall"]), _f(s["f1"]), f"{_f(s['f1_low'])}–{_f(s['f1_high'])}",
             str(s["support"])] for label, s in ev["per_label"].items()])
    yield ("h2", "Kinds of errors")
    yield ("p", "Each gold span judged by the prediction that overlaps it most.")
    yield ("table", list(ev["error_kinds"]), [[str(v) for v in ev["error_kinds"].values()]])
    columns = sorted({p for row in ev["confusion"].values() for p in row})
    yield ("h2", "Confusion of labels (rows: gold, columns: predicted)")
    yield ("table", ["gold \\ predicted", *columns],
           [[g, *[str(row.get(c, 0)) for c in columns]] for g, row in ev["confusion"].items()])
    if cal := ev.get("calibration"):
        yield ("h2", "Calibration")
        text = f"{cal['spans']} scored spans; expected calibration error of the raw scores {_f(cal['ece_raw'])}"
        if "ece_calibrated" in cal:
            text += (f", after {cal['calibrator']['method']} calibration fitted on {cal['fitted_on']} "
                     f"cross-validated spans {_f(cal['ece_calibrated'])}")
        if "brier_raw" in cal:  # runs saved before it was measured lack it
            text += f"; Brier score {_f(cal['brier_raw'])}, AUROC {_auroc(cal['auroc_raw'])} (raw"
            if "brier_calibrated" in cal:
                text += f"), {_f(cal['brier_calibrated'])} and {_auroc(cal['auroc_calibrated'])} (calibrated"
            text += "; AUROC: how well the scores rank right spans above wrong ones, 0.5 = not at all)"
        yield ("p", text + ". Bars: accuracy per confidence bin; the diagonal is perfect calibration.")
        yield ("plot", "reliability.svg", reliability_chart(cal["bins_raw"], calibrated=cal.get("bins_calibrated", ()),
                                                            title="reliability diagram"))
    if cost := ev.get("llm_cost"):
        yield ("h2", "LLM cost")
        n = max(cost["documents"], 1)
        yield ("p", "Calls answered from the call cache (an identical question asked before, e.g. by another "
                    "band of filter-then-rerank) cost nothing and are counted apart.")
        yield ("table", ["documents", "calls", "cached", "prompt tokens", "completion tokens", "sentences to the LLM",
                         "seconds per document"],
               [[str(cost["documents"]), str(cost["calls"]), str(cost.get("cache_hits", "?")),
                 str(cost["prompt_tokens"]), str(cost["completion_tokens"]),
                 f"{cost['sentences_to_llm']}/{cost['sentences']} ({cost['sentence_share']:.0%})",
                 f"{cost['seconds'] / n:.2f}"]])
    if ev.get("worst_errors"):
        yield ("h2", "Worst errors")
        yield ("p", "The documents with the most strict errors (missed: gold spans not predicted exactly; "
                    "spurious: predictions not in gold).")
        yield ("table", ["document", "text", "missed", "spurious"],
               [[e["id"], e["text"], "; ".join(f"{t} ({lab})" for t, lab in e["missed"]),
                 "; ".join(f"{t} ({lab})" for t, lab in e["spurious"])] for e in ev["worst_errors"]])


def blocks(report: dict[str, Any]) -> Iterator[Block]:
    yield ("h1", report["title"])
    yield ("p", f"clinie {report['clinie_version']}, {report['created']}. Command: `{report['command']}`")
    if summary := report.get("summary"):
        yield ("table", ["", ""], [[str(k), str(v)] for k, v in summary])
    if comparison := report.get("comparison"):
        yield ("h2", comparison.get("heading", "Strategies compared"))
        if caption := comparison.get("caption"):
            yield ("p", caption)
        yield ("table", comparison["columns"], comparison["rows"])
    if curve := report.get("learning_curve"):
        yield ("h2", "Learning curve")
        if caption := curve.get("caption"):
            yield ("p", caption)
        yield ("plot", "learning_curve.svg", line_chart(curve["series"], x_label=curve["x_label"], y_label="F1",
                                                        title="learning curve"))
    if ev := report.get("evaluation"):
        yield from _evaluation_blocks(ev, report.get("evaluation_of", "predictions"))


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(report: dict[str, Any]) -> str:
    out = []
    for block in blocks(report):
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            columns, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(_md_cell(c) for c in columns) + " |",
                                  "|" + "---|" * len(columns),
                                  *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)]))
        elif kind == "plot":
            out.append(f"![{block[1]}]({block[1]})")
    return "\n\n".join(out) + "\n"


_STYLE = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
          "text-align:left;vertical-align:top}th{background:#f3f3f3}code{background:#f6f6f6}")


def render_html(report: dict[str, Any]) -> str:
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(report['title'])}</title>"
           f"<style>{_STYLE}</style></head><body>"]
    for block in blocks(report):
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{escape(block[1])}</{kind}>")
        elif kind == "p":
            parts = escape(block[1]).split("`")
            out.append("<p>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + "</p>")
        elif kind == "table":
            head = "".join(f"<th>{escape(str(c))}</th>" for c in block[1])
            body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "plot":
            out.append(f"<figure>{block[2]}</figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """``report.json``, ``report.md`` (+ its plot files) and ``report.html`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    for block in blocks(report):
        if block[0] == "plot":
            (out_dir / block[1]).write_text(block[2], encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
    return out_dir / "report.html"

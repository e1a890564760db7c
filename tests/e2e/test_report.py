"""Reports: rendered from a real study run, both documents agree, opened in headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from clinie.evaluation.report import new_report, render_markdown, write_report
from clinie.evaluation.study import load_run, study_report, summarise
from harness import ROOT
from harness.browser import screenshot_page

COMMAND = "python -m bench.loop --corpora ncbi_disease --sizes 100 --seeds 42 --strategies encoder,gated,probe"
#: ``COMMAND``'s saved run, as it came out (selection within a quarter of the sentences to the LLM)
RUN = ROOT / "tests" / "data" / "loop_ncbi_disease_size100-seed42.json"


def real_report() -> dict:
    run = json.loads(RUN.read_text())
    report = new_report("True few-shot learning loop: ncbi_disease", "fewshot", COMMAND)
    report["summary"] = [("test", "chen2023_test_sample200.jsonl (200 items)")]
    return study_report([run], report)


def test_the_report_of_a_real_run_says_what_the_run_measured(tmp_path):
    run = json.loads(RUN.read_text())
    report = real_report()
    summary = summarise([run])
    assert report["evaluation"] == run["test"][run["selected"]]
    row = next(r for r in report["comparison"]["rows"] if r[0] == "selected by CV")
    assert row[1].startswith(f"{run['test'][run['selected']]['per_label']['all']['f1']:.3f}")
    assert summary["by_size"][100]["selected"] == [run["selected"]]
    assert "at most 25% of the sentences" in report["comparison"]["caption"]
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert markdown == render_markdown(json.loads((tmp_path / "report.json").read_text()))
    for name in run["test"]:
        assert f"| {name} |" in markdown and f"<td>{name}</td>" in html
    assert html.count("<svg") == 2 and "http" not in re.sub(r'xmlns="http://www.w3.org/2000/svg"', "", html)
    assert (tmp_path / "learning_curve.svg").read_text() in html  # the Markdown's plot files are the HTML's


def test_the_report_opens_in_chromium_and_is_saved_as_a_picture(tmp_path):
    page = write_report(real_report(), tmp_path)
    shot = Path(os.environ.get("CLINIE_ARTIFACTS", ROOT / "artifacts")) / "fewshot_report.png"
    seen = screenshot_page(page.as_uri(), shot)
    assert seen["svgs"] == 2 and seen["plot_marks"] >= 5 and seen["tables"] >= 5
    assert shot.stat().st_size > 20_000


def test_a_study_summary_of_saved_runs_compares_what_every_run_scored():
    """The seeds' runs at 25 sentences (gated-0.95 among their strategies) beside the 100-sentence run
    (without it): only the strategies all of them scored are compared, and a seed whose pick
    sent nothing to the LLM counts as 0 in the selected strategy's mean share."""
    saved = ROOT / "bench" / "results" / "loop" / "ncbi_disease" / "runs"
    runs = [load_run(saved, 25, seed) for seed in (42, 33, 21)]
    runs.append(json.loads(RUN.read_text()))
    summary = summarise(runs)
    assert "gated-0.95" in runs[0]["test"] and "gated-0.95" not in summary["strategies"]
    assert summary["strategies"] == list(runs[-1]["test"])
    at25 = summary["by_size"][25]
    shares = [(r["test"][r["selected"]].get("llm_cost") or {}).get("sentence_share", 0.0) for r in runs[:3]]
    assert 0.0 in shares and at25["strategies"]["selected"]["sentence_share"] == pytest.approx(sum(shares) / 3)
    assert at25["seeds"] == [42, 33, 21] and summary["sizes"] == [25, 100]
    # with no LLM budget cross-validation would have picked the probe every time at 25 (best CV F1)
    assert at25["no budget"] == ["probe"] * 3 and at25["selected"] != at25["no budget"]
    assert at25["strategies"]["no budget"]["f1"] == at25["strategies"]["probe"]["f1"]

"""docs/results.md and the README's summary table are what ``python -m bench.results_doc`` writes
from the run files kept in git (bench/results/): a figure edited by hand, or a run file added
without regenerating, fails here. Reads JSON only: no model is loaded."""

from __future__ import annotations

import difflib
import sys

from harness import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import results_doc  # noqa: E402

FIX = f"run `{results_doc.COMMAND}` from the repository's root to regenerate it"


def _diff(have: str, want: str, name: str) -> str:
    lines = difflib.unified_diff(have.splitlines(), want.splitlines(), f"{name} (committed)",
                                 f"{name} (from the run files)", lineterm="", n=0)
    return "\n".join(list(lines)[:40])


def test_the_results_page_is_generated_from_the_run_files():
    assert results_doc.loop_runs(), "no learning-loop run file under bench/results/loop/"
    have = results_doc.DOC.read_text(encoding="utf-8")
    want = results_doc.render_results()
    assert have == want, (f"docs/results.md differs from what the run files give; {FIX}:\n"
                          f"{_diff(have, want, 'docs/results.md')}")


def test_the_readme_summary_is_generated_from_the_run_files():
    have = results_doc.README.read_text(encoding="utf-8")
    want = results_doc.splice(have, results_doc.render_summary())  # fails if the markers are gone
    assert have == want, (f"README.md's summary table differs from the run files; {FIX}:\n"
                          f"{_diff(have, want, 'README.md')}")


def test_the_readme_stays_a_reference():
    """The README is a reference (under 16 KB); full results live in docs/."""
    readme = results_doc.README.read_bytes()
    assert len(readme) < 16_000, f"README.md is {len(readme)} bytes: move long material to docs/"
    for page in ("docs/results.md", "docs/earlier-measurements.md"):
        assert page in readme.decode("utf-8") and (ROOT / page).exists(), page


def test_a_student_run_under_way_is_named_not_averaged(tmp_path):
    """A run still missing students (a study run strategy by strategy) must neither narrow the
    complete runs' tables to its strategies nor enter their means."""
    import json
    import shutil

    source = results_doc.RESULTS / "student" / "ncbi_disease" / "runs"
    runs = tmp_path / "student" / "ncbi_disease" / "runs"
    shutil.copytree(source, runs, ignore=lambda _, names: [n for n in names if not n.startswith("size100-")])
    complete = "\n".join(results_doc.student_section(tmp_path))
    partial = json.loads((source / "size100-seed42.json").read_text())
    partial.update(size=50, test={n: partial["test"][n] for n in ("encoder", "probe")})
    (runs / "size50-seed42.json").write_text(json.dumps(partial))
    section = "\n".join(results_doc.student_section(tmp_path))
    assert section.startswith(complete)  # the complete runs' tables, students included, unchanged
    assert section.endswith("Under way, not in the tables: pool 50, seed 42, distilled, student-0.00, student-0.90 to "
                            "add (`python -m bench.student --corpora ncbi_disease --sizes 50 --seeds 42`).")


def test_a_fault_run_names_every_round_and_what_broke_the_promise(tmp_path):
    """Losses are shown round by round and said in words, never only summed: a bench that lost
    acknowledged events must not read as a success in docs/results.md."""
    import json

    rounds = [{"kind": "full-disk", "file_size_limit": 3_000_000, "sent": 60, "answers": {"200": 38, "500": 22},
               "acknowledged": 38, "found": 13, "lost": 25, "restarted": "yes", "integrity": "ok", "seconds": 2.3},
              {"kind": "second-process", "start_after": 68, "purge_exit": 0, "report_exit": 2, "purged": 20,
               "purged_back": 0, "sent": 367, "answers": {"200": 367}, "acknowledged": 367, "found": 367, "lost": 0,
               "restarted": "yes", "integrity": "ok", "seconds": 2.4}]
    run = {"seed": 0, "rounds": 1, "kinds": ["full-disk", "second-process"], "senders": 16, "cpus": 2,
           "load_average_before": [1.0, 1.0, 1.0], "results": rounds, "totals": {},
           "hostile": {"inputs": 50, "answers": {"400": 49, "500": 1}, "5xx": 1, "unanswered": 0, "failures": []},
           "failures": ["round 1 (full-disk): 25 acknowledged events lost", "hostile inputs: 1 answered 5xx"],
           "command": "python -m bench.faults --rounds 1"}
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "loopback.json").write_text(json.dumps({"runs": [run]}))
    section = results_doc.faults_section(tmp_path)
    assert "| 1 | full-disk | files ≤ 3 MB | 60 | 200 ×38, 500 ×22 | 38 | 13 | **25** | – | ok | 2 s |" in section
    assert ("| 2 | second-process | purge exit 0, report exit 2 | 367 | 200 ×367 | 367 | 367 | **0** | 20, **0** | ok "
            "| 2 s |") in section
    assert section[-1] == "Failed: round 1 (full-disk): 25 acknowledged events lost; hostile inputs: 1 answered 5xx."

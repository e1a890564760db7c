"""docs/results.md and the README's summary table are what ``python -m bench.results_doc`` writes
from the run files kept in git (bench/results/): a figure edited by hand, or a run file added
without regenerating, fails here. Reads JSON only: no model is loaded."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    """The README is a reference (under 20 KB); full results live in docs/."""
    readme = results_doc.README.read_bytes()
    assert len(readme) < 20_000, f"README.md is {len(readme)} bytes: move long material to docs/"
    for page in ("docs/results.md", "docs/earlier-measurements.md"):
        assert page in readme.decode("utf-8") and (ROOT / page).exists(), page

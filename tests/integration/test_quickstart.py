"""The README's Python quickstart runs as written: its ```python block, from the repository's root,
in a fresh interpreter (it fine-tunes the embedded MiniLM on 100 sentences: a minute or two on
2 cores) and prints at least one span."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from harness import ROOT


def quickstart() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 1, f"README.md should hold one ```python block (the quickstart), not {len(blocks)}"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_quickstart_trains_and_predicts():
    run = subprocess.run([sys.executable, "-c", quickstart()], cwd=ROOT, capture_output=True, text=True,
                         timeout=840)
    assert run.returncode == 0, run.stderr[-3000:]
    spans = [line for line in run.stdout.splitlines() if re.fullmatch(r"Disease [01]\.\d\d \S.*", line)]
    assert spans, f"the quickstart printed no span:\n{run.stdout}\n{run.stderr[-3000:]}"

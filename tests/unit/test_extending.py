"""A strategy and an LLM provider added from outside clinie, through its entry points
(docs/extending.md): a tiny package on the path with its own ``*.dist-info/entry_points.txt``,
as pip would install it, selected by the settings in a process of its own."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
"""A provider that echoes the prompt's end, and a strategy that tags each text's first word."""
from clinie.core import Span
from clinie.llm.base import Completion
from clinie.llm.providers import register as register_provider
from clinie.strategies import register as register_kind


class EchoLLM:
    provider = "echo"

    def __init__(self, model):
        self.model = model or "echo-1"

    def complete(self, prompt, *, max_tokens, stop=(), grammar=None):
        return Completion(prompt[-max_tokens:], len(prompt), max_tokens)


@register_provider("echo", reads=("model",))
def make(options):
    return EchoLLM(options.model)


class FirstWord:
    def __init__(self, labels):
        self.labels = labels

    def fit(self, docs):
        return self

    def predict(self, docs):
        return [d.with_annotations([Span.from_text(d.text, 0, d.text.index(" "), self.labels[0], id="T1")])
                for d in docs]


@register_kind("firstword", parts=(), reads_llm=False)
def build(parts, strategy):
    return FirstWord(tuple(spec.name for spec in parts.label_specs))
'''

ENTRY_POINTS = """\
[clinie.llm_providers]
echo = clinie_plugin_demo

[clinie.strategies]
firstword = clinie_plugin_demo
"""

CHECK = '''
import json
from clinie.core import Document, LabelSpec, Span
from clinie.llm import make_llm
from clinie.selection import candidates, select
from clinie.settings import Settings
from clinie.strategies import StrategyBuilder

settings = Settings.load()
settings.validate()
llm = make_llm(settings.llm_options())
texts = ["asthma was seen", "colitis came back", "melanoma grew fast", "gout flared again"]
docs = [Document(str(i), t, (Span.from_text(t, 0, t.index(" "), "Disease", id="T1"),)) for i, t in enumerate(texts)]
build = StrategyBuilder([LabelSpec("Disease")], llm=lambda: llm)
cv = select(docs, build, settings, candidates(settings))
print(json.dumps({"llm": [llm.provider, llm.complete("a prompt", max_tokens=3).text, settings.llm_name],
                  "selected": cv.selected.name, "f1": cv.runs[cv.selected.name].mean_f1}))
'''


def test_a_strategy_and_an_llm_provider_from_another_package_are_selected_by_the_settings(tmp_path: Path):
    (tmp_path / "clinie_plugin_demo.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "clinie_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clinie-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "CLINIE_DATA_DIR": str(tmp_path / "data"),
           "CLINIE_LLM_PROVIDER": "echo", "CLINIE_LLM_MODEL": "tiny", "CLINIE_SELECT_STRATEGIES": "firstword",
           "CLINIE_SELECT_FOLDS": "2", "CLINIE_SELECT_PREFER": ""}
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["llm"] == ["echo", "mpt", "echo-tiny"]  # made from CLINIE_LLM_MODEL, named by it
    assert answer["selected"] == "firstword" and answer["f1"] == 1.0
    # without the package, the same settings are refused, naming what there is
    del env["PYTHONPATH"]
    refused = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "unknown strategy 'firstword': use encoder, probe" in refused.stderr
    env["CLINIE_SELECT_STRATEGIES"] = "probe"
    refused = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert "CLINIE_LLM_PROVIDER must be one of llama.cpp, openai, transformers (" in refused.stderr

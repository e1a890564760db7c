"""A second look (VicunaNER, Ji 2023): the LLM confirms each span another extractor proposed.

Every proposed span is put to the LLM as a two-option question about its sentence, the mention
marked (``clinie.prompting.entity_mc``): '"asthma" is a Disease: a disease or syndrome.' or
'"asthma" is not a Disease.'. Spans it does not confirm are dropped; a confirmed span's score
is the probability the LLM gave the confirming option (when the provider returns one), not the
proposer's, which at cold start means nothing. Cached and counted like every LLM call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from clinie.core import Document, Extractor, LabelSpec, mark_spans, split_sentences
from clinie.llm.base import LLM
from clinie.llm.cache import CallCache
from clinie.prompting.choice import MARKS, MultipleChoice
from clinie.prompting.entity_mc import generate_prompt, option_texts


class Verified:
    """The ``verified`` strategy kind (a strategy kind's class is named for it): the spans of
    ``proposer`` that the LLM confirms on a second look, scored by it."""

    def __init__(self, proposer: Extractor, llm: LLM, label_specs: Sequence[LabelSpec], *, guided: bool = False,
                 cache: CallCache | None = None) -> None:
        self.proposer = proposer
        self.specs = {spec.name: spec for spec in label_specs}
        self.labels = proposer.labels
        self.questions = MultipleChoice(llm, "verify", guided=guided, cache=cache)

    def fit(self, docs: Sequence[Document]) -> Verified:
        self.proposer.fit(docs)
        return self

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        out = []
        for doc in self.proposer.predict(docs):
            started, before = time.perf_counter(), self.questions.usage.calls
            sentences = split_sentences(doc.text)
            kept = []
            for span in doc.entities:
                options = option_texts([self.specs.get(span.label, LabelSpec(span.label))], span.text)
                prompt = generate_prompt(mark_spans(doc.text, [(span, *MARKS)], sentences), options)
                index, score = self.questions.ask(prompt, len(options))
                if index == 0:
                    kept.append(replace(span, score=score))
            verify = {"questions": len(doc.entities), "calls": self.questions.usage.calls - before,
                      "confirmed": len(kept), "seconds": round(time.perf_counter() - started, 3)}
            out.append(replace(doc.with_annotations(kept, [r for r in doc.relations
                                                           if {r.head, r.tail} <= {s.id for s in kept}]),
                               meta={**doc.meta, "verify": verify}))
        return out

"""Entity typing as multiple choice: the question filter-then-rerank asks about a hard span.

The model reads the sentence with the mention marked and lettered options
(``clinie.prompting.choice``): one sentence per candidate label — the encoder's top labels for
the mention, each verbalised with its description — then "not an entity" (Ma et al., Findings
of EMNLP 2023: the small model proposes, the LLM only reranks its top candidates).

Example:
    >>> from clinie.core import LabelSpec
    >>> options = option_texts([LabelSpec("Disease", "a disease or syndrome")], "asthma")
    >>> options
    ['"asthma" is a Disease: a disease or syndrome.', '"asthma" is not a Disease.']
    >>> generate_prompt("<< asthma >> worsened .", options).splitlines()[-1]
    'Answer:'
"""

from __future__ import annotations

from collections.abc import Sequence

from clinie.core import LabelSpec
from clinie.prompting import choice

TEMPLATE_VERSION = "entity_mc.v1"


def option_texts(candidates: Sequence[LabelSpec], mention: str) -> list[str]:
    """One sentence per candidate label (in the order given), then "not an entity"."""
    if not candidates:
        raise ValueError("a question needs at least one candidate label")
    chosen = [f'"{mention}" is a {spec.name}' + (f": {spec.description.rstrip('.')}." if spec.description else ".")
              for spec in candidates]
    none = " or ".join(spec.name for spec in candidates)
    return [*chosen, f'"{mention}" is not a {none}.']


def generate_prompt(sentence: str, options: Sequence[str],
                    demos: Sequence[tuple[str, Sequence[str], int]] = (), version: str = TEMPLATE_VERSION) -> str:
    """The prompt for one mention; ``demos`` are (marked sentence, options, index of the answer)."""
    return choice.generate_prompt(version, sentence, options, demos)

"""Relation extraction as multiple choice (QA4RE; Zhang et al., Findings of ACL 2023).

For one candidate pair the model reads the sentence, with the two mentions marked, and lettered
options (``clinie.prompting.choice``): one sentence per relation label the pair may carry
(``RelationSpec.verbalise``), then "none of these".

Example:
    >>> from clinie.core import RelationSpec
    >>> specs = [RelationSpec("effect", template="{head} changes the effect of {tail}.")]
    >>> options = option_texts(specs, ("effect",), "aspirin", "warfarin")
    >>> for line in generate_prompt("<< aspirin >> boosts << warfarin >> .", options).splitlines()[-3:]:
    ...     print(line)
    A. aspirin changes the effect of warfarin.
    B. None of these: aspirin and warfarin are not related so.
    Answer:
"""

from __future__ import annotations

from collections.abc import Sequence

from clinie.core import RelationSpec
from clinie.prompting import choice

TEMPLATE_VERSION = "relation_mc.v1"
MARKS = (*choice.MARKS, *choice.MARKS)  # head and tail marked alike: the options say which is which


def option_texts(specs: Sequence[RelationSpec], labels: Sequence[str], head: str, tail: str) -> list[str]:
    """One sentence per label in ``labels`` (in the order of ``specs``), then "none of these"."""
    chosen = [spec.verbalise(head, tail) for spec in specs if spec.name in labels]
    return [*chosen, f"None of these: {head} and {tail} are not related so."]


def generate_prompt(sentence: str, options: Sequence[str],
                    demos: Sequence[tuple[str, Sequence[str], int]] = (), version: str = TEMPLATE_VERSION) -> str:
    """The prompt for one pair; ``demos`` are (marked sentence, options, index of the answer)."""
    return choice.generate_prompt(version, sentence, options, demos)

"""Word/TAG prompts and the parser that re-aligns whatever a model answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from clinie.core import LabelSpec, bio_to_spans, tokenize
from clinie.prompting.wordtag import allowed_tags, generate_prompt, parse_response
from harness.helpers import assert_spans_match_text

LABELS = (LabelSpec("Disease", "a disease or disorder"), LabelSpec("Chemical", "a drug or chemical"))
TEXT = "Tamoxifen\treduces breast cancer risk\r\nin BRCA1 carriers ."
WORDS = [w.text for w in tokenize(TEXT)]


def test_prompt_has_descriptions_demos_and_the_sentence_last():
    prompt = generate_prompt(LABELS, WORDS, [(["Aspirin", "helps"], ["B-Chemical", "O"])])
    assert "B-Disease: first word of a Disease (a disease or disorder)" in prompt
    assert "Sentence: Aspirin helps\nTagged: Aspirin/B-Chemical helps/O" in prompt
    assert prompt.endswith("Sentence: " + " ".join(WORDS) + "\nTagged:")
    assert "Sentence: Aspirin" not in generate_prompt(LABELS, WORDS)  # zero-shot: no demos


def test_allowed_tags_are_bio_consistent():
    assert allowed_tags("O", ["Disease"]) == ["O", "B-Disease"]
    assert allowed_tags("B-Disease", ["Disease", "Chemical"]) == ["O", "B-Disease", "B-Chemical", "I-Disease"]
    assert "I-Chemical" not in allowed_tags("I-Disease", ["Disease", "Chemical"])


GOOD = "Tamoxifen/B-Chemical reduces/O breast/B-Disease cancer/I-Disease risk/O in/O BRCA1/O carriers/O ./O"


@pytest.mark.parametrize("answer, expected_tags, stat", [
    (GOOD, ["B-Chemical", "O", "B-Disease", "I-Disease", "O", "O", "O", "O", "O"], {}),
    # chatter before and after, and a next "Sentence:" the model went on to invent
    ("Sure! Here it is:\n" + GOOD + "\nSentence: Other words/O", None, {}),
    # a dropped word ("risk") and a rewritten one ("BRCA-1")
    ("Tamoxifen/B-Chemical reduces/O breast/B-Disease cancer/I-Disease in/O BRCA-1/O carriers/O ./O",
     ["B-Chemical", "O", "B-Disease", "I-Disease", "O", "O", "O", "O", "O"], {"dropped": 2, "extra": 1}),
    # merged words and an extra word
    ("Tamoxifen/B-Chemical reduces/O breastcancer/B-Disease risk/O in/O BRCA1/O carriers/O ./O today/O",
     ["B-Chemical", "O", "O", "O", "O", "O", "O", "O", "O"], {"dropped": 2, "extra": 2}),
    # unknown tags and broken BIO
    ("Tamoxifen/B-Gene reduces/O breast/I-Disease cancer/I-Disease risk/X in/O BRCA1/O carriers/O ./O",
     ["O", "O", "B-Disease", "I-Disease", "O", "O", "O", "O", "O"], {"unknown_tags": 2, "repaired_bio": 1}),
    # words without tags, lower-cased copies
    ("tamoxifen reduces/O breast/B-Disease cancer/I-Disease risk in BRCA1 carriers .",
     ["O", "O", "B-Disease", "I-Disease", "O", "O", "O", "O", "O"], {}),
    ("", ["O"] * 9, {"dropped": 9}),
])
def test_parser_survives_adversarial_answers(answer, expected_tags, stat):
    tags, stats = parse_response(answer, WORDS, LABELS)
    assert len(tags) == len(WORDS)
    if expected_tags is not None:
        assert tags == expected_tags
    else:
        assert tags[:4] == ["B-Chemical", "O", "B-Disease", "I-Disease"]
    for name, value in stat.items():
        assert getattr(stats, name) == value, stats
    spans = bio_to_spans(TEXT, tokenize(TEXT), tags)
    assert_spans_match_text(TEXT, spans)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.lists(st.sampled_from(WORDS + ["B-Disease", "/", "Tagged:", "\n", "I-Chemical"]),
                                       max_size=40))
def test_whatever_the_model_says_spans_are_valid(noise, pieces):
    answer = noise + " ".join(pieces) + " " + " ".join(f"{w}/{t}" for w, t in zip(WORDS, pieces))
    tags, _ = parse_response(answer, WORDS, LABELS)
    spans = bio_to_spans(TEXT, tokenize(TEXT), tags)
    assert_spans_match_text(TEXT, spans)
    assert {s.label for s in spans} <= {"Disease", "Chemical"}

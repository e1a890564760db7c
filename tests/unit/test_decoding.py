"""BIO-constrained decoding (``clinie.extractors.decoding``), how every tagger reads its tags:
pure numpy, no model."""

import itertools

import numpy as np
import pytest

from clinie.core import bio_labels, tokenize
from clinie.extractors.decoding import allowed_transitions, bio_viterbi
from clinie.extractors.encoder import decode

TAGS = bio_labels(["Disease", "Chemical"])  # O B-Disease I-Disease B-Chemical I-Chemical


def valid(tags: list[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def brute_force(p: np.ndarray, tags: list[str]) -> list[int]:
    """The valid sequence of highest probability, by enumeration."""
    best, best_score = None, -np.inf
    for seq in itertools.product(range(len(tags)), repeat=len(p)):
        if not valid([tags[i] for i in seq]):
            continue
        score = sum(np.log(max(p[w, i], 1e-12)) for w, i in enumerate(seq))
        if score > best_score:
            best, best_score = list(seq), score
    return best


def test_transitions_forbid_inside_after_outside_or_another_label():
    follow, start = allowed_transitions(TAGS)
    i_disease = TAGS.index("I-Disease")
    assert not start[i_disease] and start[TAGS.index("B-Disease")] and start[0]
    assert not follow[0, i_disease]  # O -> I-Disease
    assert not follow[TAGS.index("B-Chemical"), i_disease]
    assert not follow[TAGS.index("I-Chemical"), i_disease]
    assert follow[TAGS.index("B-Disease"), i_disease] and follow[i_disease, i_disease]
    assert follow[:, 0].all() and follow[:, TAGS.index("B-Chemical")].all()  # O and B-x anywhere


def test_a_valid_argmax_is_kept():
    p = np.array([[.8, .1, .05, .03, .02], [.1, .7, .1, .05, .05], [.1, .1, .7, .05, .05],
                  [.9, .025, .025, .025, .025]])
    assert bio_viterbi(p, TAGS) == p.argmax(axis=1).tolist()


def test_a_stray_inside_becomes_a_begin_or_outside():
    # argmax: O I-Disease; valid: O B-Disease (.6 * .35) beats B-Disease I-Disease (.3 * .4)
    p = np.array([[.6, .3, .1, 0, 0], [.2, .35, .4, .05, 0]])
    assert [TAGS[i] for i in bio_viterbi(p, TAGS)] == ["O", "B-Disease"]
    # the same, where continuing the span is likelier: B-Disease I-Disease (.45 * .6) over O B (.5 * .3)
    p = np.array([[.5, .45, .05, 0, 0], [.1, .3, .6, 0, 0]])
    assert [TAGS[i] for i in bio_viterbi(p, TAGS)] == ["B-Disease", "I-Disease"]


def test_inside_of_another_label_is_not_continued():
    p = np.array([[.1, .8, .05, .05, 0], [.1, .05, .05, .1, .7]])  # argmax: B-Disease I-Chemical
    decoded = [TAGS[i] for i in bio_viterbi(p, TAGS)]
    assert valid(decoded) and decoded != ["B-Disease", "I-Chemical"]


def test_matches_brute_force_on_random_distributions():
    rng = np.random.default_rng(0)
    for n in range(1, 6):
        for _ in range(20):
            p = rng.dirichlet(np.ones(len(TAGS)) * 0.5, size=n)
            got = bio_viterbi(p, TAGS)
            assert valid([TAGS[i] for i in got])
            assert got == brute_force(p, TAGS)


def test_zero_probabilities_and_no_words():
    assert bio_viterbi(np.zeros((0, 3)), ["O", "B-D", "I-D"]) == []
    assert bio_viterbi(np.array([[0., 0., 1.]]), ["O", "B-D", "I-D"]) in ([0], [1])  # I-D cannot start


@pytest.mark.parametrize("constrained", [False, True])
def test_decode_reads_spans_and_each_words_probability_either_way(constrained):
    text = "no acute asthma"
    p = np.array([[.9, .1, 0], [.4, .3, .3], [.1, .3, .6]])  # argmax O O I-D; constrained O B-D I-D
    spans, decoded = decode(text, tokenize(text), p, ["O", "B-D", "I-D"], constrained=constrained)
    assert [(s.text, round(s.score, 2)) for s in spans] == ([("acute asthma", 0.45)] if constrained
                                                            else [("asthma", 0.6)])
    assert decoded.tolist() == ([.9, .3, .6] if constrained else [.9, .4, .6])

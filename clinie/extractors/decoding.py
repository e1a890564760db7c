"""BIO-constrained decoding of per-word tag distributions (Viterbi): how every tagger here reads its tags.

A tagger's per-word argmax may read a broken sequence — ``O I-Disease`` or ``B-Chemical
I-Disease`` — which ``bio_to_spans`` reads leniently (a stray ``I-x`` starts a span). Constrained
decoding instead picks the tag sequence of highest probability (the product of the words' tag
probabilities, each word read independently) among those that are valid BIO: an ``I-x`` only
after ``B-x`` or ``I-x``, never first. There are no learnt transition scores: the constraint is
all it adds, so it needs no training data and no hyper-parameter (Lample et al. 2016 and most
BiLSTM/transformer NER taggers decode under the same constraint, with or without a CRF).

    >>> tags = ["O", "B-D", "I-D"]
    >>> p = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])  # argmax: O I-D (a stray I-D)
    >>> [tags[i] for i in p.argmax(axis=1)]
    ['O', 'I-D']
    >>> [tags[i] for i in bio_viterbi(p, tags)]  # O B-D (0.6 * 0.3) beats B-D I-D (0.3 * 0.5)
    ['O', 'B-D']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the floor under a probability before its log: a word the tagger gives 0 for every valid tag
#: still decodes
EPSILON = 1e-12


def allowed_transitions(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Which tag may follow which (``[previous, next]``), and which may start a sequence: ``I-x``
    only after ``B-x`` or ``I-x``; anything else anywhere.

    >>> follow, start = allowed_transitions(["O", "B-D", "I-D"])
    >>> follow.astype(int).tolist(), start.astype(int).tolist()
    ([[1, 1, 0], [1, 1, 1], [1, 1, 1]], [1, 1, 0])
    """
    n = len(tags)
    follow = np.ones((n, n), dtype=bool)
    start = np.ones(n, dtype=bool)
    for j, tag in enumerate(tags):
        if tag.startswith("I-"):
            label = tag[2:]
            start[j] = False
            for i, previous in enumerate(tags):
                follow[i, j] = previous in (f"B-{label}", f"I-{label}")
    return follow, start


def bio_viterbi(word_probs: np.ndarray, tags: Sequence[str]) -> list[int]:
    """The indices (into ``tags``) of the valid BIO sequence that maximises the product of the
    words' tag probabilities (a row per word of ``word_probs``, columns in ``tags`` order). A
    sequence the argmax already reads as valid BIO is returned unchanged."""
    n_words = len(word_probs)
    if n_words == 0:
        return []
    follow, start = allowed_transitions(tags)
    log_p = np.log(np.maximum(np.asarray(word_probs, dtype=np.float64), EPSILON))
    forbidden = np.where(follow, 0.0, -np.inf)
    score = np.where(start, log_p[0], -np.inf)
    back = np.zeros((n_words, len(tags)), dtype=np.int64)
    for w in range(1, n_words):
        candidates = score[:, None] + forbidden  # [previous, next]
        back[w] = candidates.argmax(axis=0)
        score = candidates.max(axis=0) + log_p[w]
    best = [int(score.argmax())]
    for w in range(n_words - 1, 0, -1):
        best.append(int(back[w, best[-1]]))
    return best[::-1]


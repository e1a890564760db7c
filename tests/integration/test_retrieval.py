"""kNN demonstrations over MiniLM sentence embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from clinie.core import Document
from clinie.retrieval import DemoPool, Embedder


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def test_embeddings_are_normalised_and_meaningful(embedder):
    v = embedder.embed(["breast cancer risk in BRCA1 carriers", "BRCA1 mutations and breast cancer",
                        "the weather in Paris is mild"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_nearest_is_deterministic_most_similar_last_and_can_exclude(embedder):
    docs = [Document("a", "Familial breast cancer and ovarian cancer."),
            Document("b", "Aspirin 81 mg daily by mouth."),
            Document("c", "Hereditary breast cancer genes."),
            Document("d", ""),  # empty: never a demonstration
            Document("e", "Warfarin interacts with aspirin.")]
    pool = DemoPool(embedder, docs)
    assert len(pool) == 4
    found = pool.nearest("risk of breast cancer", k=2)
    assert [d.id for d in found] in (["a", "c"], ["c", "a"]) and found == pool.nearest("risk of breast cancer", 2)
    assert "c" not in [d.id for d in pool.nearest("risk of breast cancer", 2, exclude_ids=frozenset({"c"}))]
    assert pool.nearest("anything", 0) == [] and len(pool.nearest("x", 10)) == 4
    pool.add([Document("f", "Breast cancer risk factors.")])
    assert pool.nearest("risk of breast cancer", 1)[0].id == "f"

"""The approximate IVF index: recall against exact search, incremental updates, persistence."""

import numpy as np
import pytest

from retrieval import ExtractorConfig, SearchConfig
from retrieval.ann import AnnIndex
from retrieval.pooling import l2_normalize
from retrieval.ranking import Ranker
from retrieval.whitening import fit


@pytest.fixture(scope="module")
def clustered():
    """Vectors around 200 centres, like embeddings of 200 kinds of thing."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 64)).astype(np.float32)
    x = l2_normalize(centres[rng.integers(0, 200, 20000)] + 0.3 * rng.standard_normal((20000, 64)).astype(np.float32))
    queries = l2_normalize(x[rng.integers(0, 20000, 200)] + 0.1 * rng.standard_normal((200, 64)).astype(np.float32))
    return x, queries


def _recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b)]))


def test_ivf_candidates_rescored_match_exact_search(clustered):
    x, q = clustered
    ids = np.arange(100, 100 + len(x))
    ann = AnnIndex.build(ids, x)
    center = fit("center", x)
    exact = Ranker(x, "cosine", "qe", whitening=center).search(q, 10).indices
    approx = Ranker(x, "cosine", "qe", whitening=center, ann=ann, ids=ids).search(q, 10)
    assert _recall(approx.indices, exact) >= 0.95
    assert np.all(np.diff(approx.scores, axis=1) <= 1e-6)


def test_incremental_sync_and_persistence(clustered, tmp_path):
    x, q = clustered
    ids = np.arange(len(x))
    ann = AnnIndex.build(ids[:15000], x[:15000])
    assert ann.sync(ids[1000:], x[1000:]) == (5000, 1000)  # 5000 new images, 1000 removed
    assert ann.ids == set(range(1000, 20000))
    found = ann.search(x[5000:5001], 1)
    assert found[0, 0] == 5000
    ann.save(tmp_path / "i.faiss")
    again = AnnIndex.load(tmp_path / "i.faiss")
    assert again.ids == ann.ids
    np.testing.assert_array_equal(again.search(q, 20), ann.search(q, 20))


def test_service_uses_and_persists_the_index(studio, indexed, photo_folder):
    exact = studio.search(photo_folder / "cats" / "chelsea.jpg", "photos", scfg=SearchConfig(k=5, index="exact"))
    approx = studio.search(photo_folder / "cats" / "chelsea.jpg", "photos", scfg=SearchConfig(k=5, index="ivf"))
    assert [h.name for h in approx.hits] == [h.name for h in exact.hits]
    cid = studio.store.collection_id("photos")
    config_id = studio.store.find_config(studio.resolve(ExtractorConfig()))
    assert studio.ann_path(cid, config_id).is_file()

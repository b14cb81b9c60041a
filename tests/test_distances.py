import numpy as np
from scipy.spatial.distance import cdist

from retrieval.distances import METRICS, cosine_similarity, euclidean_distance, manhattan_distance
from retrieval.pooling import l2_normalize


def _data():
    rng = np.random.default_rng(0)
    return l2_normalize(rng.normal(size=(3, 8))), l2_normalize(rng.normal(size=(20, 8)))


def test_against_scipy():
    q, g = _data()
    np.testing.assert_allclose(cosine_similarity(q, g), 1 - cdist(q, g, "cosine"), atol=1e-6)
    np.testing.assert_allclose(euclidean_distance(q, g), cdist(q, g, "euclidean"), atol=1e-5)
    np.testing.assert_allclose(manhattan_distance(q, g), cdist(q, g, "cityblock"), atol=1e-5)


def test_directions():
    assert METRICS["cosine"].higher_is_better
    assert not METRICS["euclidean"].higher_is_better
    assert METRICS["mahalanobis"].whitened

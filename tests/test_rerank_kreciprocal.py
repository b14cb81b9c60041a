import numpy as np
import pytest
from rerank_galleries import clusters, hubs, loo_map, rebuilt_map

from retrieval.ranking import Ranker
from retrieval.rerank import Lazy
from retrieval.rerank.kreciprocal import KReciprocal, default_params


def _ranker(x, k1, k2, **kw):
    return Ranker(x, "cosine", "kreciprocal", graph=Lazy(lambda: KReciprocal(x, k1=k1, k2=k2, **kw)))


def _dense_sets(x, k1):
    """Reciprocal sets of the gallery by brute force: sets of rows, each item included."""
    sims = x @ x.T
    order = np.argsort(-(sims - 10 * np.eye(len(x))), axis=1, kind="stable")  # itself last: excluded below
    near = [set(order[i, :k1].tolist()) | {i} for i in range(len(x))]
    return [{j for j in near[i] if i in near[j]} for i in range(len(x))]


def test_encodings_hold_the_k_reciprocal_sets():
    x, _ = clusters()
    state = KReciprocal(x, k1=6, k2=1)
    recip = _dense_sets(x, 6)
    half = _dense_sets(x, 3)
    for g in range(len(x)):
        support = set(state.encoding.v[g].indices.tolist())
        expected = set(recip[g])
        for member in recip[g]:
            if len(recip[g] & half[member]) > 2 / 3 * len(half[member]):
                expected |= half[member]
        assert support == expected
        assert state.encoding.v[g].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("gallery, k1, k2", [(clusters, 6, 3), (hubs, 9, 3)])
def test_honest_leave_one_out_equals_removing_the_row_and_rebuilding(gallery, k1, k2):
    x, labels = gallery()
    honest = loo_map(_ranker(x, k1, k2), x, labels)
    assert honest == pytest.approx(rebuilt_map(lambda g: _ranker(g, k1, k2), x, labels), abs=1e-6)


def test_naive_leave_one_out_would_flatter_k_reciprocal():
    """Left in, a hub's own row is its query's nearest reciprocal neighbour and a dimension of its spokes' codes."""
    x, labels = hubs(spread=1.6)
    ranker = _ranker(x, 9, 3)
    naive, honest = loo_map(ranker, x, labels, absent=False), loo_map(ranker, x, labels)
    assert naive > honest + 0.05


def test_scores_are_one_minus_the_final_distance_and_repeat_exactly():
    x, _ = clusters(per_class=20)
    ranker = _ranker(x, 8, 3, lam=1.0)  # lambda 1: the original distance alone
    ranking = ranker.search(x[:5], 10, exclude=[np.array([i]) for i in range(5)])
    sims = x[:5] @ x.T
    np.testing.assert_allclose(ranking.scores, 1 - 0.5 * (1 - np.take_along_axis(sims, ranking.indices, 1)),
                               atol=1e-6)
    ranker = _ranker(x, 8, 3)
    np.testing.assert_array_equal(ranker.keys(x[:5]), ranker.keys(x[:5]))
    assert ranker.search(x[:5], 10).timings["rerank_ms"] > 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_galleries(n):
    x, _ = clusters()
    ranker = Ranker(x[:n], "cosine", "kreciprocal")
    assert ranker.search(x[:n], 5).indices[:, 0].tolist() == list(range(n))
    assert ranker.search(x[:n], 5, exclude=[np.array([i]) for i in range(n)]).indices.shape == (n, n - 1)
    assert default_params(n)["k1"] == 4


def test_the_vector_index_seeds_from_its_candidates():
    from retrieval.ann import AnnIndex

    x, _ = clusters(n_classes=20, per_class=100, d=32, noise=0.8)
    ids = np.arange(len(x)) + 100
    exact = Ranker(x, "cosine", "kreciprocal")
    approx = Ranker(x, "cosine", "kreciprocal", ann=AnnIndex.build(ids, x), ids=ids, graph=exact.graph)
    a, b = exact.search(x[:50], 10), approx.search(x[:50], 10)
    assert np.mean([len(set(r) & set(s)) / 10 for r, s in zip(a.indices, b.indices)]) > 0.8

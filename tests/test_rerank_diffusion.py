import numpy as np
import pytest
from rerank_galleries import clusters, hubs, loo_map, rebuilt_map
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve

from retrieval.pooling import l2_normalize
from retrieval.ranking import Ranker
from retrieval.rerank import Lazy
from retrieval.rerank.diffusion import Diffusion, default_k


def _ranker(x, k, **kw):
    return Ranker(x, "cosine", "diffusion", graph=Lazy(lambda: Diffusion(x, k=k, **kw)))


def test_diffusion_solves_the_linear_system_for_each_query():
    x, _ = clusters()
    state = Diffusion(x, k=5)
    sims = x[:7] @ x.T
    f = state.diffuse(sims)
    d = np.where(state.degree > 0, 1 / np.sqrt(np.maximum(state.degree, 1e-12)), 0)
    s = state.w.multiply(d[:, None]).multiply(d[None, :]).tocsc()
    a = np.eye(len(x)) - state.alpha * s.toarray()
    for j in range(7):
        y = state._seeds(sims[j:j + 1])[:, 0]
        np.testing.assert_allclose(f[j], np.linalg.solve(a, y), atol=1e-5 * y.max())
        np.testing.assert_allclose(f[j], spsolve(csc_matrix(a), y), atol=1e-5 * y.max())


def test_the_graph_is_the_symmetric_mutual_knn_graph():
    x, _ = clusters()
    state = Diffusion(x, k=4)
    w = state.w.toarray()
    np.testing.assert_array_equal(w, w.T)
    listed = np.zeros_like(w, bool)
    np.put_along_axis(listed, state.neighbours.idx[:, :4], True, axis=1)
    np.testing.assert_array_equal(w > 0, listed & listed.T & (x @ x.T > 0))


@pytest.mark.parametrize("gallery, k", [(clusters, 5), (hubs, 3)])
def test_honest_leave_one_out_equals_removing_the_row_and_rebuilding(gallery, k):
    """The removed node's edges go, the rows that listed it take their next neighbour and form the
    mutual edges that makes, and degrees are recomputed: the graph is the rebuilt one, on any gallery."""
    x, labels = gallery()
    honest = loo_map(_ranker(x, k), x, labels)
    assert honest == pytest.approx(rebuilt_map(lambda g: _ranker(g, k), x, labels), abs=1e-6)


def test_naive_leave_one_out_would_flatter_diffusion():
    """Left in the graph, a hub's own node is its query's strongest seed and spreads to its spokes."""
    x, labels = hubs()
    ranker = _ranker(x, 3)
    naive, honest = loo_map(ranker, x, labels, absent=False), loo_map(ranker, x, labels)
    assert naive > honest + 0.05


def test_batches_and_single_queries_agree_and_repeat_exactly():
    x, _ = clusters(per_class=30)
    ranker = _ranker(x, 8)
    exclude = [np.array([i]) for i in range(20)]
    batch = ranker.keys(x[:20], exclude)
    one = np.concatenate([ranker.keys(x[i:i + 1], exclude[i:i + 1]) for i in range(20)])
    np.testing.assert_allclose(batch, one, atol=1e-6)  # float32 similarities: one product or twenty
    np.testing.assert_array_equal(ranker.keys(x[:20], exclude), batch)


def test_rows_the_graph_never_reaches_keep_the_metric_order():
    rng = np.random.default_rng(3)
    near = l2_normalize(np.array([1.0, 0, 0, 0]) + 0.05 * rng.normal(size=(6, 4)))
    far = l2_normalize(np.array([0, 1.0, 0, 0]) + 0.3 * rng.normal(size=(6, 4)))
    x = np.concatenate([near, far]).astype(np.float32)
    q = l2_normalize(np.array([[1.0, 0.2, 0, 0]], np.float32))
    ranking = _ranker(x, 3).search(q, 12)
    assert set(ranking.indices[0, :6]) == set(range(6))
    tail = ranking.indices[0, 6:]
    np.testing.assert_array_equal(tail, 6 + np.argsort(-(q @ far.T)[0], kind="stable"))
    assert ranking.scores[0, 0] == pytest.approx(1.0) and np.all(ranking.scores[0, 6:] == 0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_galleries(n):
    x, _ = clusters()
    ranker = Ranker(x[:n], "cosine", "diffusion")
    assert ranker.search(x[:n], 5).indices.shape == (n, n)
    assert ranker.search(x[:n], 5, exclude=[np.array([i]) for i in range(n)]).indices.shape == (n, n - 1)
    assert default_k(n) == 5


def test_the_vector_index_seeds_from_its_candidates():
    from retrieval.ann import AnnIndex

    x, _ = clusters(n_classes=20, per_class=100, d=32, noise=0.8)
    ids = np.arange(len(x)) + 100
    exact = Ranker(x, "cosine", "diffusion")
    approx = Ranker(x, "cosine", "diffusion", ann=AnnIndex.build(ids, x), ids=ids, graph=exact.graph)
    a, b = exact.search(x[:50], 10), approx.search(x[:50], 10)
    overlap = np.mean([len(set(r) & set(s)) / 10 for r, s in zip(a.indices, b.indices)])
    assert overlap > 0.8
    assert "graph_build_ms" in a.timings and "graph_build_ms" not in b.timings  # built once, shared
    assert b.timings["rerank_ms"] > 0

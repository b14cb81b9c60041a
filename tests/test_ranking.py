import numpy as np
import pytest

from retrieval.pooling import l2_normalize
from retrieval.ranking import RERANKS, Ranker, build_ranker, top_k
from retrieval.rerank.qe import alpha_query_expansion
from retrieval.whitening import fit_whitening


@pytest.fixture
def gallery():
    return l2_normalize(np.random.default_rng(0).normal(size=(500, 16)))


def test_top_k_matches_full_sort_and_breaks_ties_by_index():
    keys = np.array([[0.5, 0.9, 0.9, 0.1, 0.9, 0.3] * 20])
    idx = top_k(keys, 4)
    assert idx.tolist() == [[1, 2, 4, 7]]
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(5, 1000))
    np.testing.assert_array_equal(top_k(keys, 10), np.argsort(-keys, axis=1, kind="stable")[:, :10])


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan"])
def test_search_finds_each_gallery_item_first(gallery, metric):
    ranking = Ranker(gallery, metric).search(gallery[:50], k=5)
    assert ranking.indices[:, 0].tolist() == list(range(50))
    # cosine is a similarity (descending), the others distances (ascending)
    diffs = np.diff(ranking.scores, axis=1)
    assert np.all(diffs <= 1e-6) if metric == "cosine" else np.all(diffs >= -1e-6)


def test_mahalanobis_needs_and_uses_a_fitted_transform(gallery):
    with pytest.raises(ValueError, match="Mahalanobis"):
        Ranker(gallery, "mahalanobis")
    ranker = Ranker(gallery, "mahalanobis", mahalanobis=fit_whitening(gallery))
    assert ranker.search(gallery[:10], 1).indices[:, 0].tolist() == list(range(10))


def test_exclude_hides_rows(gallery):
    ranking = Ranker(gallery).search(gallery[:3], k=2, exclude=[np.array([0]), np.array([1]), np.array([2])])
    assert all(r not in row for r, row in zip(range(3), ranking.indices.tolist()))


def test_query_expansion_moves_query_towards_its_neighbours(gallery):
    q = l2_normalize(gallery[0] + 0.5 * gallery[1])[None]
    expanded = alpha_query_expansion(q, gallery, n=2)
    assert np.linalg.norm(expanded) == pytest.approx(1.0, abs=1e-5)
    assert float((expanded @ gallery[0])[0]) > float((q @ gallery[0])[0])


def test_whitened_ranker_and_full_order(gallery):
    ranker = Ranker(gallery, "cosine", "qe", whitening=fit_whitening(gallery))
    order = ranker.full_order(gallery[:4])
    assert order.shape == (4, 500)
    assert sorted(order[0].tolist()) == list(range(500))
    assert order[:, 0].tolist() == [0, 1, 2, 3]


def test_blocked_batch_search_equals_a_full_sort():
    rng = np.random.default_rng(5)
    gallery = l2_normalize(rng.normal(size=(20000, 8)).astype(np.float32))
    gallery[15000] = gallery[10]  # a tie that spans two gallery blocks
    queries = np.concatenate([gallery[10:11], l2_normalize(rng.normal(size=(2047, 8)).astype(np.float32))])
    ranking = Ranker(gallery, "cosine").search(queries, k=5)  # 2048 queries: the gallery is walked in 3 blocks
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(ranking.indices, expected)
    assert ranking.indices[0, :2].tolist() == [10, 15000]
    np.testing.assert_allclose(ranking.scores, np.take_along_axis(queries @ gallery.T, expected, axis=1), rtol=1e-6)


@pytest.mark.parametrize("metric, whiten, asked", [
    ("cosine", "none", []),
    ("cosine", "pca", ["pca"]),
    ("mahalanobis", "none", ["mahalanobis+none"]),
    ("mahalanobis", "center", ["center", "mahalanobis+center"]),
])
@pytest.mark.parametrize("rerank", list(RERANKS))
def test_build_ranker_asks_fitted_for_each_learned_transform(gallery, metric, whiten, asked, rerank):
    """A caller's cache sees exactly the transforms it may keep, and caching changes no result."""
    kinds, kept = [], {}

    def fitted(kind, fit):
        kinds.append(kind)
        kept[kind] = fit()
        return kept[kind]

    cached = build_ranker(gallery, metric, rerank, whiten, fitted=fitted)
    assert kinds == asked
    default = build_ranker(gallery, metric, rerank, whiten)
    again = build_ranker(gallery, metric, rerank, whiten, fitted=lambda kind, fit: kept[kind])  # nothing refitted
    for ranker in (cached, again):
        expected, got = default.search(gallery[:20], 10), ranker.search(gallery[:20], 10)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-6)


def test_build_ranker_passes_the_vector_index_on(gallery):
    from retrieval.ann import AnnIndex

    ids = np.arange(10, 10 + len(gallery))
    ann = AnnIndex.build(ids, gallery)
    ranker = build_ranker(gallery, "cosine", "qe", "center", ann=ann, ids=ids)
    assert ranker.ann is ann and ranker.ids is ids
    assert ranker.search(gallery[:5], 1).indices[:, 0].tolist() == list(range(5))


@pytest.mark.parametrize("metric, rerank", [("chebyshev", "none"), ("cosine", "mmr")])
def test_unknown_choices_are_refused_by_name(gallery, metric, rerank):
    with pytest.raises(ValueError, match="choose one of"):
        build_ranker(gallery, metric, rerank)


def test_the_registry_lists_every_re_ranker_and_config_reads_it():
    from retrieval import config

    assert list(RERANKS) == ["none", "qe", "dba", "diffusion", "kreciprocal"]
    assert config.RERANKS == tuple(RERANKS)


@pytest.mark.parametrize("rerank", list(RERANKS))
@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_galleries_and_exclusions_for_every_re_ranker(rerank, n):
    x = l2_normalize(np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32))
    ranker = build_ranker(x, "cosine", rerank, "center")
    ranking = ranker.search(x, 10)
    assert ranking.indices.shape == (n, n) and "rerank_ms" in ranking.timings
    assert all(sorted(row) == list(range(n)) for row in ranking.indices.tolist())
    exclude = [np.array([i, (i + 1) % n]) for i in range(n)]
    hidden = ranker.search(x, 10, exclude=exclude).indices
    assert hidden.shape == (n, max(n - 2, 0)) if n > 1 else hidden.shape == (1, 0)
    assert not any(np.isin(row, ex).any() for row, ex in zip(hidden, exclude))
    order = ranker.full_order(x, exclude)
    assert all(set(row[-len(np.unique(ex)):]) == set(ex) for row, ex in zip(order, exclude))


@pytest.mark.parametrize("rerank", list(RERANKS))
def test_ties_are_ordered_by_row_for_every_re_ranker(rerank):
    rng = np.random.default_rng(2)
    x = l2_normalize(rng.normal(size=(40, 8)).astype(np.float32))
    x[30] = x[5]
    x[35] = x[5]  # three identical rows: equal scores under every re-ranker
    ranking = build_ranker(x, "cosine", rerank).search(x[5:6], 40)
    at = [int(np.flatnonzero(ranking.indices[0] == r)[0]) for r in (5, 30, 35)]
    assert at == sorted(at) and at[2] - at[0] == 2

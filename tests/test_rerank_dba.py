import numpy as np
import pytest
from rerank_galleries import clusters, hubs, loo_map, rebuilt_map

from retrieval.pooling import l2_normalize
from retrieval.ranking import Ranker
from retrieval.rerank.dba import DBA, database_augmentation


def test_dba_keeps_items_closest_to_themselves():
    gallery = l2_normalize(np.random.default_rng(0).normal(size=(500, 16)))
    augmented = database_augmentation(gallery, n=2)
    np.testing.assert_allclose(np.linalg.norm(augmented, axis=1), 1.0, atol=1e-5)
    assert np.all(np.argmax(gallery @ augmented.T, axis=1) == np.arange(len(gallery)))


def test_absent_recomputes_exactly_the_vectors_a_rebuild_would_change():
    x, _ = clusters()
    dba = DBA(x, 2)
    listed = np.bincount(dba.neighbours.idx[:, :2].ravel(), minlength=len(x))
    gone = int(np.argmax(listed))  # the row most often among others' 2 neighbours
    rows, vectors = dba.absent(np.array([gone]))
    assert len(rows) == listed[gone] >= 2 and gone not in rows
    keep = np.setdiff1d(np.arange(len(x)), [gone])
    patched = dba.space.copy()
    patched[rows] = vectors
    np.testing.assert_allclose(patched[keep], DBA(x[keep], 2).space, atol=1e-6)


@pytest.mark.parametrize("gallery", [clusters, hubs])
def test_honest_leave_one_out_equals_removing_the_row_and_rebuilding(gallery):
    x, labels = gallery()
    honest = loo_map(Ranker(x, "cosine", "dba"), x, labels)
    assert honest == pytest.approx(rebuilt_map(lambda g: Ranker(g, "cosine", "dba"), x, labels), abs=1e-9)


def test_naive_leave_one_out_would_flatter_dba():
    """A hub's own row, averaged into its spokes' vectors, pulls them towards the hub's query."""
    x, labels = hubs()
    ranker = Ranker(x, "cosine", "dba")
    naive, honest = loo_map(ranker, x, labels, absent=False), loo_map(ranker, x, labels)
    assert naive > honest + 0.03
    assert honest > loo_map(Ranker(x, "cosine", "none"), x, labels)  # DBA still helps here, honestly


def test_excluded_rows_never_come_back_and_other_metrics_see_the_patch():
    x, _ = clusters()
    exclude = [np.array([i, (i + 1) % len(x)]) for i in range(len(x))]
    for metric in ("cosine", "euclidean"):
        ranking = Ranker(x, metric, "dba").search(x, k=len(x), exclude=exclude)
        assert ranking.indices.shape == (len(x), len(x) - 2)
        assert not any(np.isin(row, ex).any() for row, ex in zip(ranking.indices, exclude))
    cos = Ranker(x, "cosine", "dba").full_order(x[:10], exclude[:10])
    euc = Ranker(x, "euclidean", "dba").full_order(x[:10], exclude[:10])
    np.testing.assert_array_equal(cos[:, :-2], euc[:, :-2])  # same unit vectors: the same order

import numpy as np
import pytest

from retrieval.pooling import l2_normalize
from retrieval.rerank.neighbours import EXTRA, Neighbours, pair_similarities


@pytest.fixture
def x():
    x = l2_normalize(np.random.default_rng(0).normal(size=(300, 8))).astype(np.float32)
    x[40] = x[7]  # a tie: equal similarity to everything, ordered by row
    return x


def test_lists_are_a_full_sort_without_the_row_itself(x):
    nb = Neighbours(x, 12)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(nb.idx, np.argsort(-sims, axis=1, kind="stable")[:, :12])
    assert nb.idx[7, 0] == 40 and nb.idx[40, 0] == 7
    np.testing.assert_allclose(nb.sims, np.take_along_axis(sims, nb.idx, axis=1), rtol=1e-6)


def test_without_gives_the_lists_of_a_gallery_rebuilt_without_those_rows(x):
    excluded = np.array([7, 40, 123])
    keep = np.setdiff1d(np.arange(len(x)), excluded)
    idx, sims = Neighbours(x, 6 + EXTRA).without(keep, excluded, 6)
    rebuilt = Neighbours(x[keep], 6)
    np.testing.assert_array_equal(idx, keep[rebuilt.idx])
    np.testing.assert_allclose(sims, rebuilt.sims, rtol=1e-6)


def test_a_row_that_loses_more_than_its_spare_entries_is_recomputed(x):
    x = x.copy()
    crowd = np.arange(100, 100 + EXTRA + 4)
    x[crowd] = l2_normalize(x[0] + 0.01 * np.random.default_rng(1).normal(size=(len(crowd), 8)))
    nb = Neighbours(x, 3 + EXTRA)
    assert set(nb.idx[0]) <= set(crowd)  # every kept entry of row 0 is in the crowd
    keep = np.setdiff1d(np.arange(len(x)), crowd)
    idx, _ = nb.without(keep, crowd, 3)
    np.testing.assert_array_equal(idx, keep[Neighbours(x[keep], 3).idx])


def test_reverse_lists_the_rows_whose_lists_a_removal_changes(x):
    nb = Neighbours(x, 10)
    excluded = np.array([3, 250])
    expected = [r for r in range(len(x)) if r not in excluded and np.isin(nb.idx[r, :5], excluded).any()]
    assert nb.reverse(excluded, 5).tolist() == expected


@pytest.mark.parametrize("n", [1, 2, 4])
def test_tiny_galleries_pad_with_minus_one(n, x):
    nb = Neighbours(x[:n], 5)
    assert (nb.idx >= 0).sum(axis=1).tolist() == [n - 1] * n
    assert np.all(np.isneginf(nb.sims[nb.idx < 0]))
    idx, _ = nb.without(np.arange(n), np.array([0]), 5)
    assert (idx[1:] >= 0).sum(axis=1).tolist() == [n - 2] * (n - 1)


def test_pair_similarities_are_symmetric_to_the_bit(x):
    a, b = np.arange(0, 300), np.arange(299, -1, -1)
    np.testing.assert_array_equal(pair_similarities(x, a, b), pair_similarities(x, b, a))

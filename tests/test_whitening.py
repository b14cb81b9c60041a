import numpy as np
from scipy.spatial.distance import mahalanobis

from retrieval.whitening import fit_whitening, ledoit_wolf


def test_whitened_data_has_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 4)) @ np.array([[3, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0.2, 0], [0, 0, 1, 2.0]])
    w = fit_whitening(x)
    z = w.apply(x, normalize=False)
    cov = np.cov(z.T, bias=True)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-5)  # decorrelated
    # Unit variance, except where shrinkage (rightly) damps the weakest axis
    assert np.all(np.diag(cov) <= 1.001) and np.sum(np.diag(cov) > 0.99) >= 3
    assert w.shrinkage < 0.01  # plenty of samples: almost no shrinkage


def test_small_samples_are_shrunk_and_stay_invertible():
    x = np.random.default_rng(1).normal(size=(10, 50))
    _, cov, shrinkage = ledoit_wolf(x)
    assert 0.1 < shrinkage <= 1.0
    assert np.linalg.eigvalsh(cov).min() > 0


def test_euclidean_after_full_whitening_is_mahalanobis():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 6)) * [1, 2, 3, 1, 1, 5]
    _, cov, _ = ledoit_wolf(x)
    w = fit_whitening(x)
    a, b = x[0], x[1]
    expected = mahalanobis(a, b, np.linalg.inv(cov))
    got = np.linalg.norm(w.apply(a[None], False) - w.apply(b[None], False))
    assert abs(got - expected) < 1e-4 * expected


def test_round_trip_through_arrays():
    w = fit_whitening(np.random.default_rng(3).normal(size=(50, 5)))
    again = type(w).from_arrays(w.to_arrays())
    np.testing.assert_array_equal(again.projection, w.projection)
    assert again.shrinkage == w.shrinkage


def test_centering_removes_the_shared_component():
    from retrieval.whitening import fit

    x = np.abs(np.random.default_rng(4).normal(size=(100, 8))) + 5.0  # all-positive, like ReLU features
    center = fit("center", x)
    assert center.projection is None
    np.testing.assert_allclose(center.apply(x, normalize=False).mean(axis=0), 0.0, atol=1e-5)
    assert fit("none", x) is None
    again = type(center).from_arrays(center.to_arrays())
    assert again.projection is None and np.array_equal(again.mean, center.mean)


def test_fit_dispatches_on_the_registry_and_names_the_choices():
    import pytest

    from retrieval.whitening import FITTERS, fit

    x = np.random.default_rng(5).normal(size=(60, 6))
    for kind, fitter in FITTERS.items():
        got, expected = fit(kind, x), fitter(x)
        assert (got is None) == (expected is None)
        if got is not None:
            np.testing.assert_array_equal(got.apply(x), expected.apply(x))
    with pytest.raises(ValueError, match="choose one of none, center, pca"):
        fit("zca", x)

import numpy as np
import pytest

from retrieval import pooling


@pytest.fixture
def fmap():
    return np.random.default_rng(0).uniform(0, 6, (2, 3, 4, 5)).astype(np.float32)


def test_gap_and_mac_by_hand():
    x = np.array([1.0, 2.0, 3.0, 6.0], np.float32).reshape(1, 2, 2, 1)
    assert pooling.gap(x)[0, 0] == pytest.approx(3.0)
    assert pooling.mac(x)[0, 0] == pytest.approx(6.0)
    assert pooling.gem(x, p=2.0)[0, 0] == pytest.approx(np.sqrt((1 + 4 + 9 + 36) / 4))


def test_gem_spans_gap_to_mac(fmap):
    np.testing.assert_allclose(pooling.gem(fmap, p=1.0), pooling.gap(fmap), rtol=1e-5)
    np.testing.assert_allclose(pooling.gem(fmap, p=60.0), pooling.mac(fmap), rtol=0.05)
    assert np.all(pooling.gem(fmap, 3.0) >= pooling.gap(fmap) - 1e-5)
    assert np.all(pooling.gem(fmap, 3.0) <= pooling.mac(fmap) + 1e-5)


def test_unknown_pooling_is_refused(fmap):
    with pytest.raises(ValueError, match="unknown pooling"):
        pooling.pool(fmap, "median")


def test_l2_normalize_keeps_zero_rows():
    out = pooling.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("kind", pooling.POOLINGS)
def test_keras_layer_matches_numpy(fmap, kind):
    import keras

    from retrieval.backbones.keras_model import GlobalPooling

    out = keras.ops.convert_to_numpy(GlobalPooling(kind, 3.0)(fmap))
    np.testing.assert_allclose(out, pooling.pool(fmap, kind, 3.0), rtol=1e-5)

import numpy as np

from retrieval.backbones import REGISTRY
from retrieval.backbones.handcrafted import color_histogram, thumbnail_pixels
from retrieval.pooling import l2_normalize


def _solid(rgb, size=16):
    return np.full((size, size, 3), rgb, np.uint8)


def test_histogram_is_a_unit_vector_of_square_roots():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    h = color_histogram(images)
    assert h.shape == (3, 512)
    np.testing.assert_allclose((h**2).sum(axis=1), 1.0, rtol=1e-6)


def test_histogram_ranks_similar_colours_closer():
    red, dark_red, blue = _solid((230, 20, 20)), _solid((235, 25, 15)), _solid((20, 20, 230))
    h = color_histogram(np.stack([red, dark_red, blue]))
    assert h[0] @ h[1] > 0.99
    assert h[0] @ h[2] < 0.01


def test_histogram_counts_pixels_exactly():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (255, 255, 255)  # one of four pixels in the last bin
    h = color_histogram(img[None])[0] ** 2
    assert h[0] == 0.75 and h[-1] == 0.25


def test_thumbnail_is_mean_centred_and_registered():
    backbone = REGISTRY["pixels"].build()
    x = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    v = backbone.embed(x)
    assert v.shape == (2, 3072)
    np.testing.assert_allclose(v.mean(axis=1), 0.0, atol=1e-3)
    np.testing.assert_allclose(l2_normalize(thumbnail_pixels(x)), l2_normalize(v))

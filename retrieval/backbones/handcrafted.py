"""Hand-crafted descriptors in plain numpy: the "traditional features" baseline.

Why keep them: the point of CNN features is that they beat these. Putting a
colour histogram and raw thumbnail pixels in the same table as the CNNs lets a
user see by how much, on their own gallery.
"""

from __future__ import annotations

import numpy as np

from .base import Backbone, BackboneSpec

_BINS = 8  # per channel: 8**3 = 512 joint RGB bins
_THUMB = 32


def color_histogram(images: np.ndarray, bins: int = _BINS) -> np.ndarray:
    """Joint RGB histogram, L1-normalised then square-rooted (Hellinger).

    The square root makes a dot product between two histograms the
    Bhattacharyya coefficient, so cosine ranking compares distributions
    fairly instead of letting the dominant colour swamp the rest.
    """
    q = (images.astype(np.uint16) * bins) >> 8  # 0..bins-1 per channel
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = index.reshape(len(images), -1)
    n, size = len(images), bins**3
    offsets = (np.arange(n, dtype=np.int64)[:, None] * size + flat).ravel()
    hist = np.bincount(offsets, minlength=n * size).reshape(n, size).astype(np.float32)
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    return np.sqrt(hist)


def thumbnail_pixels(images: np.ndarray) -> np.ndarray:
    """The image itself at 32x32, mean-centred: what a CNN must beat."""
    x = images.astype(np.float32).reshape(len(images), -1)
    return x - x.mean(axis=1, keepdims=True)


class HandcraftedBackbone(Backbone):
    def __init__(self, name: str, fn, input_size: int, dim: int):
        self.name, self._fn, self.input_size, self.dim = name, fn, input_size, dim
        self.device = "CPU (numpy)"

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._fn(np.asarray(images, dtype=np.uint8))


def _builder(name, fn, size, dim):
    def build(pooling=None, gem_p=None, placement=None, input_size=None, weights=None, batch_size=32):
        return HandcraftedBackbone(name, fn, size, dim)

    return build


SPECS = [
    BackboneSpec("colorhist", "handcrafted", 128, _BINS**3, "ours", "numpy joint RGB histogram",
                 _builder("colorhist", color_histogram, 128, _BINS**3), lambda: None),
    BackboneSpec("pixels", "handcrafted", _THUMB, _THUMB * _THUMB * 3, "ours", "numpy 32x32 thumbnail",
                 _builder("pixels", thumbnail_pixels, _THUMB, _THUMB * _THUMB * 3), lambda: None),
]

"""A Keras feature extractor with pooling in the graph, on any Keras backend.

Why in the graph: the pooled vector (1280 floats) leaves the device instead of
the feature map (7x7x1280), and the whole forward pass is one compiled call.
Only ``keras.layers`` and ``keras.ops`` are used here, so the same code runs
under TensorFlow, JAX or torch (``KERAS_BACKEND``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import keras
import numpy as np

from .. import pooling as pooling_math
from ..device import Placement, placed
from .base import Backbone


@keras.saving.register_keras_serializable(package="retrieval")
class GlobalPooling(keras.layers.Layer):
    """GAP, MAC or GeM over the spatial axes, by the formulas in ``pooling``."""

    def __init__(self, kind: str = "gem", p: float = pooling_math.DEFAULT_GEM_P, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind
        self.p = float(p)

    def call(self, x):
        return pooling_math.pool(x, self.kind, self.p, xp=keras.ops)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "p": self.p}


def bucket(n: int, batch_size: int) -> int:
    """Pad to the next power of two up to the batch size.

    A compiled backend traces once per input shape: with buckets a single
    query runs as a batch of 1 (not 32 padded images), and at most
    log2(batch_size) + 1 shapes are ever traced.
    """
    if n >= batch_size:
        return n
    size = 1
    while size < n:
        size *= 2
    return min(size, batch_size)


class KerasBackbone(Backbone):
    """Wraps a feature-map model: preprocess in numpy, then one compiled call.

    Batches are padded to a few fixed sizes (see ``bucket``) so compiled
    backends (XLA, JAX) do not trace again for every ragged final batch.
    """

    def __init__(
        self,
        name: str,
        feature_model: keras.Model,
        preprocess: Callable[[np.ndarray], np.ndarray],
        pooling: str,
        gem_p: float,
        placement: Placement,
        batch_size: int = 32,
    ):
        self.name = name
        self.feature_model = feature_model
        self.preprocess = preprocess
        self.input_size = int(feature_model.input_shape[1])
        self.dim = int(feature_model.output_shape[-1])
        self.pooling = pooling
        self.gem_p = gem_p
        self.placement = placement
        self.device = placement.description
        self.batch_size = batch_size
        # One forward pass at a time per network: Keras builds its predict
        # function lazily and is not safe to enter from two threads at once,
        # and on a CPU two concurrent passes only share the same cores.
        self._lock = threading.Lock()
        with placed(placement):
            pooled = GlobalPooling(pooling, gem_p, name="pool")(feature_model.output)
            self.model = keras.Model(feature_model.input, pooled, name=f"{feature_model.name}_{pooling}")

    def _run(self, model: keras.Model, images: np.ndarray) -> np.ndarray:
        n = len(images)
        if n == 0:
            return np.zeros((0,) + tuple(model.output_shape[1:]), np.float32)
        x = self.preprocess(np.asarray(images, dtype=np.float32))
        size = bucket(n, self.batch_size)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
        with self._lock, placed(self.placement):
            out = model.predict_on_batch(x)
        return np.asarray(out[:n], dtype=np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._run(self.model, images)

    def with_pooling(self, pooling: str, gem_p: float) -> KerasBackbone:
        """The same network (shared weights, no rebuild) with another pooling."""
        if (pooling, gem_p) == (self.pooling, self.gem_p):
            return self
        twin = KerasBackbone(self.name, self.feature_model, self.preprocess, pooling, gem_p, self.placement, self.batch_size)
        twin.__dict__.update({k: v for k, v in self.__dict__.items() if k not in twin.__dict__})
        twin._lock = self._lock  # same weights, same lock
        return twin

    def feature_maps(self, images: np.ndarray) -> np.ndarray:
        """The last conv feature map, for explanations: ``(N, h, w, C)``."""
        return self._run(self.feature_model, images)

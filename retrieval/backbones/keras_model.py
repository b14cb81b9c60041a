"""A Keras feature extractor with pooling in the graph, on any Keras backend.

Why in the graph: the pooled vector (1280 floats) leaves the device instead of
the feature map (7x7x1280), and the whole forward pass is one compiled call.
Only ``keras.layers`` and ``keras.ops`` are used here, so the same code runs
under TensorFlow, JAX or torch (``KERAS_BACKEND``).
"""

from __future__ import annotations

import contextlib
import copy
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


class KerasNetwork(Backbone):
    """A backbone whose ``embed`` is one call of a Keras model, through Keras or a faster runtime.

    Batches are padded to a few fixed sizes (see ``bucket``) so compiled
    backends (XLA, JAX) do not trace again for every ragged final batch. A
    runtime chosen by ``retrieval.runtime`` (``using``) runs the same model
    after it matched Keras; Keras stays the definition.
    """

    model: keras.Model
    placement: Placement | None = None
    batch_size: int = 32
    runner = None  # None: Keras itself
    runtime = "Keras f32"
    runtime_note = ""

    def __init__(self):
        # One forward pass at a time per network: Keras builds its predict
        # function lazily and is not safe to enter from two threads at once,
        # and on a CPU two concurrent passes only share the same cores.
        self._lock = threading.Lock()

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 images -> what ``model`` takes."""
        return np.asarray(images, dtype=np.float32)

    def keras_call(self, model: keras.Model, x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = bucket(n, self.batch_size)
        if n < size:
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
        with self._lock, (placed(self.placement) if self.placement else contextlib.nullcontext()):
            out = model.predict_on_batch(x)
        return np.asarray(out[:n], dtype=np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = self.prepare(images)
        if self.runner is not None:
            return self.runner(x)
        return self.keras_call(self.model, x)

    def target(self):
        """What the runtime layer converts and checks: this network's ``model``."""
        from ..runtime.choose import Target

        return Target(self.model, self.input_size, self.prepare, lambda x: self.keras_call(self.model, x))

    def using(self, choice) -> "KerasNetwork":
        """The same network run through ``choice`` (a ``runtime.choose.Choice``)."""
        twin = copy.copy(self)
        twin.runner, twin.runtime, twin.runtime_note = choice.runner, choice.label, choice.note
        return twin


class KerasBackbone(KerasNetwork):
    """A feature-map model with pooling in the graph; preprocessing in numpy.

    ``logits``: a classifier layer (EfficientNet-Lite's ``fc``) applied to the
    GAP of the same feature map; the output is then ``[pooled, logits]``, so
    a fusion gets ImageNet logits from the forward pass it runs anyway.
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
        logits: keras.layers.Layer | None = None,
    ):
        super().__init__()
        self.name = name
        self.feature_model = feature_model
        self.preprocess = preprocess
        self.input_size = int(feature_model.input_shape[1])
        self.pooling = pooling
        self.gem_p = gem_p
        self.placement = placement
        self.device = placement.description
        self.batch_size = batch_size
        self.logits = logits
        with placed(placement):
            pooled = GlobalPooling(pooling, gem_p, name="pool")(feature_model.output)
            suffix = pooling
            if logits is not None:
                gap = GlobalPooling("gap", name="gap")(feature_model.output)
                pooled = keras.layers.Concatenate(name="with_logits")([pooled, logits(gap)])
                suffix += "_logits"
            self.model = keras.Model(feature_model.input, pooled, name=f"{feature_model.name}_{suffix}")
        self.dim = int(self.model.output_shape[-1])
        self.descriptor_dim = int(feature_model.output_shape[-1])  # the pooled part of the output

    def prepare(self, images: np.ndarray) -> np.ndarray:
        return self.preprocess(np.asarray(images, dtype=np.float32))

    def _twin(self, pooling: str, gem_p: float, logits) -> KerasBackbone:
        """The same network (shared weights, no rebuild) with another output, run by Keras."""
        twin = KerasBackbone(self.name, self.feature_model, self.preprocess, pooling, gem_p, self.placement,
                             self.batch_size, logits)
        runtime_state = ("runner", "runtime", "runtime_note")  # the pooled graph changed: Keras runs it
        twin.__dict__.update({k: v for k, v in self.__dict__.items() if k not in twin.__dict__ and k not in runtime_state})
        twin._lock = self._lock  # same weights, same lock
        return twin

    def with_pooling(self, pooling: str, gem_p: float) -> KerasBackbone:
        """The same network with another pooling, run by Keras."""
        if (pooling, gem_p) == (self.pooling, self.gem_p):
            return self
        return self._twin(pooling, gem_p, self.logits)

    def with_logits(self) -> KerasBackbone:
        """The same network whose output ends with its ImageNet logits, run by Keras."""
        classifier = getattr(self, "classifier", None)
        if classifier is None:
            from .base import BackboneUnavailable

            raise BackboneUnavailable(f"{self.name} has no ImageNet classifier to give logits")
        if self.logits is not None:
            return self
        return self._twin(self.pooling, self.gem_p, classifier.get_layer("fc"))

    def feature_maps(self, images: np.ndarray) -> np.ndarray:
        """The last conv feature map, for explanations: ``(N, h, w, C)``, through Keras."""
        if len(images) == 0:
            return np.zeros((0,) + tuple(self.feature_model.output_shape[1:]), np.float32)
        return self.keras_call(self.feature_model, self.prepare(images))


class KerasImageBackbone(KerasNetwork):
    """A trained image -> vector model (fine-tuned or from scratch); preprocessing is in its graph."""

    def __init__(self, name: str, model: keras.Model, placement: Placement | None, device: str):
        super().__init__()
        self.name, self.model, self.placement, self.device = name, model, placement, device
        self.input_size, self.dim = int(model.input_shape[1]), int(model.output_shape[-1])

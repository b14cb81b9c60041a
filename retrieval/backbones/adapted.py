"""Models trained here (``retrieval.adapt``) served like any other backbone.

Why a backbone: search, compare, evaluate, the CLI and the UI all take a
backbone name, so a trained model that registers a ``BackboneSpec`` is usable
everywhere at once, with its own cached vectors in the store.

- ``head``: the base CNN's pooled, normalised vector, then the head in numpy.
- ``finetune`` and ``scratch``: a Keras image model, rebuilt from its
  settings and loaded with the stored weights.
"""

from __future__ import annotations

import json
import threading
from typing import Callable

import numpy as np

from ..pooling import l2_normalize
from .base import Backbone, BackboneSpec

FAMILY = "adapted"


class HeadBackbone(Backbone):
    def __init__(self, name: str, base: Backbone, weights: dict[str, np.ndarray]):
        from ..adapt import apply_head

        self.name, self.base, self.weights, self._apply = name, base, weights, apply_head
        self.input_size, self.dim, self.device = base.input_size, int(weights["w2"].shape[1]), base.device

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._apply(self.weights, l2_normalize(self.base.embed(images)))

    def project(self, base_vectors: np.ndarray) -> np.ndarray:
        """The fast path: cached base vectors -> adapted vectors, no CNN."""
        return self._apply(self.weights, base_vectors)


class KerasImageBackbone(Backbone):
    def __init__(self, name: str, model, device: str):
        self.name, self.model, self.device = name, model, device
        self.input_size, self.dim = int(model.input_shape[1]), int(model.output_shape[-1])
        self._lock = threading.Lock()

    def embed(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        from .keras_model import _bucket

        n = len(images)
        x = np.asarray(images, np.float32)
        size = _bucket(n, 32)  # a few fixed batch shapes: no retracing per query
        if n < size:
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], np.float32)])
        with self._lock:
            return np.asarray(self.model.predict_on_batch(x), np.float32)[:n]


def spec_for(row: dict, base_backbone: Callable[[dict], Backbone], load_params: Callable[[], bytes]) -> BackboneSpec:
    """A registry entry for a stored model; weights are read only when it is first built."""
    settings = json.loads(row["settings"])
    base = json.loads(row["base"])

    def build(pooling=None, gem_p=None, placement=None, input_size=None, weights=None, batch_size=32) -> Backbone:
        from .. import adapt

        blob = load_params()
        if row["method"] == "head":
            return HeadBackbone(row["name"], base_backbone(base), adapt.unpack(blob))
        keras = adapt._keras()
        cfg = adapt.AdaptConfig(**settings)
        if row["method"] == "scratch":
            model = adapt.build_scratch(keras, cfg)
            device = "CPU"
        else:
            features = base_backbone(base).feature_model
            model = adapt.build_finetune(keras, features, cfg, base.get("pooling", "gem"), base.get("gem_p", 3.0) or 3.0)
            device = base_backbone(base).device
        adapt.load_weights(model, blob)
        return KerasImageBackbone(row["name"], model, device)

    return BackboneSpec(row["name"], FAMILY, int(row["input_size"]), int(row["dim"]), "trained here (yours)",
                        f"{row['method']} on {base['backbone']}, collection {row['collection']!r}", build,
                        lambda: None)

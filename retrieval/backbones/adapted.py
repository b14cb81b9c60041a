"""Models trained here (``retrieval.adapt``): what they are, and serving them as backbones.

Why the definitions live here and not beside the training loop: a stored
model is rebuilt by whoever serves it (search, compare, the CLI, a fresh
``Studio``), which needs its settings, its architecture, the head's math and
the weight formats, never the training code. ``adapt`` imports them from
here; nothing here imports ``adapt``.

Why a backbone: search, compare, evaluate, the CLI and the UI all take a
backbone name, so a trained model that registers a ``BackboneSpec`` is usable
everywhere at once, with its own cached vectors in the store.

- ``head``: the base CNN's pooled, normalised vector, then the head in numpy:
  an ensemble of small MLPs whose unit outputs are concatenated (models
  stored before ensembles hold one MLP as 2-D arrays and still load).
- ``finetune`` and ``scratch``: a Keras image model, rebuilt from its
  settings and loaded with the stored weights.

Keras is imported only when an image model is built: the engine, and a
head, run without it.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..device import import_keras
from ..pooling import DEFAULT_GEM_P, l2_normalize
from .base import Backbone, BackboneSpec

FAMILY = "adapted"
METHODS = ("head", "finetune", "scratch")


@dataclass(frozen=True)
class AdaptConfig:
    """How a model is trained, stored with it: the image models are rebuilt from it."""

    method: str = "head"
    epochs: int = 30  # head: the length of its decaying schedule; image models: an upper bound (early stopping)
    batch_size: int = 0  # 0: 256 for the head, 32 for image models
    learning_rate: float = 0.0  # 0: 1e-3 for head and scratch, 1e-4 for fine-tuning
    weight_decay: float = 1e-4
    dim: int = 128  # per head of the ensemble: the head's vectors have heads x dim components
    heads: int = 5  # head only: members of the ensemble (1 = the single head of the first release)
    hidden: int = 512
    dropout: float = 0.5
    margin: float = 0.2
    scale: float = 30.0
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    patience: int = 3
    seed: int = 0
    finetune_blocks: int = 2  # top MBConv blocks unfrozen (plus the 1x1 head conv)
    scratch_size: int = 64  # the seed CNN's input size

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.heads < 1:
            raise ValueError("heads must be at least 1")

    @property
    def effective_batch(self) -> int:
        return self.batch_size or (256 if self.method == "head" else 32)

    @property
    def effective_lr(self) -> float:
        return self.learning_rate or (1e-4 if self.method == "finetune" else 1e-3)

    def to_json(self) -> dict:
        return asdict(self)


# -- the head: plain arrays ------------------------------------------------------
def apply_head(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The trained head in numpy: (N, D) unit vectors -> (N, heads * dim) unit vectors.

    Plain matrix products, so an adapted gallery is re-embedded from its
    cached vectors in milliseconds and gives identical vectors on reload.
    An ensemble stores its members stacked on a first axis (``w1`` is
    (heads, D, hidden)); each member's output is normalised on its own and
    the parts are concatenated, scaled by 1/sqrt(heads), so the cosine of two
    vectors is the mean of the members' cosines. A single head stored as 2-D
    arrays (the first release) is an ensemble of one and gives the vectors it
    always gave.
    """
    x = np.asarray(x, np.float32) - weights["mean"]
    w1, b1, w2, b2 = (weights[k] for k in ("w1", "b1", "w2", "b2"))
    if w1.ndim == 2:
        w1, b1, w2, b2 = w1[None], b1[None], w2[None], b2[None]
    parts = []
    for m in range(len(w1)):
        z = np.maximum(x @ w1[m] + b1[m], 0.0) @ w2[m] + b2[m]
        parts.append(z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12))
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1) / np.float32(np.sqrt(len(parts)))
    return out.astype(np.float32)


def head_dim(weights: dict[str, np.ndarray]) -> int:
    """Components of the head's vectors: dim for one head, heads * dim for an ensemble."""
    w2 = weights["w2"]
    return int(w2.shape[-1]) * (int(w2.shape[0]) if w2.ndim == 3 else 1)


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """The head's arrays as one blob for the store (``.npz``: no pickle on the way back)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# -- the image models: Keras ------------------------------------------------------
def build_scratch(keras, cfg: AdaptConfig):
    """The seed's CNN: (Conv-ReLU-MaxPool) x 3 with 32/64/128 filters, Dense 512, L2 on every kernel."""
    reg = keras.regularizers.L2(cfg.weight_decay)
    inputs = keras.Input((cfg.scratch_size, cfg.scratch_size, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_regularizer=reg)(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(512, activation="relu", kernel_regularizer=reg)(x)
    z = keras.layers.UnitNormalization(name="embedding")(x)
    return keras.Model(inputs, z, name="seed_cnn")


def build_finetune(keras, features, cfg: AdaptConfig, pooling: str = "gem", gem_p: float = DEFAULT_GEM_P):
    """Backbone feature maps -> GeM -> Dense(dim) -> L2; only the top blocks train."""
    from .keras_model import GlobalPooling

    original = features  # shared with the base backbone: train and load a copy, never the original
    features = keras.models.clone_model(original)
    features.set_weights(original.get_weights())
    blocks = sorted({int(l.name.split("_")[0][5:]) for l in features.layers if l.name.startswith("block")})
    trainable = {f"block{b}_" for b in blocks[-cfg.finetune_blocks:]} if cfg.finetune_blocks else set()
    for layer in features.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = (not is_bn) and (layer.name.startswith("head_") or any(layer.name.startswith(t) for t in trainable))
    inputs = keras.Input(features.input_shape[1:])
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0)(inputs)  # efficientnet_lite.preprocess
    x = features(x, training=False)  # BatchNorm in inference mode
    x = GlobalPooling(pooling, gem_p)(x)
    z = keras.layers.UnitNormalization(name="embedding")(keras.layers.Dense(cfg.dim, name="project")(x))
    return keras.Model(inputs, z, name="finetuned")


def save_weights(model, tmp_dir: Path | None = None) -> bytes:
    """A Keras model's weights as bytes, for the store (Keras only writes files)."""
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        path = Path(tmp) / "model.weights.h5"
        model.save_weights(path)
        return path.read_bytes()


def load_weights(model, blob: bytes, tmp_dir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        path = Path(tmp) / "model.weights.h5"
        path.write_bytes(blob)
        model.load_weights(path)


# -- served as backbones -----------------------------------------------------------
class HeadBackbone(Backbone):
    def __init__(self, name: str, base: Backbone, weights: dict[str, np.ndarray]):
        self.name, self.base, self.weights = name, base, weights
        self.input_size, self.dim, self.device = base.input_size, head_dim(weights), base.device
        self.runtime, self.runtime_note = base.runtime, base.runtime_note  # the CNN is the base's

    def embed(self, images: np.ndarray) -> np.ndarray:
        return apply_head(self.weights, l2_normalize(self.base.embed(images)))

    def project(self, base_vectors: np.ndarray) -> np.ndarray:
        """The fast path: cached base vectors -> adapted vectors, no CNN."""
        return apply_head(self.weights, base_vectors)


def spec_for(row: dict, base_backbone: Callable[[dict], Backbone], load_params: Callable[[], bytes]) -> BackboneSpec:
    """A registry entry for a stored model; weights are read only when it is first built."""
    settings = json.loads(row["settings"])
    base = json.loads(row["base"])

    def build(pooling=None, gem_p=None, placement=None, input_size=None, weights=None, batch_size=32) -> Backbone:
        blob = load_params()
        if row["method"] == "head":
            return HeadBackbone(row["name"], base_backbone(base), unpack(blob))
        keras = import_keras()
        cfg = AdaptConfig(**settings)
        if row["method"] == "scratch":
            model = build_scratch(keras, cfg)
            placement, device = None, "CPU"
        else:
            features = base_backbone(base).feature_model
            model = build_finetune(keras, features, cfg, base.get("pooling", "gem"), base.get("gem_p") or DEFAULT_GEM_P)
            placement, device = base_backbone(base).placement, base_backbone(base).device
        load_weights(model, blob)
        from .keras_model import KerasImageBackbone

        return KerasImageBackbone(row["name"], model, placement, device)

    return BackboneSpec(row["name"], FAMILY, int(row["input_size"]), int(row["dim"]), "trained here (yours)",
                        f"{row['method']} on {base['backbone']}, collection {row['collection']!r}", build,
                        lambda: None)

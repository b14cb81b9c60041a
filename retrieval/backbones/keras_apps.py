"""Backbones from ``keras.applications``, with ImageNet weights when they exist.

Why they are optional: Keras downloads these weights on first use, and a
machine without internet cannot. They work when the file is already in the
Keras cache or when the user passes a local weights file; otherwise building
fails with one line that says which file to put where.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import DEFAULT_BACKBONE
from .base import BackboneSpec, BackboneUnavailable

_STORE = "https://storage.googleapis.com/tensorflow/keras-applications/"
_DOWNLOAD_TIMEOUT_S = 20


def _caffe(x: np.ndarray) -> np.ndarray:
    """ResNet50 and VGG16 were trained on BGR with the ImageNet mean removed."""
    return x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)


def _tf(x: np.ndarray) -> np.ndarray:
    return x / 127.5 - 1.0


def _identity(x: np.ndarray) -> np.ndarray:
    return x  # the model rescales inside its own graph


@dataclass(frozen=True)
class KerasApp:
    name: str
    constructor: str
    dim: int
    file: str
    url: str
    preprocess: Callable[[np.ndarray], np.ndarray]
    licence: str
    input_size: int = 224


APPS = {
    a.name: a
    for a in (
        KerasApp("mobilenetv2", "MobileNetV2", 1280, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                 _STORE + "mobilenet_v2/", _tf, "Apache-2.0 (Keras Applications)"),
        KerasApp("mobilenetv3large", "MobileNetV3Large", 960, "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
                 _STORE + "mobilenet_v3/", _identity, "Apache-2.0 (Keras Applications)"),
        KerasApp("resnet50", "ResNet50", 2048, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 _STORE + "resnet/", _caffe, "MIT (Kaiming He's ResNet weights, via Keras Applications)"),
        KerasApp("efficientnetb0", "EfficientNetB0", 1280, "efficientnetb0_notop.h5",
                 "https://storage.googleapis.com/keras-applications/", _identity, "Apache-2.0 (Keras Applications)"),
        KerasApp("vgg16", "VGG16", 512, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 _STORE + "vgg16/", _caffe, "CC BY 4.0 (VGG weights, via Keras Applications)"),
    )
}


def keras_cache_dirs() -> list[Path]:
    """Where ``keras.utils.get_file`` looks for its downloads, in its order."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return [home / "models", Path("/tmp/.keras/models")]


def cached_weights(app: KerasApp) -> Path | None:
    for folder in keras_cache_dirs():
        if (folder / app.file).is_file():
            return folder / app.file
    return None


def _offline_message(app: KerasApp) -> str:
    return (
        f"{app.name}: ImageNet weights are not available offline; put {app.file} "
        f"(from {app.url}{app.file}) in {keras_cache_dirs()[0]}, pass --weights PATH, "
        f"or use {DEFAULT_BACKBONE}, which works offline"
    )


def _build(app: KerasApp):
    def build(pooling: str, gem_p: float, placement, input_size: int | None = None, weights: str | None = None, batch_size: int = 32):
        from ..device import import_keras
        keras = import_keras()

        from ..device import placed
        from .keras_model import KerasBackbone

        size = input_size or app.input_size
        source = weights or "imagenet"
        if source != "imagenet" and not Path(source).is_file():
            raise BackboneUnavailable(f"{app.name}: weights file not found: {source}")
        if source == "imagenet" and cached_weights(app) is None and os.environ.get("RETRIEVAL_OFFLINE"):
            raise BackboneUnavailable(_offline_message(app))
        constructor = getattr(keras.applications, app.constructor)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # a black-holed network must not hang us
        try:
            # Keras prints "Downloading data from ..." on stdout, which would
            # corrupt --json output; the outcome is reported by us instead.
            with placed(placement), contextlib.redirect_stdout(io.StringIO()):
                model = constructor(include_top=False, weights=source, input_shape=(size, size, 3))
        except BackboneUnavailable:
            raise
        except Exception as exc:
            if source == "imagenet":
                raise BackboneUnavailable(_offline_message(app)) from exc
            raise BackboneUnavailable(f"{app.name}: cannot load weights from {source}: {str(exc).splitlines()[0][:200]}") from exc
        finally:
            socket.setdefaulttimeout(previous)
        return KerasBackbone(app.name, model, app.preprocess, pooling, gem_p, placement, batch_size)

    return build


def _readiness(app: KerasApp):
    def check() -> str | None:
        return None if cached_weights(app) else f"needs {app.file} in {keras_cache_dirs()[0]} (downloads on first use when online)"

    return check


SPECS = [
    BackboneSpec(a.name, "cnn", a.input_size, a.dim, a.licence, f"keras.applications.{a.constructor}", _build(a), _readiness(a))
    for a in APPS.values()
]

"""What a user says about their own model file: where to cut it, its input size, its preprocessing.

Why apart from the loaders (``user_file``): these are plain values, parsed
from the CLI or the API, stored with the model as JSON and checked before
any file is opened; the preprocessing is numpy math, tested without a model.

Preprocessing choices are listed once, in ``PREPROCESS``; a custom one is
``scale=S,mean=a/b/c,std=d/e/f[,bgr]`` meaning ``((rgb or bgr) * S - mean) / std``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from types import MappingProxyType

import numpy as np

from .base import BackboneUnavailable

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Preprocess:
    """``(x[..., ::-1] if bgr else x) * scale - mean) / std`` on RGB floats 0..255, per channel."""

    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False
    note: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.bgr:
            x = x[..., ::-1]
        return ((x * np.float32(self.scale) - np.asarray(self.mean, np.float32))
                / np.asarray(self.std, np.float32)).astype(np.float32)


# The named choices: the conventions models are trained with.
PREPROCESS: MappingProxyType[str, Preprocess] = MappingProxyType({
    "none": Preprocess(note="RGB floats 0..255 (the model rescales inside its graph)"),
    "unit": Preprocess(scale=1 / 255, note="RGB x/255, in 0..1"),
    "tf": Preprocess(scale=1 / 127.5, mean=(1.0, 1.0, 1.0), note="RGB x/127.5 - 1, in -1..1"),
    "torch": Preprocess(scale=1 / 255, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
                        note="RGB x/255, then ImageNet mean/std (torchvision)"),
    "imagenet": Preprocess(scale=1 / 255, mean=_IMAGENET_MEAN, std=_IMAGENET_STD, note="the same as torch"),
    "caffe": Preprocess(mean=_CAFFE_MEAN_BGR, bgr=True, note="BGR 0..255 minus the ImageNet mean (Caffe, VGG, ResNet50)"),
})
CUSTOM_FORM = "scale=S,mean=a/b/c,std=d/e/f[,bgr]"


def _three(key: str, text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split("/")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise ValueError(f"{key} takes one number or three separated by '/'")
    return (parts[0], parts[1], parts[2])


def parse_preprocess(spec: str) -> Preprocess:
    """A name from ``PREPROCESS`` or the custom form; a ``BackboneUnavailable`` (one line) otherwise."""
    spec = (spec or "none").strip()
    if spec in PREPROCESS:
        return PREPROCESS[spec]
    if "=" not in spec:
        raise BackboneUnavailable(f"unknown preprocess {spec!r}: choose one of {', '.join(PREPROCESS)}, "
                                  f"or {CUSTOM_FORM}")
    values: dict = {}
    try:
        for item in (i.strip() for i in spec.split(",") if i.strip()):
            key, _, text = item.partition("=")
            key = key.strip()
            if item == "bgr":
                values["bgr"] = True
            elif key == "scale":
                values["scale"] = float(text)
            elif key in ("mean", "std"):
                values[key] = _three(key, text)
            else:
                raise ValueError(f"unknown part {item!r}")
    except ValueError as exc:
        raise BackboneUnavailable(f"cannot read preprocess {spec!r} ({exc}): write {CUSTOM_FORM}") from None
    if any(s == 0 for s in values.get("std", (1.0,))):
        raise BackboneUnavailable(f"cannot read preprocess {spec!r}: std must not be 0")
    return Preprocess(**values, note=f"custom: {spec}")


@dataclass(frozen=True)
class UserModelOptions:
    """How a user file becomes a backbone; stored with the model, so every load is the same.

    ``layer``: a layer name to cut the model at, or an output's name or index
    for a model with several outputs. ``input_size``: N for N×N images
    (default: the model's own fixed size). ``custom_objects``: ``module:Attr``
    names, imported only because the user named them.
    """

    layer: str | None = None
    input_size: int | None = None
    preprocess: str = "none"
    custom_objects: tuple[str, ...] = ()

    def __post_init__(self):
        parse_preprocess(self.preprocess)  # refuse a bad spec before any file is copied
        if self.input_size is not None and not 8 <= int(self.input_size) <= 4096:
            raise BackboneUnavailable(f"input size {self.input_size} is out of range: give N between 8 and 4096")
        for name in self.custom_objects:
            module, _, attr = name.partition(":")
            if not module or not attr:
                raise BackboneUnavailable(f"custom object {name!r} is not MODULE:ATTR (e.g. mylayers:Scale)")

    @property
    def preprocessing(self) -> Preprocess:
        return parse_preprocess(self.preprocess)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UserModelOptions:
        data = json.loads(text)
        return cls(**{**data, "custom_objects": tuple(data.get("custom_objects") or ())})

"""A backbone from the user's own model file: a ``.keras`` file, a SavedModel folder, or ONNX.

Why one entry point for three formats: whatever the file, the result is the
same kind of backbone, described by the same ``Probe``. A Keras definition
(``user_keras``: ``.keras``, or a SavedModel wrapped in ``TFSMLayer``)
becomes a ``KerasBackbone`` when it ends in a feature map, so pooling, the
runtime layer and explanations work as for the built-in CNNs; one that ends
in a vector is served as it is. ONNX (``user_onnx``) has no Keras definition
and runs as itself, through OpenVINO in f32.

What a file may be is checked here, once, for every format: one RGB image
input (N×H×W×3, square), and a feature map (N×h×w×C) or an embedding (N×D)
out. Every failure is one line (``BackboneUnavailable``). Keras and OpenVINO
are imported only when a file is opened, so the engine imports without them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import pooling as pooling_math
from .base import Backbone, BackboneSpec, BackboneUnavailable
from .user_options import UserModelOptions

FAMILY = "file"
FORMATS = {".keras": "keras", ".onnx": "onnx"}  # and a folder with saved_model.pb: "savedmodel"
SAVEDMODEL = "savedmodel"


def file_format(path: Path) -> str:
    """``keras``, ``savedmodel`` or ``onnx``, from the path; one line when it is none of them."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return SAVEDMODEL
        raise BackboneUnavailable(f"{path.name} is a folder without saved_model.pb: not a TensorFlow SavedModel")
    if not path.is_file():
        raise BackboneUnavailable(f"no model file at {path}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BackboneUnavailable(f"{path.name} is not a model file this studio reads: give a .keras file, a "
                                  "SavedModel folder or an .onnx file (an .h5 file: load it in Keras, save as .keras)")
    return fmt


@dataclass(frozen=True)
class Probe:
    """What a file turned out to be, once opened: what the listing and the store say about it."""

    input_size: int
    output_shape: tuple[int, ...]  # (h, w, C) for a feature map, (D,) for an embedding

    @property
    def feature_map(self) -> bool:
        return len(self.output_shape) == 3

    @property
    def dim(self) -> int:
        return int(self.output_shape[-1])

    @property
    def kind(self) -> str:
        return "feature map" if self.feature_map else "embedding"

    def describe(self) -> str:
        if self.feature_map:
            return f"feature map {'×'.join(map(str, self.output_shape))} → pooled"
        return f"embedding {self.dim}-d"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def per_image_shape(shape, what: str) -> tuple[int, ...]:
    """(N, h, w, C) or (N, D) -> the per-image shape; anything else is refused in one line."""
    dims = tuple(shape)
    if len(dims) not in (2, 4) or any(d is None or int(d) < 1 for d in dims[1:]):
        shown = "×".join("?" if d is None else str(d) for d in dims)
        raise BackboneUnavailable(f"{what} gives an output of shape {shown}; a backbone needs a feature map "
                                  "(N×h×w×C) or an embedding (N×D): choose another --layer")
    return tuple(int(d) for d in dims[1:])


def square_input(shape, options: UserModelOptions, what: str) -> int:
    """The square input size from a (N, H, W, 3) input and the user's ``input_size``."""
    dims = tuple(shape)
    if len(dims) != 4 or dims[-1] != 3:
        shown = "×".join("?" if d is None else str(d) for d in dims)
        raise BackboneUnavailable(f"{what} takes inputs of shape {shown}, not RGB images (N×H×W×3): "
                                  "not an image model, or a channels-first one")
    h, w = dims[1], dims[2]
    if h is None or w is None:
        if options.input_size is None:
            raise BackboneUnavailable(f"{what} takes images of any size: give --input-size N")
        return int(options.input_size)
    if h != w:
        raise BackboneUnavailable(f"{what} takes {h}×{w} images; only square inputs are supported")
    if options.input_size is not None and int(options.input_size) != int(h):
        raise BackboneUnavailable(f"{what} takes {h}×{w} images; --input-size {options.input_size} does not fit "
                                  "(leave it out)")
    return int(h)


def pick_output(outputs: list, names: list[str], layer: str | None, what: str):
    """One of several outputs, by index or name; the only one when there is one."""
    if layer is not None and layer.isdigit():
        if int(layer) >= len(outputs):
            raise BackboneUnavailable(f"{what} has {len(outputs)} output(s); output {layer} does not exist")
        return outputs[int(layer)]
    if layer is not None and layer in names:
        return outputs[names.index(layer)]
    if layer is None and len(outputs) == 1:
        return outputs[0]
    if layer is None:
        raise BackboneUnavailable(f"{what} has {len(outputs)} outputs ({', '.join(names)}): choose one with "
                                  "--layer NAME or INDEX")
    return None  # a layer name: the caller cuts there


# -- the one entry point ------------------------------------------------------------------
def open_file(name: str, path: Path, fmt: str, options: UserModelOptions, pooling: str = "gem",
              gem_p: float = pooling_math.DEFAULT_GEM_P, placement=None, batch_size: int = 32) -> tuple[Backbone, Probe]:
    """The file as a backbone, and what it is; every failure is one line."""
    if fmt == "onnx":
        from .user_onnx import open_onnx

        return open_onnx(name, path, options, pooling, gem_p)
    from .user_keras import open_keras

    return open_keras(name, path, fmt, options, pooling, gem_p, placement, batch_size)


def probe(name: str, path: Path, fmt: str, options: UserModelOptions) -> Probe:
    """Open the file and run one blank image through it: what registration checks and stores."""
    backbone, found = open_file(name, path, fmt, options)
    try:
        out = backbone.embed(np.zeros((1, found.input_size, found.input_size, 3), np.uint8))
    except BackboneUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the graph raises: one line, nothing registered
        raise BackboneUnavailable(f"{path.name} fails on a {found.input_size}×{found.input_size} RGB image: "
                                  f"{first_line(exc)}") from None
    if out.shape != (1, found.dim):
        raise BackboneUnavailable(f"{path.name} gives vectors of shape {out.shape[1:]}, not ({found.dim},)")
    return found


def content_id(sha256: str, options: UserModelOptions) -> str:
    """What a configuration's ``weights`` holds for a file model: ``sha256:<file>.<options>``.

    Both the file and how it is used (layer, size, preprocessing) are in it,
    so vectors made one way never match a configuration made another way,
    even in a Studio that has not seen the model replaced.
    """
    how = hashlib.sha256(options.to_json().encode()).hexdigest()[:8]
    return f"sha256:{sha256[:16]}.{how}"


def spec_for(row: dict, root: Path) -> BackboneSpec:
    """A registry entry for a stored file; the file is opened only when the backbone is first built."""
    options = UserModelOptions.from_json(row["options"])
    path = root / row["path"]
    shape = tuple(int(d) for d in row["output_shape"].split("x"))
    found = Probe(int(row["input_size"]), shape)

    def build(pooling="gem", gem_p=pooling_math.DEFAULT_GEM_P, placement=None, input_size=None, weights=None,
              batch_size=32) -> Backbone:
        if not path.exists():
            raise BackboneUnavailable(f"{row['name']}: its file {row['path']} is missing from the data folder; "
                                      "add the model again")
        return open_file(row["name"], path, row["format"], options, pooling or "gem", gem_p or 0.0, placement,
                         batch_size)[0]

    def readiness() -> str | None:
        return None if path.exists() else f"its file {row['path']} is missing from the data folder"

    source = f"your {row['format']} file, {content_id(row['sha256'], options)}" + (f", at {options.layer!r}" if options.layer else "")
    return BackboneSpec(row["name"], FAMILY, found.input_size, found.dim, "yours", source, build, readiness,
                        poolable=found.feature_map, weights=content_id(row["sha256"], options),
                        note=f"your model ({found.describe()}, preprocess {options.preprocess})")

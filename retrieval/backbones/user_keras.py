"""Keras definitions from the user: a ``.keras`` file (safe mode) or a SavedModel folder (``TFSMLayer``).

Why Keras, for both: the result is a ``keras.Model`` like the built-in
CNNs, so a feature map gets pooling in the graph (``KerasBackbone``), the
runtime layer can convert and check it, and explanations read its map.

Why safe mode: a ``.keras`` file can hold Python code (``Lambda`` layers).
Keras' safe mode refuses to run it, and so do we; custom layers are imported
only when the user names them (``module:Attr``), never found by the file.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np

from ..device import import_keras
from .base import Backbone, BackboneUnavailable
from .user_file import SAVEDMODEL, Probe, first_line, per_image_shape, pick_output, square_input
from .user_options import Preprocess, UserModelOptions

ENDPOINTS = ("serving_default", "serve")  # tried in this order on a SavedModel


def _custom_objects(names: tuple[str, ...]) -> dict:
    """The ``module:Attr`` objects the user named, imported now (and only these)."""
    found = {}
    for name in names:
        module, _, attr = name.partition(":")
        try:
            found[attr.split(".")[-1]] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise BackboneUnavailable(f"cannot import custom object {name}: {first_line(exc)}") from None
    return found


def _keras_error(path: Path, exc: BaseException) -> BackboneUnavailable:
    """Keras' load errors, turned into what the user can do about them."""
    text = str(exc)
    if "Lambda" in text and ("safe_mode" in text or "unsafe" in text):
        return BackboneUnavailable(f"the file contains a Lambda layer (Python code): safe mode refuses to run its "
                                   f"code; rebuild {path.name} without Lambda layers, or with a custom layer named "
                                   "by --custom-object MODULE:ATTR")
    if "safe_mode" in text:
        return BackboneUnavailable(f"{path.name} holds Python code that safe mode refuses to run: {first_line(exc)}")
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if missing:
        return BackboneUnavailable(f"{path.name} uses {missing.group(1)}, which Keras does not know: if you trust "
                                   "its code, name it with --custom-object MODULE:ATTR")
    if "zip" in text or "File not found" in text or "not a zip" in text.lower():
        return BackboneUnavailable(f"{path.name} is not a readable .keras file (a .keras file is a zip archive "
                                   "saved by model.save): truncated or not a model")
    return BackboneUnavailable(f"cannot load {path.name}: {type(exc).__name__}: {first_line(exc)}")


def _cut(keras, model, layer: str | None, what: str):
    """``model`` ending at ``layer`` (a layer, or one output), with a single output."""
    outputs = list(model.outputs)
    names = list(getattr(model, "output_names", None) or [str(i) for i in range(len(outputs))])
    chosen = pick_output(outputs, names, layer, what)
    if chosen is None:
        try:
            chosen = model.get_layer(layer).output
        except ValueError:
            shown = [lay.name for lay in model.layers][-8:]
            raise BackboneUnavailable(f"{what} has no layer {layer!r}; its last layers are: {', '.join(shown)}") from None
        except (AttributeError, RuntimeError) as exc:
            raise BackboneUnavailable(f"cannot cut {what} at {layer!r}: {first_line(exc)}") from None
    if chosen is outputs[0] and len(outputs) == 1:
        return model
    return keras.Model(model.inputs, chosen, name=f"{model.name}_cut")


def _load_keras(path: Path, options: UserModelOptions):
    keras = import_keras()
    custom = _custom_objects(options.custom_objects)
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False, custom_objects=custom or None)
    except Exception as exc:  # noqa: BLE001 - Keras raises ValueError, TypeError, zip and OS errors: "cannot load"
        raise _keras_error(path, exc) from None
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise BackboneUnavailable(f"{path.name} is not an image model with one input")
    return keras, _cut(keras, model, options.layer, path.name)


def _load_savedmodel(path: Path, options: UserModelOptions):
    """A SavedModel's serving signature as a Keras model (``TFSMLayer``; the TensorFlow backend only)."""
    keras = import_keras()
    if keras.config.backend() != "tensorflow":
        raise BackboneUnavailable(f"a SavedModel runs on the TensorFlow backend; Keras runs on "
                                  f"{keras.config.backend()} here: export the model as .keras or ONNX")
    layer, fn = None, None
    for endpoint in ENDPOINTS:
        try:
            layer = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)
            fn = layer.call_endpoint_fn
            break
        except ValueError:
            continue
        except Exception as exc:  # noqa: BLE001 - a broken SavedModel: one line, not a traceback
            raise BackboneUnavailable(f"cannot load the SavedModel {path.name}: {first_line(exc)}") from None
    if layer is None:
        raise BackboneUnavailable(f"the SavedModel {path.name} has no {' or '.join(ENDPOINTS)} endpoint")
    args, kwargs = getattr(fn, "structured_input_signature", None) or ((), {})
    specs = [*args, *kwargs.values()]
    if len(specs) != 1:
        raise BackboneUnavailable(f"the SavedModel {path.name} takes {len(specs)} inputs; a backbone takes one image")
    size = square_input(tuple(specs[0].shape), options, f"the SavedModel {path.name}")
    inputs = keras.Input((size, size, 3))
    out = layer(inputs)
    if isinstance(out, dict):
        names = sorted(out)
        chosen = pick_output([out[n] for n in names], names, options.layer, f"the SavedModel {path.name}")
        if chosen is None:
            raise BackboneUnavailable(f"the SavedModel {path.name} has no output {options.layer!r}; its outputs "
                                      f"are: {', '.join(names)}")
        out = chosen
    elif options.layer not in (None, "0"):
        raise BackboneUnavailable(f"the SavedModel {path.name} has one output: leave --layer out")
    return keras, keras.Model(inputs, out, name="savedmodel")


def _fixed_input(keras, model, size: int):
    """A model whose input is exactly ``size``×``size``×3 (what the pooled graph and runtimes need)."""
    if tuple(model.input_shape[1:3]) == (size, size):
        return model
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, model(inputs), name=f"{model.name}_{size}")


def _keras_backbone(name: str, model, preprocess: Preprocess, feature_map: bool, pooling: str, gem_p: float,
                    placement, batch_size: int) -> Backbone:
    from .keras_model import KerasBackbone, KerasImageBackbone

    if feature_map:
        return KerasBackbone(name, model, preprocess, pooling, gem_p, placement, batch_size)

    class Embedding(KerasImageBackbone):
        """The model's own vector; the user's preprocessing runs in numpy, before any runtime."""

        def prepare(self, images: np.ndarray) -> np.ndarray:
            return preprocess(np.asarray(images, dtype=np.float32))

    backbone = Embedding(name, model, placement, placement.description if placement else "CPU")
    backbone.batch_size = batch_size
    return backbone


def open_keras(name: str, path: Path, fmt: str, options: UserModelOptions, pooling: str, gem_p: float,
               placement, batch_size: int) -> tuple[Backbone, Probe]:
    keras, model = _load_savedmodel(path, options) if fmt == SAVEDMODEL else _load_keras(path, options)
    size = square_input(model.input_shape, options, path.name)
    model = _fixed_input(keras, model, size)
    found = Probe(size, per_image_shape(model.output_shape, path.name + (f" at {options.layer!r}" if options.layer else "")))
    if placement is None:
        from ..device import resolve

        placement = resolve("cpu")
    return _keras_backbone(name, model, options.preprocessing, found.feature_map, pooling, gem_p, placement,
                           batch_size), found

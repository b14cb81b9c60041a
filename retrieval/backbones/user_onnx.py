"""ONNX files from the user: no Keras definition, so they run as themselves, through OpenVINO in f32.

Why f32: with nothing to check a reduced precision against, the file's own
numbers are the reference (bf16 would change every vector).
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np

from .. import pooling as pooling_math
from .base import Backbone, BackboneUnavailable
from .user_file import Probe, first_line, per_image_shape, pick_output, square_input
from .user_options import Preprocess, UserModelOptions


class OnnxBackbone(Backbone):
    """An ONNX graph compiled by OpenVINO (f32); a feature map is pooled in numpy.

    A channels-first graph (N×3×H×W input, as exported from PyTorch) gets
    its images transposed, and its 4-D output is read as N×C×h×w.
    """

    runtime = "OpenVINO f32 (ONNX)"
    runtime_note = "an ONNX file runs through OpenVINO: it has no Keras definition to check against"
    device = "CPU (OpenVINO)"

    def __init__(self, name: str, compiled, output, channels_first: bool, size: int, shape: tuple[int, ...],
                 preprocess: Preprocess, pooling: str, gem_p: float):
        self.name, self.compiled, self.output = name, compiled, output
        self.channels_first, self.input_size, self.shape, self.preprocess = channels_first, size, shape, preprocess
        self.feature_map = len(shape) == 3
        self.pooling, self.gem_p = (pooling, gem_p) if self.feature_map else ("none", 0.0)
        self.dim = int(shape[-1])
        self._lock = threading.Lock()

    def _run(self, images: np.ndarray) -> np.ndarray:
        x = self.preprocess(np.asarray(images, np.float32))
        if self.channels_first:
            x = x.transpose(0, 3, 1, 2)
        with self._lock:
            out = np.asarray(self.compiled(np.ascontiguousarray(x))[self.output], np.float32)
        return out.transpose(0, 2, 3, 1) if self.channels_first and out.ndim == 4 else out

    def feature_maps(self, images: np.ndarray) -> np.ndarray:
        if not self.feature_map:
            raise BackboneUnavailable(f"{self.name} ends in an embedding: no feature map to explain")
        return self._run(images) if len(images) else np.zeros((0, *self.shape), np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._run(images)
        if self.feature_map:
            out = pooling_math.pool(out, self.pooling, self.gem_p)
        return np.ascontiguousarray(out, np.float32)

    def with_pooling(self, pooling: str, gem_p: float) -> OnnxBackbone:
        if not self.feature_map or (pooling, gem_p) == (self.pooling, self.gem_p):
            return self
        twin = copy.copy(self)
        twin.pooling, twin.gem_p = pooling, gem_p
        return twin


def _open_onnx(path: Path, options: UserModelOptions):
    """The compiled graph, its chosen output, layout, input size and per-image output shape."""
    from ..runtime.openvino_engine import core, import_openvino

    ov = import_openvino()
    try:
        model = core().read_model(str(path))
    except Exception:  # noqa: BLE001 - OpenVINO raises RuntimeError for any unreadable file
        raise BackboneUnavailable(f"{path.name} is not a readable ONNX model (truncated or another format)") from None
    if len(model.inputs) != 1:
        raise BackboneUnavailable(f"{path.name} takes {len(model.inputs)} inputs; a backbone takes one image")
    dims = [d.get_length() if d.is_static else None for d in model.input(0).get_partial_shape()]
    channels_first = len(dims) == 4 and dims[1] == 3 and dims[3] != 3
    nhwc = [dims[0], dims[2], dims[3], dims[1]] if channels_first else dims
    size = square_input(nhwc, options, path.name)
    shape = [-1, 3, size, size] if channels_first else [-1, size, size, 3]
    model.reshape({model.input(0): ov.PartialShape(shape)})
    outputs = list(model.outputs)
    names = [o.get_any_name() if o.get_names() else str(i) for i, o in enumerate(outputs)]
    chosen = pick_output(outputs, names, options.layer, path.name)
    if chosen is None:
        raise BackboneUnavailable(f"{path.name} has no output {options.layer!r} (an ONNX file is not cut at a "
                                  f"layer); its outputs are: {', '.join(names)}")
    out_dims = [d.get_length() if d.is_static else None for d in chosen.get_partial_shape()]
    if channels_first and len(out_dims) == 4:
        out_dims = [out_dims[0], out_dims[2], out_dims[3], out_dims[1]]
    per_image = per_image_shape(out_dims, path.name)
    index = outputs.index(chosen)
    try:
        compiled = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    except Exception as exc:  # noqa: BLE001 - an operator OpenVINO lacks: one line
        raise BackboneUnavailable(f"OpenVINO cannot compile {path.name}: {first_line(exc)}") from None
    return compiled, compiled.outputs[index], channels_first, size, per_image


def open_onnx(name: str, path: Path, options: UserModelOptions, pooling: str, gem_p: float) -> tuple[Backbone, Probe]:
    compiled, output, channels_first, size, shape = _open_onnx(path, options)
    backbone = OnnxBackbone(name, compiled, output, channels_first, size, shape, options.preprocessing, pooling, gem_p)
    return backbone, Probe(size, shape)

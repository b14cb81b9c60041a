"""OpenVINO on the CPU: the Keras graph converted once, compiled per precision.

Why OpenVINO: its CPU plugin runs the EfficientNet-Lite graphs with oneDNN
kernels that use the bf16 (and int8) units of current x86 CPUs, which
TensorFlow's own CPU graph does not; ``benchmarks/runtimes.py`` measures it
against the alternatives. It is an optional dependency, imported only here.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np

_PRECISIONS = {"f32": "f32", "bf16": "bf16"}
_core = None
_core_lock = threading.Lock()


def import_openvino():
    """``import openvino`` with its usage telemetry replaced by OpenVINO's own stub.

    Why: the converter reports usage to Google Analytics (forking a sender
    that may wait seconds) and keeps a client id and counters in ``~/intel``.
    The studio makes no outside calls and writes only inside its data folder.
    OpenVINO falls back to ``telemetry_stub`` when ``openvino_telemetry``
    cannot be imported; blocking that import before OpenVINO loads is how we
    get the stub (if something imported OpenVINO first, its choice stands).
    """
    import sys

    if "openvino" not in sys.modules:
        for name in ("openvino_telemetry", "openvino_telemetry.backend"):
            sys.modules.setdefault(name, None)  # None in sys.modules: "import name" raises ImportError
    import openvino

    return openvino


def core():
    global _core
    with _core_lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def version() -> str:
    """The engine's version, part of every conversion's and record's name."""
    return import_openvino().__version__.split("-")[0]


def unavailable(precision: str) -> str | None:
    """None when this precision can run here, else why not (one line)."""
    if find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install openvino)"
    if precision not in _PRECISIONS:
        return f"OpenVINO {precision} is not offered"
    if precision == "bf16" and "BF16" not in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "this CPU has no bf16 instructions"
    return None


def convert(model, example: np.ndarray, folder: Path) -> Path:
    """Keras model -> OpenVINO IR in ``folder``, written whole or not at all.

    Weights stay f32 on disk (``compress_to_fp16=False``): the precision is a
    compile-time choice, so one conversion serves f32 and bf16.
    """
    ov = import_openvino()
    xml = folder / "model.xml"
    if xml.exists():
        return xml
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        with warnings.catch_warnings():  # Keras objects to how the converter's trace passes the input: harmless
            warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
            converted = ov.convert_model(model, example_input=example)
        # any batch size: a traced Sequential model otherwise keeps the example's batch of 1
        converted.reshape({converted.input(0): ov.PartialShape([-1, *example.shape[1:]])})
        ov.save_model(converted, tmp / "model.xml", compress_to_fp16=False)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process converted it first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml


class OpenVINORunner:
    """One compiled model and one infer request, used by one caller at a time.

    The LATENCY hint runs one request on all cores: a single query and a
    batch both get every core, and the pipeline's decode threads fill the
    gaps between batches.
    """

    def __init__(self, xml: Path, precision: str, cache_dir: Path):
        config = {"INFERENCE_PRECISION_HINT": _PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY",
                  "CACHE_DIR": str(cache_dir)}
        self.compiled = core().compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.request.infer({0: np.ascontiguousarray(x, np.float32)})
            return np.array(self.request.get_output_tensor(0).data, np.float32)

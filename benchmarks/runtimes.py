"""Inference runtimes side by side: speed, setup cost and parity with Keras f32, in one run.

Why: ``retrieval/runtime`` runs the Keras networks through OpenVINO (f32, or
bf16 where the CPU has it) after a parity check, and offers nothing else.
This benchmark is the evidence for that choice, measured on this machine for
two configurations (EfficientNet-Lite0 with GAP, and the default Lite1 with
GeM), against the alternatives: OpenVINO int8 (NNCF), ONNX Runtime f32 and
int8, LiteRT f32, fp16 weights and int8.

- The project's own options (``retrieval.runtime.OPTIONS``) run through
  ``Studio.backbone(cfg, runtime=...)``, so what is timed is what users run,
  and their setup includes the Studio's own conversion and check (in a fresh,
  temporary cache folder).
- The others are the recipes of the earlier study, one small function each
  (``RECIPES``); a missing package or a failed conversion gives an error row.
- Inputs: the 70 labelled demo photos (``retrieval.runtime.reference``),
  decoded and preprocessed once: model time only. int8 calibration uses other
  images: crops of scikit-image photos that are not in the demo gallery, and
  Fashion-MNIST *training* images (the demo holds test images).
- Parity is the project's own: ``parity.measure`` against Keras f32 and
  ``parity.verdict`` (the gate ``auto`` applies).
- Timing: batch 32 (img/s) and batch 1 (ms per image). Rounds are interleaved
  across candidates, so a busy spell on the machine hits all of them alike;
  each round's figure is a median of repeats, and the table keeps each
  candidate's best round. ``others busy`` is how many cores other processes
  used meanwhile (from /proc/stat), to read a noisy run by.
  ``OPENBLAS_CORETYPE`` is unset for this process.

Needs ``benchmarks/requirements.txt`` for the alternatives (never imported by
the engine, the app or the tests). On a shared machine, serialise timing runs:

    flock /tmp/bench.lock python -m benchmarks.runtimes          # -> docs/runtimes.json, docs/runtimes.md
    python -m benchmarks.runtimes --quick                         # smoke run -> benchmarks/out/runtimes_quick.*
    python -m benchmarks.runtimes --render                        # docs/runtimes.md from docs/runtimes.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

os.environ.pop("OPENBLAS_CORETYPE", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]
BATCH = 32
CONFIGS = {"lite0-gap": ("efficientnet-lite0", "gap"), "lite1-gem": None}  # None: ExtractorConfig(), the default
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# Scikit-image photos with a stated free licence (as in benchmarks.photoset) that the demo gallery does not hold.
CALIBRATION_PHOTOS = ("camera", "clock", "coins", "text", "horse", "cell")
# Wheels the runtime study downloaded (Linux x86-64, CPython 3.11), MB; packages the
# environment already had (numpy, scipy, protobuf, flatbuffers, ...) are not counted.
WHEELS_MB = {
    "OpenVINO": {"openvino 2026.4.1": 59.1, "openvino-telemetry": 0.03},
    "OpenVINO int8 (NNCF)": {"nncf 3.4.0": 0.8, "scikit-learn (+ joblib, narwhals, threadpoolctl, cloudpickle)": 10.2,
                             "safetensors, ninja, psutil, pydot": 0.9},
    "ONNX Runtime": {"onnxruntime 1.32.0": 27.8, "onnx 1.23.2 (export, quantisation)": 8.9,
                     "tf2onnx 1.17.0 (what keras' ONNX export calls)": 0.8},
    "LiteRT": {"ai-edge-litert 2.3.0 (interpreter)": 21.8, "backports-strenum": 0.01},
}


# ----------------------------------------------------------------------------- inputs
@dataclass
class Net:
    """One configuration's network and inputs, shared by every recipe."""

    model: object  # keras.Model: prepared (N, S, S, 3) float32 -> (N, D)
    size: int
    prepare: Callable[[np.ndarray], np.ndarray]
    photos: np.ndarray  # prepared reference photos
    work: Path
    calibration_n: int
    bf16: bool
    files: dict = field(default_factory=dict)  # exports shared between recipes (ONNX, SavedModel)

    @cached_property
    def calibration(self) -> np.ndarray:
        images = calibration_pixels(self.size, self.calibration_n)
        if not len(images):
            raise RuntimeError("no calibration images (needs scikit-image or dataset-fashion-mnist)")
        return self.prepare(images)


def calibration_pixels(size: int, n: int, seed: int = 1234) -> np.ndarray:
    """n uint8 images, none of them in the demo gallery: half photo crops, half Fashion-MNIST train."""
    from retrieval.decode import to_pixels

    rng = np.random.default_rng(seed)
    out = []
    try:
        from benchmarks import fashion_mnist

        fashion, _ = fashion_mnist.load("train", 5000)
        out += [to_pixels(fashion[i], size) for i in rng.choice(len(fashion), n // 2, replace=False)]
    except FileNotFoundError:
        pass
    try:
        import skimage.data

        sources = [np.asarray(getattr(skimage.data, name)()) for name in CALIBRATION_PHOTOS]
    except ImportError:
        sources = []
    sources = [(s.astype(np.uint8) * 255 if s.dtype == bool else s) for s in sources]
    for i in range(n - len(out) if sources else 0):
        image = sources[i % len(sources)]
        h, w = image.shape[:2]
        scale = rng.uniform(0.35, 0.9)
        ch, cw = max(16, int(h * scale)), min(w, max(16, int(w * scale * rng.uniform(0.8, 1.25))))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = image[y:y + ch, x:x + cw]
        out.append(to_pixels(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop), size))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


# ----------------------------------------------------------------------------- the alternatives' recipes
def ov_int8(net: Net) -> Runner:
    from retrieval.runtime.openvino_engine import import_openvino

    ov = import_openvino()  # first, so NNCF finds OpenVINO's telemetry stub too: no outside calls
    import nncf

    model = ov.convert_model(net.model, example_input=net.photos[:1])
    calibration = nncf.Dataset([net.calibration[i:i + 1] for i in range(len(net.calibration))])
    quantized = nncf.quantize(model, calibration, subset_size=len(net.calibration),
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    compiled = ov.Core().compile_model(quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "bf16" if net.bf16 else "f32"})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return run


def _onnx_export(net: Net) -> Path:
    """The Keras model as ONNX (keras' exporter calls tf2onnx), written once per configuration."""
    if "onnx" not in net.files:
        import keras

        path = net.work / "model.onnx"
        signature = [keras.InputSpec(shape=(None, net.size, net.size, 3), dtype="float32", name="image")]
        net.model.export(str(path), format="onnx", verbose=False, input_signature=signature)
        net.files["onnx"] = path
    return net.files["onnx"]


def _ort_session(path: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def ort_f32(net: Net) -> Runner:
    return _ort_session(_onnx_export(net))


def ort_int8(net: Net) -> Runner:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, quantized = _onnx_export(net), net.work / "pre.onnx", net.work / "int8_qdq.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    calibration = net.calibration

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 10]} for i in range(0, len(calibration), 10)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return _ort_session(quantized)


def _saved_model(net: Net) -> Path:
    """The Keras model as a TF SavedModel, exported once per configuration for every LiteRT conversion."""
    if "saved_model" not in net.files:
        path = net.work / "saved_model"
        net.model.export(str(path), format="tf_saved_model", verbose=False)
        net.files["saved_model"] = path
    return net.files["saved_model"]


def _litert(net: Net, name: str, configure: Callable | None = None) -> Runner:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    converter = tf.lite.TFLiteConverter.from_saved_model(str(_saved_model(net)))
    if configure:
        configure(converter, tf)
    path = net.work / f"{name}.tflite"
    path.write_bytes(converter.convert())
    interpreters = {}

    def run(x: np.ndarray) -> np.ndarray:
        it = interpreters.get(len(x))
        if it is None:  # one interpreter per batch size: resizing reallocates
            it = interpreters[len(x)] = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
            it.resize_tensor_input(it.get_input_details()[0]["index"], list(x.shape), strict=True)
            it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"]).copy()

    return run


def litert_f32(net: Net) -> Runner:
    return _litert(net, "f32")


def litert_fp16(net: Net) -> Runner:
    def configure(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]

    return _litert(net, "fp16", configure)


def litert_dynamic_int8(net: Net) -> Runner:
    def configure(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]

    return _litert(net, "dynamic_int8", configure)


def litert_int8(net: Net) -> Runner:
    calibration = net.calibration

    def configure(c, tf):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))

    return _litert(net, "int8", configure)


@dataclass(frozen=True)
class Recipe:
    runtime: str
    precision: str  # as shown, and as parity.verdict judges it ("f32" or a reduced precision)
    how: str
    make: Callable[[Net], Runner]


RECIPES = (
    Recipe("OpenVINO", "int8", "NNCF post-training quantisation (PERFORMANCE preset), the rest in bf16 where the CPU "
                               "has it", ov_int8),
    Recipe("ONNX Runtime", "f32", "keras export to ONNX (tf2onnx), CPU provider", ort_f32),
    Recipe("ONNX Runtime", "int8", "static QDQ: per-channel int8 weights, uint8 activations, MinMax calibration "
                                   "(after the f32 export)", ort_int8),
    Recipe("LiteRT", "f32", "keras SavedModel export, TFLiteConverter; XNNPACK (and for every LiteRT row)", litert_f32),
    Recipe("LiteRT", "fp16 weights", "TFLiteConverter, float16 weights", litert_fp16),
    Recipe("LiteRT", "int8 dynamic range", "TFLiteConverter, int8 weights, float activations", litert_dynamic_int8),
    Recipe("LiteRT", "int8", "TFLiteConverter, full integer with float input/output", litert_int8),
)


# ----------------------------------------------------------------------------- measuring
@dataclass
class Row:
    runtime: str
    precision: str
    how: str
    setup_s: float | None = None
    error: str | None = None
    img_s_b32: float | None = None
    ms_b1: float | None = None
    rounds_s: dict = field(default_factory=dict)  # batch -> seconds per call, one per round
    others_busy_cores: dict = field(default_factory=dict)  # batch -> mean over rounds
    parity: dict | None = None
    verdict: str | None = None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def run_all(call: Runner, x: np.ndarray) -> np.ndarray:
    """Outputs for every row of x, in batches of 32 (the last padded, so each runtime sees one shape)."""
    out = []
    for i in range(0, len(x), BATCH):
        chunk = x[i:i + BATCH]
        n = len(chunk)
        if n < BATCH:
            chunk = np.concatenate([chunk, np.zeros((BATCH - n,) + chunk.shape[1:], chunk.dtype)])
        out.append(np.asarray(call(np.ascontiguousarray(chunk)), np.float32)[:n])
    return np.concatenate(out)


def _busy_jiffies() -> int:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def seconds_per_call(call: Runner, x: np.ndarray, min_s: float, repeats: int) -> tuple[float, float]:
    """Median seconds per call after one warm-up call, and the cores other processes kept busy meanwhile."""
    start = time.perf_counter()
    call(x)  # warm-up, and how many calls make min_s
    loops = max(1, int(min_s / max(time.perf_counter() - start, 1e-6)))
    hz, own = os.sysconf("SC_CLK_TCK"), lambda: sum(os.times()[:2])
    busy0, own0, wall0 = _busy_jiffies(), own(), time.perf_counter()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            call(x)
        times.append((time.perf_counter() - start) / loops)
    wall = time.perf_counter() - wall0
    others = ((_busy_jiffies() - busy0) / hz - (own() - own0)) / wall
    return statistics.median(times), max(0.0, others)


def time_interleaved(candidates: list[tuple[Row, Runner]], inputs: dict[int, np.ndarray], rounds: int,
                     min_s: float, repeats: int, deadline: float) -> None:
    """Round r times every candidate before round r+1 starts; each keeps its best round."""
    busy: dict[tuple[int, int], list[float]] = {}
    for r in range(rounds):
        if r and time.perf_counter() > deadline:
            print(f"  time budget reached: {r} round(s)", flush=True)
            break
        for i, (row, call) in enumerate(candidates):
            for b, x in inputs.items():
                s, others = seconds_per_call(call, x, min_s, repeats)
                row.rounds_s.setdefault(str(b), []).append(round(s, 5))
                busy.setdefault((i, b), []).append(others)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    for i, (row, _) in enumerate(candidates):
        best = {b: min(row.rounds_s[str(b)]) for b in inputs}
        row.img_s_b32, row.ms_b1 = round(32 / best[32], 1), round(best[1] * 1e3, 2)
        row.others_busy_cores = {str(b): round(float(np.mean(busy[(i, b)])), 2) for b in inputs}


def bench_config(key: str, args, deadline: float) -> dict:
    from retrieval import ExtractorConfig, Studio
    from retrieval.runtime import KERAS, OPTIONS, parity, reference
    from retrieval.runtime.openvino_engine import unavailable

    spec = CONFIGS[key]
    work = Path(tempfile.mkdtemp(prefix=f"bench-runtimes-{key}-"))
    os.environ["RETRIEVAL_CACHE_DIR"] = str(work / "cache")  # the Studio converts and checks afresh
    studio = Studio(work / "bench.sqlite", device="cpu")
    cfg = studio.resolve(ExtractorConfig() if spec is None else ExtractorConfig(backbone=spec[0], pooling=spec[1]))
    print(f"== {key}: {cfg.key}", flush=True)
    pixels, labels = reference.photos(cfg.input_size)
    labels = list(labels)

    start = time.perf_counter()
    keras = studio.backbone(cfg, runtime=KERAS.name)
    keras_row = Row("Keras", KERAS.precision, f"Studio.backbone(cfg, runtime={KERAS.name!r}): predict_on_batch",
                    setup_s=round(time.perf_counter() - start, 2))
    x = keras.prepare(pixels)

    def keras_call(batch: np.ndarray) -> np.ndarray:
        return keras.keras_call(keras.model, batch)

    reference_vectors = run_all(keras_call, x)
    rows, candidates = [keras_row], [(keras_row, keras_call)]
    print(f"  Keras f32: setup {keras_row.setup_s} s", flush=True)

    def add(row: Row, make: Callable[[], Runner]) -> None:
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # converters print their graphs' signatures
                call = make()
            row.setup_s = round(time.perf_counter() - start, 2)
            vectors = run_all(call, x)
        except Exception as exc:  # a package missing, a converter or kernel that cannot take this graph
            row.error = one_line(exc)
            print(f"  {row.runtime} {row.precision}: FAILED {row.error}", flush=True)
            rows.append(row)
            return
        measured = parity.measure(reference_vectors, vectors, labels)
        row.parity = {k: round(v, 5) if isinstance(v, float) else v for k, v in measured.to_json().items()}
        row.verdict = parity.verdict(measured, row.precision)
        print(f"  {row.runtime} {row.precision}: setup {row.setup_s} s, {measured.summary()}", flush=True)
        rows.append(row)
        candidates.append((row, call))

    def through_studio(opt) -> Runner:
        backbone = studio.backbone(cfg, runtime=opt.name)
        if backbone.runtime != opt.label or backbone.runner is None:
            raise RuntimeError(f"the Studio ran {backbone.runtime}: {backbone.runtime_note}")
        return backbone.runner

    for opt in OPTIONS.values():  # the project's own options, as users run them
        if opt is not KERAS:
            add(Row(opt.label.split(" ")[0], opt.precision, f"Studio.backbone(cfg, runtime={opt.name!r})"),
                lambda opt=opt: through_studio(opt))
    auto = studio.backbone(cfg, runtime="auto")
    net = Net(keras.model, cfg.input_size, keras.prepare, x, work, args.calibration, unavailable("bf16") is None)
    for recipe in RECIPES:  # the alternatives
        add(Row(recipe.runtime, recipe.precision, recipe.how), lambda recipe=recipe: recipe.make(net))

    rng = np.random.default_rng(0)
    inputs = {b: np.ascontiguousarray(x[rng.integers(0, len(x), b)]) for b in (32, 1)}
    print(f"  timing {len(candidates)} candidates, up to {args.rounds} interleaved round(s)", flush=True)
    time_interleaved(candidates, inputs, args.rounds, args.min_s, args.repeats, deadline)
    studio.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"config": cfg.key, "photos": len(x), "calibration_images": args.calibration,
            "auto": {"runtime": auto.runtime, "note": auto.runtime_note}, "rows": [asdict(r) for r in rows]}


# ----------------------------------------------------------------------------- machine and report
def machine() -> dict:
    info = {"cpu": platform.processor() or "unknown", "cores": os.cpu_count(), "flags": {}}
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        info["cpu"] = lines.get("model name\t", info["cpu"]).strip()
        flags = set(lines.get("flags\t\t", "").split())
        info["flags"] = {f: f in flags for f in CPU_FLAGS}
    except OSError:
        pass
    try:
        from retrieval.runtime.openvino_engine import core

        info["openvino_capabilities"] = list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:
        info["openvino_capabilities"] = one_line(exc)
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "openvino", "nncf", "onnxruntime", "onnx", "tf2onnx", "ai-edge-litert"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _gate(row: dict) -> str:
    if row.get("parity") is None:
        return "reference"
    return "passes" if row["verdict"] is None else f"**no**: {row['verdict']}"


HOW_TO_READ = (
    "Model only: the 70 labelled demo photos, decoded and preprocessed once. **img/s b32**: batches of 32; "
    "**ms b1**: one image per call; **vs Keras**: speed over Keras' at b32 / b1. Each figure is a candidate's best "
    "of {rounds} rounds interleaved across the candidates (each round a median of {repeats} repeats); **busy** is "
    "how many of the cores other processes used while it was timed (so a run on a shared machine can be read "
    "as relative). **setup**: for the project's options, `Studio.backbone(cfg, runtime=…)` in a fresh cache "
    "(Keras: building the network, including the one-time conversion of the pip package's weights, and for the "
    "first configuration TensorFlow's start-up; OpenVINO f32: conversion, compilation and the Studio's own parity "
    "check; bf16 reuses that conversion); for the others, the recipe's conversion or quantisation (a failed row "
    "shows how long it took to fail). Parity is `retrieval.runtime.parity.measure` against Keras f32 on the same "
    "photos (top-10 overlap of neighbours, leave-one-out mAP by label); **gate** is `parity.verdict`, the check "
    "`auto` applies."
)
TABLE_HEAD = ("| runtime | precision | img/s b32 | ms b1 | vs Keras | median cosine | top-10 overlap "
              "| mAP Keras→runtime | gate | setup s | busy b32/b1 |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")


def table_row(r: dict, keras: dict | None) -> str:
    if r["error"]:
        setup = "—" if r["setup_s"] is None else f"{r['setup_s']:.1f}"
        return f"| {r['runtime']} | {r['precision']} | — | — | — | — | — | — | failed: `{r['error']}` | {setup} | — |"
    speed = f"{r['img_s_b32'] / keras['img_s_b32']:.2f}× / {keras['ms_b1'] / r['ms_b1']:.2f}×" if keras else "—"
    p = r["parity"]
    quality = (f"{p['median_cosine']:.4f} | {p['top10_overlap']:.3f} | {p['map_keras']:.4f}→{p['map_runtime']:.4f}"
               if p else "— | — | —")
    busy = r["others_busy_cores"]
    return (f"| {r['runtime']} | {r['precision']} | {r['img_s_b32']:.1f} | {r['ms_b1']:.2f} | {speed} | {quality} "
            f"| {_gate(r)} | {r['setup_s']:.1f} | {busy['32']:.1f}/{busy['1']:.1f} |")


def regate(result: dict) -> dict:
    """Judge the stored parity figures by today's gates, so a rendered page never shows a stale verdict."""
    from retrieval.runtime import parity

    for section in result["configs"].values():
        for row in section["rows"]:
            if row.get("parity"):
                row["verdict"] = parity.verdict(parity.Parity(**row["parity"]), row["precision"])
    return result


def render(result: dict) -> str:
    m, settings = result["machine"], result["settings"]
    has = ", ".join(f for f, on in m["flags"].items() if on) or "none of interest"
    lacks = ", ".join(f for f, on in m["flags"].items() if not on) or "nothing"
    lines = ["# Inference runtimes side by side", "",
             (f"Made by `{result['command']}` in {result['total_s']:.0f} s on {m['cpu']}, {m['cores']} cores "
              f"(has {has}; lacks {lacks}). Raw rows, versions and every round's timing: `docs/runtimes.json`."), "",
             HOW_TO_READ.format(**settings)]
    for key, conf in result["configs"].items():
        keras = next((r for r in conf["rows"] if r["runtime"] == "Keras" and r["img_s_b32"]), None)
        lines += ["", f"## {key}: `{conf['config']}`", "", TABLE_HEAD]
        lines += [table_row(r, keras) for r in conf["rows"]]
        lines += ["", f"`auto` picked here: **{conf['auto']['runtime']}** — {conf['auto']['note']}"]
    lines += ["", "## What the project chose", "", choice_paragraph(result), "", "## Package sizes", "",
              ("Wheels the runtime study downloaded (Linux x86-64, CPython 3.11); packages the environment already "
               "had (numpy, scipy, protobuf, flatbuffers, …) are not counted. Only OpenVINO is a dependency of the "
               "project (`requirements-common.txt`); the rest are in `benchmarks/requirements.txt`."), "",
              "| candidate | wheels (MB) | MB |", "| --- | --- | ---: |"]
    for who, wheels in WHEELS_MB.items():
        listed = ", ".join(f"{w} ({mb:g})" for w, mb in wheels.items())
        lines.append(f"| {who} | {listed} | {sum(wheels.values()):.1f} |")
    calibration = next(iter(result["configs"].values()))["calibration_images"]
    lines += ["", "## How the alternatives were made", "", "| runtime | precision | recipe |", "| --- | --- | --- |"]
    lines += [f"| {r.runtime} | {r.precision} | {r.how} |" for r in RECIPES]
    lines += ["", (f"int8 calibration: {calibration} images that are not in the demo gallery: half Fashion-MNIST "
                   "training images, half random crops and flips of scikit-image photos the gallery does not use "
                   f"({', '.join(CALIBRATION_PHOTOS)})."), ""]
    return "\n".join(lines)


def choice_paragraph(result: dict) -> str:
    """What the project offers and why, with this run's figures."""
    def rows(runtime: str, precision: str) -> dict[str, dict | None]:
        return {key: next((r for r in conf["rows"] if r["runtime"] == runtime and r["precision"] == precision), None)
                for key, conf in result["configs"].items()}

    def quality(runtime: str, precision: str) -> str:
        parts = []
        for key, r in rows(runtime, precision).items():
            if r is None or r["parity"] is None:
                parts.append(f"{key}: {r['error'] if r else 'not run'}")
                continue
            p = r["parity"]
            parts.append(f"{key}: median cosine {p['median_cosine']:.4f}, top-10 overlap {p['top10_overlap']:.2f}, "
                         f"mAP {p['map_keras']:.3f}→{p['map_runtime']:.3f}, "
                         + ("passes the gate" if r["verdict"] is None else f"fails: {r['verdict']}"))
        return "; ".join(parts)

    def speed(runtime: str, precision: str) -> str:
        return ", ".join(f"{key} {r['img_s_b32']:.0f}" if r and r["img_s_b32"] else f"{key} —"
                         for key, r in rows(runtime, precision).items())

    cosines = [r["parity"]["median_cosine"] for conf in result["configs"].values() for r in conf["rows"]
               if r["precision"] == "int8" and r["parity"]]
    int8_cosines = f"{min(cosines):.3f}-{max(cosines):.3f}" if cosines else "—"
    return (
        "`auto` tries **OpenVINO bf16** first where the CPU has bf16 instructions (OpenVINO lists `BF16` among the "
        "CPU's capabilities: avx512_bf16 or AMX), then **OpenVINO f32**, and stays on Keras (the definition) when "
        f"neither passes its check. bf16 keeps retrieval quality ({quality('OpenVINO', 'bf16')}); f32 reproduces "
        f"Keras to rounding ({quality('OpenVINO', 'f32')}).\n\n"
        "**int8 is not offered.** It is the fastest family (img/s b32: OpenVINO int8 "
        f"{speed('OpenVINO', 'int8')}; OpenVINO bf16 {speed('OpenVINO', 'bf16')}), but it moves the vectors far "
        f"more than bf16: OpenVINO int8 ({quality('OpenVINO', 'int8')}); ONNX Runtime int8 "
        f"({quality('ONNX Runtime', 'int8')}); LiteRT int8 ({quality('LiteRT', 'int8')}). "
        f"On 70 photos an unchanged mAP is weak evidence beside median cosines of {int8_cosines}, so int8 would "
        "first need its mAP loss measured on the full sets (`benchmarks/runtime_quality.py`).\n\n"
        "ONNX Runtime and LiteRT, as set up here, have no bf16 path on an x86 CPU (f32, fp16 weights that are "
        "widened to f32, or int8), so what they could add is f32 (img/s b32: ONNX Runtime "
        f"{speed('ONNX Runtime', 'f32')}; LiteRT {speed('LiteRT', 'f32')}; OpenVINO {speed('OpenVINO', 'f32')}; "
        f"Keras {speed('Keras', 'f32')}), at the price of a second 20-40 MB dependency beside OpenVINO."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"any of {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per round (median)")
    parser.add_argument("--min-s", type=float, default=0.3, help="each repeat loops at least this long")
    parser.add_argument("--calibration", type=int, default=300, help="int8 calibration images")
    parser.add_argument("--budget-s", type=float, default=400,
                        help="no timing round after the first starts past this share of the run (seconds in all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, short repeats, 20 calibration images")
    parser.add_argument("--out", default=None, help="JSON path (default docs/runtimes.json; --quick: benchmarks/out)")
    parser.add_argument("--render", action="store_true", help="only write the .md from the JSON")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeats, args.min_s, args.calibration = 1, 1, 0.05, 20
    out = Path(args.out or ("benchmarks/out/runtimes_quick.json" if args.quick else "docs/runtimes.json"))
    if args.render:
        out.with_suffix(".md").write_text(render(regate(json.loads(out.read_text()))))
        return

    started = time.perf_counter()
    result = {"command": " ".join(["python -m benchmarks.runtimes", *sys.argv[1:]]), "machine": machine(),
              "versions": versions(), "settings": {k: getattr(args, k) for k in ("rounds", "repeats", "min_s")},
              "configs": {}}
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    for i, key in enumerate(keys):
        # each configuration gets its share of the budget for timing rounds beyond the first
        deadline = started + args.budget_s * (i + 1) / len(keys)
        result["configs"][key] = bench_config(key, args, deadline)
        gc.collect()
    result["total_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(f"wrote {out} and {out.with_suffix('.md')} in {result['total_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""Pick the runtime for one network: convert, check against Keras, keep the record.

Why records on disk: a conversion and its parity check cost a few seconds,
once per network, precision and machine. The record (``<option>.json``
beside the converted model) holds the figures, so a restart decides at once
and ``models`` can say why a runtime was or was not chosen. Records are keyed
by a digest of the network's graph and weights, never by its name: a
retrained model with a reused name gets new records.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..settings import cache_dir
from . import KERAS, OPTIONS, RuntimeOption, RuntimeUnavailable, openvino_engine, option, parity, reference

# ``auto`` tries these in order, fastest first as measured by
# benchmarks/runtimes.py (docs/runtimes.md), and takes the first that passes
# its checks here. The speeds a trial records are shown, not used: a
# conversion made while the machine is busy must not fix a slower choice.
AUTO_ORDER = ("openvino-bf16", "openvino-f32")
CHECK_BATCH = 32

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Target:
    """What the runtime layer needs from a Keras backbone."""

    model: object  # keras.Model: model input (N, S, S, 3) float32 -> (N, D)
    input_size: int
    prepare: Callable[[np.ndarray], np.ndarray]  # uint8 images -> model input
    keras_call: Callable[[np.ndarray], np.ndarray]  # model input -> output, through Keras


@dataclass(frozen=True)
class Trial:
    """One option checked against Keras on the reference photos."""

    option: str
    problem: str | None  # None: it may stand in for Keras
    parity: dict | None = None
    keras_img_s: float = 0.0
    runtime_img_s: float = 0.0

    @property
    def speedup(self) -> float:
        return self.runtime_img_s / self.keras_img_s if self.keras_img_s else 0.0

    def summary(self) -> str:
        if self.parity is None:
            return f"{self.option}: {self.problem}"
        p = parity.Parity(**self.parity)
        head = f"{self.option}: {self.speedup:.1f}× Keras here, {p.summary()}"
        return f"{head} — not used: {self.problem}" if self.problem else head


@dataclass(frozen=True)
class Choice:
    option: RuntimeOption
    runner: Runner | None  # None: Keras itself
    note: str  # why this runtime, in one line
    trials: tuple[Trial, ...] = field(default=())

    @property
    def label(self) -> str:
        return self.option.label


def digest(model) -> str:
    """Graph and weights -> a name for its conversions (a few ms for EfficientNet-Lite)."""
    h = hashlib.sha256(model.to_json().encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:24]


def _timed(call: Runner, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Outputs and images per second of the second of two passes (the first traces and warms up)."""
    def run() -> np.ndarray:
        return np.concatenate([call(x[i:i + CHECK_BATCH]) for i in range(0, len(x), CHECK_BATCH)])

    run()
    start = time.perf_counter()
    out = run()
    return out, len(x) / max(time.perf_counter() - start, 1e-9)


def _load(opt: RuntimeOption, target: Target, folder: Path) -> Runner:
    example = target.prepare(np.zeros((1, target.input_size, target.input_size, 3), np.uint8))
    xml = openvino_engine.convert(target.model, example, folder / f"{opt.engine}-{openvino_engine.version()}")
    return openvino_engine.OpenVINORunner(xml, opt.precision, folder.parent / "openvino-compiled")


class Chooser:
    """Trials and runners for one network, under one folder of the data folder."""

    def __init__(self, target: Target, folder: Path, photos: Path = reference.PHOTOS):
        self.target, self.folder, self.photos = target, folder, photos
        self._lock = threading.RLock()  # one conversion at a time per network
        self._keras: tuple[np.ndarray, float] | None = None
        self._runners: dict[str, Runner] = {}

    def _reference(self) -> tuple[np.ndarray, tuple]:
        pixels, labels = reference.photos(self.target.input_size, self.photos)
        return self.target.prepare(pixels), labels

    def _keras_run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        if self._keras is None:
            self._keras = _timed(self.target.keras_call, x)
        return self._keras

    def runner(self, opt: RuntimeOption) -> Runner:
        if opt.name not in self._runners:
            self._runners[opt.name] = _load(opt, self.target, self.folder)
        return self._runners[opt.name]

    def trial(self, opt: RuntimeOption) -> Trial:
        """The option's record, made (convert, run both, compare) if missing."""
        why = openvino_engine.unavailable(opt.precision)
        if why:
            return Trial(opt.name, why)
        record = self.folder / f"{opt.name}@{openvino_engine.version()}.json"  # a new engine checks again
        if record.exists():
            try:
                return Trial(**json.loads(record.read_text()))
            except (ValueError, TypeError):
                record.unlink(missing_ok=True)  # torn or from another version: check again
        x, labels = self._reference()
        if len(x) < 11:
            return Trial(opt.name, "no reference photos to check it against Keras")
        try:
            runner = self.runner(opt)
            ours, runtime_speed = _timed(runner, x)
        except Exception as exc:  # a converter that cannot take this graph: say so, fall back
            return Trial(opt.name, f"conversion failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        theirs, keras_speed = self._keras_run(x)
        measured = parity.measure(theirs, ours, list(labels))
        problem = parity.verdict(measured, opt.precision)
        trial = Trial(opt.name, problem, measured.to_json(), round(keras_speed, 1), round(runtime_speed, 1))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(trial), indent=1))
            os.replace(tmp, record)
        except OSError:
            pass  # a read-only cache only costs this check again next time
        return trial

    def checked(self, opt: RuntimeOption) -> Trial:
        """The trial, failed too when the f32 conversion it runs is not faithful."""
        with self._lock:
            return self._checked(opt)

    def _checked(self, opt: RuntimeOption) -> Trial:
        trial = self.trial(opt)
        if opt.precision == "f32" or trial.problem is not None:
            return trial
        base = self.trial(OPTIONS[f"{opt.engine}-f32"])
        if base.problem is None:
            return trial
        return Trial(**{**asdict(trial), "problem": f"its f32 conversion failed: {base.problem}"})

    def choose(self, requested: str) -> Choice:
        with self._lock:
            return self._choose(requested)

    def _choose(self, requested: str) -> Choice:
        if requested != "auto":
            opt = option(requested)
            if opt is KERAS:
                return Choice(KERAS, None, "Keras (as asked)")
            trial = self.checked(opt)
            if trial.parity is None:
                raise RuntimeUnavailable(f"runtime {opt.name} cannot run here: {trial.problem}")
            return Choice(opt, self.runner(opt), f"{opt.label} (as asked) — {trial.summary()}", (trial,))
        trials = []
        for name in AUTO_ORDER:
            trial = self.checked(OPTIONS[name])
            trials.append(trial)
            if trial.problem is None:
                return Choice(OPTIONS[name], self.runner(OPTIONS[name]), f"auto: {trial.summary()}", tuple(trials))
        reasons = "; ".join(t.summary() for t in trials)
        return Choice(KERAS, None, f"auto: Keras, because {reasons}", tuple(trials))


_choosers: OrderedDict[Path, Chooser] = OrderedDict()
_choosers_lock = threading.Lock()
MAX_CHOOSERS = 16  # networks whose compiled runtimes stay loaded in this process


def chooser(target: Target, root: Path | None = None) -> Chooser:
    """The process's chooser for this network (by content), so Studios share compiled models.

    Conversions live in the cache folder (``$RETRIEVAL_CACHE_DIR``; the app
    points it into its data folder), beside the converted Keras weights.
    """
    folder = (root or cache_dir() / "runtimes") / digest(target.model)
    with _choosers_lock:
        found = _choosers.get(folder)
        if found is None:
            found = _choosers[folder] = Chooser(target, folder)
            while len(_choosers) > MAX_CHOOSERS:
                _choosers.popitem(last=False)
        _choosers.move_to_end(folder)
        return found


def remember(key: str, choice: Choice, root: Path | None = None) -> None:
    """Note what ran a configuration, for ``models`` to show without loading anything.

    A display record only (by configuration key): decisions come from the
    trials, which are keyed by the network's content.
    """
    path = (root or cache_dir() / "runtimes") / "chosen.json"
    with _choosers_lock:
        try:
            known = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            known = {}
        entry = {"runtime": choice.label, "note": choice.note}
        if known.get(key) == entry:
            return
        known[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".chosen.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, ensure_ascii=False))
        os.replace(tmp, path)


def remembered(root: Path | None = None) -> dict[str, dict]:
    path = (root or cache_dir() / "runtimes") / "chosen.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def fixed(reason: str) -> Choice:
    """Keras, for networks no other runtime takes (GPU placement, another backend)."""
    return Choice(KERAS, None, reason)

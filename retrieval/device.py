"""Which device runs the model: ``auto``, ``cpu`` or ``gpu``.

Why a module of its own: the model code is backend-neutral (Keras 3 on
TensorFlow, JAX or torch), but asking "is there a GPU?" and pinning work to a
device are backend-specific. Everything backend-specific lives here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "gpu")


class DeviceError(RuntimeError):
    """The requested device does not exist here."""


@dataclass(frozen=True)
class Placement:
    kind: str  # "cpu" or "gpu"
    description: str  # what a person reads in timings, e.g. "GPU (NVIDIA H100) via jax"


def import_keras():
    """Import Keras (and TensorFlow) with the C++ start-up banner silenced.

    TensorFlow prints oneDNN, absl and CUDA notices to file descriptor 2 before
    any setting can stop them; they bury our own one-line messages. Python-level
    errors still propagate and print normally after the descriptor is back.
    """
    import os
    import sys

    if "keras" in sys.modules:
        return sys.modules["keras"]
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras

            if keras.config.backend() == "tensorflow":
                import tensorflow as tf

                # The full TensorFlow wheel looks for CUDA once, on the first device
                # query, and logs "failed call to cuInit" where there is no GPU.
                tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return keras


def _backend() -> str:
    keras = import_keras()

    return keras.config.backend()


def gpu_names() -> list[str]:
    """Names of the GPUs the active Keras backend can use (empty on CPU-only)."""
    backend = _backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            names = []
            for gpu in gpus:
                details = tf.config.experimental.get_device_details(gpu)
                names.append(details.get("device_name", gpu.name))
            return names
        if backend == "jax":
            import jax

            return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
        if backend == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver means "no GPU", not a crash
        return []
    return []


def resolve(requested: str = "auto") -> Placement:
    """Turn a user's device choice into a concrete placement, or say why not."""
    if requested not in DEVICES:
        raise DeviceError(f"unknown device {requested!r}: choose one of {', '.join(DEVICES)}")
    backend = _backend()
    gpus = gpu_names() if requested != "cpu" else []
    if requested == "gpu" and not gpus:
        raise DeviceError(
            f"no GPU is visible to Keras' {backend} backend here; use --device cpu (or auto)"
        )
    if gpus:
        return Placement("gpu", f"GPU ({gpus[0]}) via {backend}")
    return Placement("cpu", f"CPU via {backend}")


@contextlib.contextmanager
def placed(placement: Placement):
    """Run the enclosed model calls on the placement's device."""
    backend = _backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.device("/GPU:0" if placement.kind == "gpu" else "/CPU:0"):
            yield
    elif backend == "jax":
        import jax

        platform = "gpu" if placement.kind == "gpu" else "cpu"
        with jax.default_device(jax.devices(platform)[0]):
            yield
    else:
        yield

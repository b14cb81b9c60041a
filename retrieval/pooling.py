"""Global pooling of a CNN feature map into one descriptor, and L2 norm.

Why array-module agnostic: the same formula runs on numpy arrays (tests,
explanations) and on Keras tensors inside the model (``xp=keras.ops``), so the
math is written once. Feature maps are ``(N, H, W, C)``.

- GAP/SPoC: the mean activation per channel.
- MAC: the max activation per channel.
- GeM: ``(mean(x**p))**(1/p)``; p=1 is GAP and p -> inf tends to MAC, so one
  learnable-in-principle knob spans both (Radenovic et al., 2018).
"""

from __future__ import annotations

import numpy as np

POOLINGS = ("gap", "mac", "gem")
DEFAULT_GEM_P = 3.0
_EPS = 1e-6


def gap(x, xp=np):
    return xp.mean(x, axis=(1, 2))


def mac(x, xp=np):
    return xp.max(x, axis=(1, 2))


def gem(x, p: float = DEFAULT_GEM_P, xp=np):
    # Clamping keeps the power defined: ReLU6 maps are >= 0, but other
    # backbones' last layers may not be.
    # Dividing by the channel maximum first keeps x**p finite in float32 for
    # large p (6**60 overflows); the maximum is multiplied back afterwards.
    clamped = xp.maximum(x, _EPS)
    peak = xp.max(clamped, axis=(1, 2), keepdims=True)
    ratio = xp.mean(xp.power(clamped / peak, p), axis=(1, 2))
    return xp.power(ratio, 1.0 / p) * peak[:, 0, 0, :]


def pool(x, kind: str = "gem", p: float = DEFAULT_GEM_P, xp=np):
    """Pool ``(N, H, W, C)`` into ``(N, C)`` by name."""
    if kind == "gap":
        return gap(x, xp)
    if kind == "mac":
        return mac(x, xp)
    if kind == "gem":
        return gem(x, p, xp)
    raise ValueError(f"unknown pooling {kind!r}: choose one of {', '.join(POOLINGS)}")


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit-length rows; an all-zero row stays zero instead of becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)

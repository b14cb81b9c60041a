"""Covariance with shrinkage, PCA-whitening, and the Mahalanobis transform.

Why shrinkage: a gallery of 50 images has a 1280x1280 covariance of rank 49.
Inverting it (Mahalanobis) or dividing by its eigenvalues (whitening) would
amplify noise without bound. Ledoit-Wolf shrinkage pulls the covariance
towards a scaled identity by exactly as much as the sample size warrants,
with no parameter to tune (Ledoit & Wolf, 2004).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .pooling import l2_normalize


@dataclass(frozen=True)
class Whitening:
    """``x -> (x - mean) @ projection``; learned from one gallery.

    ``projection=None`` is plain centring, which on ReLU features removes the
    large component every descriptor shares (they are all non-negative).
    """

    mean: np.ndarray  # (D,)
    projection: np.ndarray | None  # (D, d), or None to centre only
    shrinkage: float = 0.0

    def apply(self, x: np.ndarray, normalize: bool = True) -> np.ndarray:
        out = np.asarray(x, np.float32) - self.mean
        if self.projection is not None:
            out = out @ self.projection
        return l2_normalize(out) if normalize else out.astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"mean": self.mean, "shrinkage": np.float32(self.shrinkage)}
        if self.projection is not None:
            arrays["projection"] = self.projection
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Whitening:
        return cls(arrays["mean"], arrays.get("projection"), float(arrays["shrinkage"]))


def fit_centering(x: np.ndarray) -> Whitening:
    """Subtract the gallery mean (then the caller re-normalises)."""
    return Whitening(np.asarray(x, np.float64).mean(axis=0).astype(np.float32), None)


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, shrunk covariance, shrinkage) of the rows of ``x``."""
    x = np.asarray(x, np.float64)
    n, p = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    s_frob2 = float(np.sum(s * s))
    delta = (s_frob2 - p * mu * mu) / p
    beta = (float(np.sum(np.sum(xc * xc, axis=1) ** 2)) - n * s_frob2) / (p * n * n)
    shrinkage = 0.0 if delta <= 0 else float(np.clip(beta / delta, 0.0, 1.0))
    cov = (1 - shrinkage) * s + shrinkage * mu * np.eye(p)
    return mean, cov, shrinkage


def fit_whitening(x: np.ndarray, dim: int | None = None) -> Whitening:
    """PCA-whitening: rotate onto the principal axes, scale each to unit variance.

    With ``dim`` the weakest directions are dropped too. Used with L2
    re-normalisation before cosine ranking, it is the standard
    "learned whitening" post-processing of CNN retrieval descriptors.
    """
    mean, cov, shrinkage = ledoit_wolf(x)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    if dim is not None:
        eigvals, eigvecs = eigvals[:dim], eigvecs[:, :dim]
    projection = eigvecs / np.sqrt(np.maximum(eigvals, 1e-12))
    return Whitening(mean.astype(np.float32), projection.astype(np.float32), shrinkage)


def fit_nothing(x: np.ndarray) -> None:
    """No post-processing: the descriptors are ranked as the backbone made them."""


# Every post-processing a search can ask for, by name: adding one is adding a
# fitter here (``config.WHITENINGS``, the CLI and the app list these keys).
FITTERS: Mapping[str, Callable[[np.ndarray], Whitening | None]] = MappingProxyType({
    "none": fit_nothing,
    "center": fit_centering,
    "pca": fit_whitening,
})


def fit(kind: str, x: np.ndarray) -> Whitening | None:
    """The post-processing named by ``kind``, learned on gallery ``x``."""
    try:
        fitter = FITTERS[kind]
    except KeyError:
        raise ValueError(f"unknown post-processing {kind!r}: choose one of {', '.join(FITTERS)}") from None
    return fitter(x)

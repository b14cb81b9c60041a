"""Distance and similarity functions between query and gallery vectors.

Why a registry of pure functions: each metric is a few lines of matrix
algebra, testable against ``scipy.spatial.distance``, and adding one is
adding a function and a registry line. Every function maps ``(q, D)`` and
``(n, D)`` to a ``(q, n)`` matrix of natural scores; ``Metric`` says which
direction is better.

Mahalanobis distance with covariance Sigma is Euclidean distance after the
transform ``x -> Sigma^(-1/2) x``: ``(x-y)^T Sigma^-1 (x-y) = |W x - W y|^2``
with ``W^T W = Sigma^-1``. So it is computed exactly that way: whitening
(full rank, shrunk covariance, no re-normalisation) followed by Euclidean.
This is also why "PCA-whitening + Euclidean" and "Mahalanobis" coincide when
whitening keeps every dimension and skips the L2 step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist


def cosine_similarity(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Dot products of L2-normalised rows (the store keeps them normalised)."""
    return q @ g.T


def squared_norms(g: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", g, g)


def euclidean_distance(q: np.ndarray, g: np.ndarray, g_sq: np.ndarray | None = None) -> np.ndarray:
    """|q - g| via |q|^2 - 2 q.g + |g|^2: one matrix product, no (q, n, D) tensor."""
    g_sq = squared_norms(g) if g_sq is None else g_sq
    d2 = squared_norms(q)[:, None] - 2.0 * (q @ g.T) + g_sq[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def manhattan_distance(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    return cdist(q, g, metric="cityblock").astype(np.float32)


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]
    whitened: bool = False  # compute in the Mahalanobis-whitened space
    takes_norms: bool = False  # ``score`` also takes the gallery's squared norms, computed once per gallery


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("cosine", True, cosine_similarity),
        Metric("euclidean", False, euclidean_distance, takes_norms=True),
        Metric("mahalanobis", False, euclidean_distance, whitened=True, takes_norms=True),
        Metric("manhattan", False, manhattan_distance),
    )
}

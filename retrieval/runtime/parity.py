"""Does a converted model rank like the Keras model it came from?

Two questions, two gates. Is the *conversion* right? Then its f32 run gives
the same vectors (median cosine >= 0.999) and the same neighbours (top-10
overlap). Does a *reduced precision* of that conversion keep retrieval
quality? bf16 perturbs every vector a little (median cosine ~0.997 on
EfficientNet-Lite), which is not an error in the graph, so it is judged by
what users see: the neighbours (top-10 overlap) and the leave-one-out mAP on
labelled photos, which may drop by at most 0.005. A floor of 0.99 on the
median cosine still applies: vectors stored by one runtime are ranked against
queries embedded by another, so they must stay close (int8 gives 0.95-0.98). ``choose`` lets a reduced
precision stand in for Keras only after the f32 conversion passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..evaluation import leave_one_out
from ..pooling import l2_normalize

MIN_MEDIAN_COSINE = 0.999
MIN_REDUCED_MEDIAN_COSINE = 0.99  # bf16 gives ~0.997; int8 (0.95-0.98 here) moves vectors too far to mix with f32 ones
MIN_TOP10_OVERLAP = 0.9
MAX_MAP_LOSS = 0.005


@dataclass(frozen=True)
class Parity:
    images: int
    median_cosine: float
    min_cosine: float
    top10_overlap: float  # mean over queries of |top-10 by Keras ∩ top-10 by the runtime| / 10
    map_keras: float
    map_runtime: float

    @property
    def map_loss(self) -> float:
        return self.map_keras - self.map_runtime

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"cosine {self.median_cosine:.4f} (min {self.min_cosine:.3f}), top-10 {self.top10_overlap:.2f}, "
                f"mAP {self.map_keras:.3f}→{self.map_runtime:.3f} on {self.images} photos")


def _top(vectors: np.ndarray, k: int) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _loo_map(vectors: np.ndarray, labels: list[str | None]) -> float:
    def rank(rows, _exclude):
        sims = vectors[rows] @ vectors.T
        return np.argsort(-sims, axis=1, kind="stable")

    return leave_one_out(labels, rank).map


def measure(reference: np.ndarray, candidate: np.ndarray, labels: list[str | None]) -> Parity:
    """Compare two runs over the same images (rows in the same order)."""
    a, b = l2_normalize(np.asarray(reference, np.float32)), l2_normalize(np.asarray(candidate, np.float32))
    cosines = (a * b).sum(axis=1)
    k = min(10, len(a) - 1)
    overlap = 1.0
    if k > 0:
        ta, tb = _top(a, k), _top(b, k)
        overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)]))
    return Parity(len(a), float(np.median(cosines)), float(cosines.min()), overlap,
                  _loo_map(a, labels), _loo_map(b, labels))


def verdict(parity: Parity, precision: str) -> str | None:
    """None when the runtime may stand in for Keras, else why not."""
    if precision == "f32" and parity.median_cosine < MIN_MEDIAN_COSINE:
        return f"median cosine {parity.median_cosine:.4f} < {MIN_MEDIAN_COSINE}: the conversion is not faithful"
    if precision != "f32" and parity.median_cosine < MIN_REDUCED_MEDIAN_COSINE:
        return f"median cosine {parity.median_cosine:.4f} < {MIN_REDUCED_MEDIAN_COSINE} for a reduced precision"
    if parity.top10_overlap < MIN_TOP10_OVERLAP:
        return f"top-10 overlap {parity.top10_overlap:.2f} < {MIN_TOP10_OVERLAP}"
    if precision != "f32" and parity.map_loss > MAX_MAP_LOSS:
        return f"mAP loss {parity.map_loss:.4f} > {MAX_MAP_LOSS}"
    return None

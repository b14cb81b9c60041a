"""Alpha query expansion (aQE): rewrite the query from its nearest gallery items.

Why: a query photo shows one view; its few nearest gallery items are very
likely the same thing seen otherwise, and their mean is a better query than
the photo alone. Each neighbour is weighted by similarity^alpha, so a close
match counts and a doubtful one hardly does (Radenovic, Tolias, Chum,
"Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018).

Leave-one-out: rows in ``exclude`` are absent from the gallery for that
query, so they are never among its neighbours; the query's own gallery row
(which would be its best "neighbour", at similarity 1) is in ``exclude``.
Nothing else is gallery-side, so nothing else needs recomputing.
"""

from __future__ import annotations

import numpy as np

from ..pooling import l2_normalize
from .neighbours import top_k

NEIGHBOURS = 2
ALPHA = 3.0


def weights(similarities: np.ndarray, alpha: float) -> np.ndarray:
    """similarity^alpha, negative similarities counting for nothing."""
    return np.power(np.clip(similarities, 0.0, None), alpha)


def alpha_query_expansion(queries: np.ndarray, gallery: np.ndarray, n: int = NEIGHBOURS, alpha: float = ALPHA,
                          exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Each query plus its n nearest gallery vectors, weighted by similarity^alpha, L2-normalised."""
    sims = queries @ gallery.T
    if exclude is not None:
        for row, skip in enumerate(exclude):
            sims[row, skip] = -np.inf
    idx = top_k(sims, n)
    w = weights(np.take_along_axis(sims, idx, axis=1), alpha)
    w[~np.isfinite(w)] = 0.0
    expanded = queries + np.einsum("qk,qkd->qd", w, gallery[idx])
    return l2_normalize(expanded)

"""Database-side augmentation (DBA): each gallery vector becomes the weighted
mean of itself and its nearest gallery neighbours.

Why: it is query expansion done once, offline, on the gallery side. Items of
one object or class pull towards each other, so a query that finds one of
them is closer to all of them; a search costs nothing more (Radenovic et al.,
TPAMI 2018: neighbours weighted by similarity^alpha, the item itself by 1).

Leave-one-out (``absent``): the query's own row must not help its ranking,
yet with DBA it would, through every gallery vector it was averaged into:
its neighbours, which are mostly of its class, would each carry a little of
the query itself. So for each query the rows that listed an excluded row
among their n neighbours (the reverse neighbours, found in a sparse reverse
index) are recomputed from their lists with the excluded rows removed (the
next neighbour moves up). Every other row's average never involved an
excluded row and is exactly what a gallery rebuilt without it would hold,
so the result equals a true rebuild, for a handful of rows per query.
"""

from __future__ import annotations

import numpy as np

from ..pooling import l2_normalize
from .neighbours import EXTRA, Neighbours
from .qe import ALPHA, weights

NEIGHBOURS = 2


def augment(space: np.ndarray, rows: np.ndarray, idx: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """Rows of ``space`` plus their neighbours ``idx`` (-1: none) weighted by sims^alpha, L2-normalised."""
    w = weights(sims, alpha)
    w[idx < 0] = 0.0
    mixed = space[rows] + np.einsum("qk,qkd->qd", w.astype(np.float32), space[np.maximum(idx, 0)])
    return l2_normalize(mixed)


def database_augmentation(gallery: np.ndarray, n: int = NEIGHBOURS, alpha: float = ALPHA) -> np.ndarray:
    """The augmented gallery: one (N x N) similarity pass, in blocks."""
    return DBA(gallery, n, alpha).space


class DBA:
    """The augmented gallery, and what leave-one-out needs to undo a row's share in it."""

    def __init__(self, space: np.ndarray, n: int = NEIGHBOURS, alpha: float = ALPHA):
        self.n, self.alpha, self.base = n, alpha, space
        self.neighbours = Neighbours(space, n + EXTRA)
        rows = np.arange(len(space))
        self.space = augment(space, rows, self.neighbours.idx[:, :n], self.neighbours.sims[:, :n], alpha)

    def absent(self, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their augmented vectors) for a gallery without ``excluded``: only rows that change."""
        rows = self.neighbours.reverse(excluded, self.n)
        if not len(rows):
            return rows, self.space[:0]
        idx, sims = self.neighbours.without(rows, excluded, self.n)
        return rows, augment(self.base, rows, idx, sims, self.alpha)

"""Nearest-neighbour lists of a gallery: the state DBA, diffusion and k-reciprocal share.

Why lists, kept a little longer than needed: every gallery-side re-ranker
starts from "the k nearest other items of each gallery item". Finding them is
the one costly step (an N x N similarity pass, done in blocks), so it is done
once. Keeping ``extra`` more entries per row than the re-ranker uses lets a
leave-one-out query remove itself (and its duplicates) from every list
without a new pass: a list that loses an entry takes the next one, exactly
what a rebuild without that row would have found. Only a row that loses more
than ``extra`` entries is recomputed against the gallery.

Ordering is deterministic: by similarity, ties by lower row, as ``top_k``.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

CHUNK_CELLS = 1 << 24  # (rows x gallery) similarities per block: 64 MB of float32
EXTRA = 8


def top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the k largest keys, ties broken by lower index.

    Keys must not be NaN (descriptors are finite and normalised, so scores
    are); checking would cost a full pass and a copy of the score matrix.
    """
    q, n = keys.shape
    k = min(k, n)
    if k == 0:
        return np.zeros((q, 0), np.int64)
    if 4 * k >= n:
        return np.argsort(-keys, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(keys, part, axis=1).min(axis=1)
    tied = np.flatnonzero((keys >= kth[:, None]).sum(axis=1) > k)
    for row in tied:  # argpartition picks arbitrarily among equal keys
        candidates = np.flatnonzero(keys[row] >= kth[row])
        part[row] = candidates[np.argsort(-keys[row, candidates], kind="stable")][:k]
    chosen = np.take_along_axis(keys, part, axis=1)
    order = np.lexsort((part, -chosen), axis=1)
    return np.take_along_axis(part, order, axis=1)


def pair_similarities(space: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Cosine similarity of each (rows[i], cols[i]) pair, in float64.

    Computed pair by pair (not read off a block product), so sim(a, b) and
    sim(b, a) are bit-identical and a graph built from them is exactly
    symmetric, whatever blocks the lists came from.
    """
    out = np.empty(len(rows), np.float64)
    for s in range(0, len(rows), chunk):
        a = space[rows[s:s + chunk]].astype(np.float64)
        b = space[cols[s:s + chunk]].astype(np.float64)
        out[s:s + chunk] = np.einsum("ij,ij->i", a, b)
    return out


class Neighbours:
    """Each gallery row's ``length`` nearest *other* rows, best first.

    ``idx`` (N, L) holds rows, -1 where the gallery has fewer than L others;
    ``sims`` (N, L) their similarities (-inf where ``idx`` is -1).
    """

    def __init__(self, space: np.ndarray, length: int):
        self.space = space
        n = len(space)
        self.length = length
        width = min(length, max(n - 1, 0))
        self.idx = np.full((n, length), -1, np.int64)
        self.sims = np.full((n, length), -np.inf, np.float32)
        step = max(1, CHUNK_CELLS // max(n, 1))
        for start in range(0, n, step):
            block = space[start:start + step] @ space.T
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # not its own neighbour
            idx = top_k(block, width)
            self.idx[start:start + step, :width] = idx
            self.sims[start:start + step, :width] = np.take_along_axis(block, idx, axis=1)
        self._reverse: dict[int, sparse.csc_matrix] = {}

    def __len__(self) -> int:
        return len(self.idx)

    def matrix(self, k: int, rows: np.ndarray | None = None, idx: np.ndarray | None = None) -> sparse.csr_matrix:
        """Boolean (N, N) matrix: [a, b] is True when b is among a's first k neighbours."""
        idx = self.idx[:, :k] if idx is None else idx
        rows = np.repeat(np.arange(len(idx)) if rows is None else rows, idx.shape[1])
        cols = idx.ravel()
        ok = cols >= 0
        n = len(self)
        return sparse.csr_matrix((np.ones(int(ok.sum()), bool), (rows[ok], cols[ok])), shape=(n, n))

    def reverse(self, excluded: np.ndarray, k: int) -> np.ndarray:
        """Rows (not excluded) whose first k neighbours include an excluded row: the lists a removal changes."""
        if k not in self._reverse:
            self._reverse[k] = self.matrix(k).tocsc()
        hit = np.unique(self._reverse[k][:, excluded].indices).astype(np.int64)
        return np.setdiff1d(hit, excluded, assume_unique=True)

    def without(self, rows: np.ndarray, excluded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """First k neighbours of ``rows`` in the gallery with ``excluded`` removed: (idx, sims), -1 padded.

        Exactly the lists a gallery rebuilt without those rows would give:
        the remaining entries keep their order and the next ones move up.
        """
        rows = np.asarray(rows, np.int64)
        cand, sims = self.idx[rows], self.sims[rows]
        bad = np.isin(cand, excluded) | (cand < 0)
        order = np.argsort(bad, axis=1, kind="stable")[:, :k]
        idx = np.take_along_axis(cand, order, axis=1)
        out_sims = np.take_along_axis(sims, order, axis=1)
        gone = np.take_along_axis(bad, order, axis=1)
        idx[gone], out_sims[gone] = -1, -np.inf
        n, ex = len(self), np.unique(excluded)
        # A row whose kept list ran out while the gallery still has others: recompute it.
        available = n - 1 - len(ex) + np.isin(rows, ex)
        short = np.flatnonzero((~gone).sum(axis=1) < np.minimum(k, available))
        if len(short):
            block = self.space[rows[short]] @ self.space.T
            block[:, ex] = -np.inf
            block[np.arange(len(short)), rows[short]] = -np.inf
            width = min(k, n)
            top = top_k(block, width)
            top_sims = np.take_along_axis(block, top, axis=1)
            top[~np.isfinite(top_sims)] = -1
            idx[short, :width], out_sims[short, :width] = top, top_sims
        if idx.shape[1] < k:
            pad = k - idx.shape[1]
            idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
            out_sims = np.pad(out_sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        return idx, out_sims

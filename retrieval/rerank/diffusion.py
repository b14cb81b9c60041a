"""Diffusion on the gallery's kNN graph (Iscen, Tolias, Avrithis, Furon, Chum,
"Efficient diffusion on region manifolds", CVPR 2017).

Why: similar images form manifolds that a straight cosine cannot follow: the
back of a shoe is far from the front, but both are close to the side view.
Relevance spread along a graph of mutual nearest neighbours reaches them.

Offline, once per gallery: each item's k nearest others; an edge joins two
items that are in each other's lists (mutual kNN), weighted max(sim, 0)^gamma;
S = D^-1/2 W D^-1/2. Online, for a query: seeds y on its k nearest gallery
items (sim^gamma), and f solves (I - alpha S) f = y, by conjugate gradient
on a whole (N, q) block of queries at once (I - alpha S is symmetric
positive definite for alpha < 1). f is the ranking score.

Leave-one-out (``absent``): the query's own node would be its strongest seed
(similarity 1) and a hub among its class, so each query solves on the graph
of the gallery *without* its excluded rows, exactly as a rebuild would give:
- the excluded nodes lose every edge and get no seed (they are not nodes);
- the rows that listed an excluded row among their k neighbours take the next
  one from their kept lists (``neighbours.Neighbours.without``) and form the
  mutual edges it makes, so the graph's edge set is the rebuilt one; no
  other edge can change, since removing a row only moves later entries up a
  list (an existing mutual pair stays mutual);
- degrees, hence the normalisation, are recomputed on the changed rows.
Per query these changes are a few hundred edge deltas; they are stacked in
one sparse block-diagonal matrix so the batched CG applies S - dS_q to each
column q. Nothing about the query's node survives, so it cannot flatter
itself; what the other edges keep is the full gallery's, which is what a
gallery without that row has too.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .neighbours import EXTRA, Neighbours, pair_similarities, top_k

ALPHA = 0.9
GAMMA = 3.0
TOLERANCE = 1e-6
MAX_ITERATIONS = 200
TIE = 1e-6  # the base similarity's weight in the key: orders what the graph never reaches


def default_k(n: int) -> int:
    """Neighbours per node for an N-item gallery (chosen by measurement: docs/rerank_tuning.md)."""
    return int(np.clip(round(np.sqrt(n)), 5, 50))


def mutual_graph(space: np.ndarray, idx: np.ndarray, gamma: float) -> sparse.csr_matrix:
    """W: an edge (a, b) when each is among the other's listed neighbours, weight max(sim, 0)^gamma."""
    n = len(space)
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols = idx.ravel()
    ok = cols >= 0
    a = sparse.csr_matrix((np.ones(int(ok.sum()), bool), (rows[ok], cols[ok])), shape=(n, n))
    m = a.multiply(a.T).tocoo()
    w = np.power(np.clip(pair_similarities(space, m.row, m.col), 0.0, None), gamma)
    return sparse.csr_matrix((w, (m.row, m.col)), shape=(n, n))


def batched_cg(matvec, y: np.ndarray, tol: float = TOLERANCE, maxiter: int = MAX_ITERATIONS) -> np.ndarray:
    """Solve A x_j = y_j for every column j of y (A symmetric positive definite), all columns at once."""
    x = np.zeros_like(y)
    r = y.copy()
    p = r.copy()
    rs = np.einsum("ij,ij->j", r, r)
    target = tol * tol * rs
    for _ in range(maxiter):
        active = rs > target
        if not active.any():
            break
        ap = matvec(p)
        pap = np.einsum("ij,ij->j", p, ap)
        step = np.where(active & (pap > 0), rs / np.where(pap > 0, pap, 1.0), 0.0)
        x += step * p
        r -= step * ap
        new = np.einsum("ij,ij->j", r, r)
        beta = np.where(active & (rs > 0), new / np.where(rs > 0, rs, 1.0), 0.0)
        p = r + beta * p
        rs = np.where(active, new, rs)
    return x


class Diffusion:
    """The gallery's graph, built once; ``rescore`` diffuses a block of queries on it."""

    def __init__(self, space: np.ndarray, k: int | None = None, alpha: float = ALPHA, gamma: float = GAMMA,
                 neighbours: Neighbours | None = None):
        """``neighbours``: lists already computed for this ``space`` (at least k + EXTRA long), to share them."""
        self.space = space
        self.k = default_k(len(space)) if k is None else k
        self.alpha, self.gamma = alpha, gamma
        fits = neighbours is not None and neighbours.length >= self.k + EXTRA
        self.neighbours = neighbours if fits else Neighbours(space, self.k + EXTRA)
        self.w = mutual_graph(space, self.neighbours.idx[:, :self.k], gamma)
        self.degree = np.asarray(self.w.sum(axis=1)).ravel()

    def _seeds(self, sims: np.ndarray) -> np.ndarray:
        """(N, q): each query's k best gallery similarities ^ gamma (-inf rows are not candidates)."""
        idx = top_k(sims, self.k)
        s = np.take_along_axis(sims, idx, axis=1)
        y = np.zeros(sims.shape[::-1], np.float64)
        cols = np.repeat(np.arange(len(sims)), idx.shape[1])
        ok = np.isfinite(s.ravel())
        y[idx.ravel()[ok], cols[ok]] = np.power(np.clip(s.ravel()[ok], 0.0, None), self.gamma)
        return y

    def _removal(self, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Edge deltas (rows, cols, W - W') of the graph without ``excluded``: removed minus added edges."""
        w = self.w
        rows, cols, vals = [], [], []
        for e in excluded:  # every edge of an excluded node goes, once
            lo, hi = w.indptr[e], w.indptr[e + 1]
            nb, wt = w.indices[lo:hi], w.data[lo:hi]
            keep = ~np.isin(nb, excluded)
            rows += [np.full(hi - lo, e), nb[keep]]
            cols += [nb, np.full(int(keep.sum()), e)]
            vals += [wt, wt[keep]]
        changed = self.neighbours.reverse(excluded, self.k)
        if len(changed):
            new_idx, _ = self.neighbours.without(changed, excluded, self.k)
            old = self.neighbours.idx[changed, :self.k]
            lists = {int(a): set(row[row >= 0].tolist()) for a, row in zip(changed, new_idx)}
            pairs = set()
            for a, row, before in zip(changed, new_idx, old):
                for b in set(row[row >= 0].tolist()) - set(before.tolist()):
                    theirs = lists.get(b)
                    listed = (a in theirs) if theirs is not None else (a in self.neighbours.idx[b, :self.k])
                    if listed:
                        pairs.add((min(int(a), b), max(int(a), b)))
            if pairs:
                p = np.array(sorted(pairs), np.int64)
                wt = np.power(np.clip(pair_similarities(self.space, p[:, 0], p[:, 1]), 0.0, None), self.gamma)
                rows += [p[:, 0], p[:, 1]]
                cols += [p[:, 1], p[:, 0]]
                vals += [-wt, -wt]
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)

    def diffuse(self, sims: np.ndarray, exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """f (q, N) for query similarities ``sims`` (q, N); ``exclude[i]``: rows absent for query i."""
        q, n = sims.shape
        sims = np.array(sims, np.float64)
        degree = np.repeat(self.degree[:, None], q, axis=1)
        delta = None
        if exclude is not None:
            rows, cols, vals = [], [], []
            for j, ex in enumerate(exclude):
                ex = np.unique(np.asarray(ex, np.int64))
                if not len(ex):
                    continue
                sims[j, ex] = -np.inf
                r, c, v = self._removal(ex)
                np.subtract.at(degree[:, j], r, v)
                degree[ex, j] = 0.0
                rows.append(r * q + j)
                cols.append(c * q + j)
                vals.append(v)
            if rows:
                delta = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                          shape=(n * q, n * q))
        dinv = np.where(degree > 1e-12, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
        w, alpha = self.w, self.alpha

        def matvec(f: np.ndarray) -> np.ndarray:
            x = dinv * f
            wx = w @ x
            if delta is not None:
                wx -= (delta @ x.ravel()).reshape(n, q)
            return f - alpha * dinv * wx

        return batched_cg(matvec, self._seeds(sims)).T

    def rescore(self, sims: np.ndarray, exclude: list[np.ndarray] | None = None,
                queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(keys, scores) (q, N): f scaled to [0, 1] per query (the score shown), plus a tiny tie-break by sims.

        ``sims`` is -inf where a row is not a candidate (excluded, or outside
        an approximate index's proposals): such a row is no seed, and is
        ranked only if the diffusion reaches it (``queries`` then gives its
        similarity for the tie-break); otherwise its key is -inf.
        """
        f = self.diffuse(sims, exclude)
        top = f.max(axis=1, keepdims=True) if f.size else np.ones((len(f), 1))
        scores = f / np.where(top > 0, top, 1.0)
        base = np.array(sims, np.float64)
        fill = ~np.isfinite(base) & (f > 0)
        if queries is not None and fill.any():
            for j in np.flatnonzero(fill.any(axis=1)):
                rows = np.flatnonzero(fill[j])
                base[j, rows] = self.space[rows] @ queries[j]
        return scores + TIE * base, scores.astype(np.float32)

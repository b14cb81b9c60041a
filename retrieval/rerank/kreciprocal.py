"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking person
re-identification with k-reciprocal encoding", CVPR 2017).

Why: a true match tends to be a *reciprocal* neighbour (each is among the
other's k nearest), while a false one that happens to be near the query
rarely is. Each item is encoded by its k-reciprocal set (expanded by the
reciprocal sets of its members when they overlap it by more than 2/3),
weighted by exp(-squared distance); two items are then compared by the
Jaccard distance of their encodings, which counts shared neighbourhoods
rather than one similarity. The final distance mixes it with the original:
d = (1 - lambda) d_J + lambda d_orig.

Online, never a (q + N)^2 matrix: the gallery's lists, reciprocal sets and
encodings V (sparse rows, locally expanded over k2 neighbours) are built
once from the gallery alone. For a query: its k1 nearest items; "the query
is among item g's k1 nearest" is the test sim(q, g) > sim of g's k1-th
neighbour (kept per item), so the query's reciprocal set and encoding V_q
come from one row of similarities. Sum(min(V_q, V_g)) is gathered through
the columns of V that V_q touches (only shared support contributes), and
Sum(max) = |V_q|_1 + |V_g|_1 - Sum(min). The gallery's encodings do not
get a dimension for the query (approximation of the online form: in the
batch form a gallery item may gain the query as a reciprocal neighbour);
the query's own dimension is kept in V_q, as in the paper, and only adds to
|V_q|_1.

Leave-one-out (``absent``): the query's own row would be in the query's
reciprocal set at similarity 1 and a dimension of every encoding around it,
so shared support with its class would be flattered. For each query the
gallery state is that of the gallery without the excluded rows, from the
kept neighbour lists (``Neighbours.without``: no new similarity pass): the
lists that held an excluded row move up, and the reciprocal sets, expanded
sets and encodings are recomputed for just the rows they reach (``without``
says which); the excluded rows are neither members nor dimensions anywhere.
That is exactly the gallery-side state of a gallery rebuilt without them
(the tests compare the two), at O(N k1) sparse bookkeeping plus the changed
rows' work per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .neighbours import EXTRA, Neighbours, pair_similarities, top_k

LAMBDA = 0.3
TIE = 1e-6


def default_params(n: int) -> dict:
    """k1, k2 for an N-item gallery (chosen by measurement: docs/rerank_tuning.md)."""
    k1 = int(np.clip(round(np.sqrt(n)), 4, 30))
    return {"k1": k1, "k2": int(np.clip(k1 // 3, 1, 6))}


def _indicator(idx: np.ndarray, n: int, with_self: np.ndarray | None) -> sparse.csr_matrix:
    """(n, n) 0/1 matrix of the lists ``idx`` (-1: none), plus the diagonal where ``with_self``."""
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    cols = idx.ravel()
    ok = cols >= 0
    rows, cols = rows[ok], cols[ok]
    if with_self is not None:
        own = np.flatnonzero(with_self)
        rows, cols = np.concatenate([rows, own]), np.concatenate([cols, own])
    return sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))


def _row_normalise(m: sparse.csr_matrix) -> sparse.csr_matrix:
    total = np.asarray(m.sum(axis=1)).ravel()
    return (sparse.diags(np.where(total > 0, 1.0 / np.where(total > 0, total, 1.0), 0.0)) @ m).tocsr()


def _rows_of(m: sparse.csr_matrix, cols: np.ndarray) -> np.ndarray:
    """Rows of m with an entry in any of ``cols`` (m's transpose, by column lookups)."""
    return np.unique(m.T.tocsr()[cols].indices).astype(np.int64) if len(cols) else cols


@dataclass
class Encoding:
    """The gallery-side state: lists, reciprocal sets, thresholds, encodings V and their expanded form."""

    idx: np.ndarray  # (N, max(k1, k2 - 1)) neighbour lists, -1 padded
    sims: np.ndarray  # their similarities
    near: sparse.csr_matrix  # k1 lists, itself included
    recip: sparse.csr_matrix  # k1-reciprocal sets
    half: sparse.csr_matrix  # reciprocal sets at round(k1 / 2), itself included
    k2_lists: sparse.csr_matrix  # k2 - 1 lists, itself included
    v: sparse.csr_matrix  # encodings (rows sum to 1)
    expanded: sparse.csr_matrix  # encodings averaged over k2 neighbours
    columns: sparse.csc_matrix  # the full gallery's ``expanded`` by column, for lookups
    changed: np.ndarray | None = None  # leave-one-out: rows of ``expanded`` that differ from ``columns``
    excluded: np.ndarray | None = None  # leave-one-out: rows absent

    def __post_init__(self):
        self.v_norm = np.asarray(self.expanded.sum(axis=1)).ravel()  # |V_g|_1 after expansion

    def thresholds(self, k1: int) -> None:
        """Similarity of each item's k1-th and round(k1 / 2)-th neighbour: "is a new item in its list?"."""
        self.kth = np.asarray(self.sims[:, k1 - 1], np.float64)
        self.kth_half = np.asarray(self.sims[:, max(1, int(round(k1 / 2))) - 1], np.float64)


def _pair_sims(space: np.ndarray, rows: np.ndarray, cols: np.ndarray, known: tuple | None) -> np.ndarray:
    """Similarities of pairs, read from ``known`` (sorted pair keys, sims) where it holds them."""
    if known is None:
        return pair_similarities(space, rows, cols)
    keys, sims = known
    want = rows * len(space) + cols
    at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    found = keys[at] == want
    out = np.where(found, sims[at], 0.0)
    if not found.all():
        out[~found] = pair_similarities(space, rows[~found], cols[~found])
    return out


def _star_rows(space: np.ndarray, recip, half, rows: np.ndarray, known: tuple | None = None) -> sparse.csr_matrix:
    """V for ``rows``: the k-reciprocal set, expanded by members' half sets overlapping it by > 2/3, weighted."""
    n = recip.shape[1]
    r = recip[rows]
    overlap = (r @ half.T).multiply(r).tocoo()  # [g, x] = |R(g) & Rh(x)| for x in R(g)
    size_h = np.asarray(half.sum(axis=1)).ravel()
    good = overlap.data > (2.0 / 3.0) * size_h[overlap.col]
    q = sparse.csr_matrix((np.ones(int(good.sum()), np.float32), (overlap.row[good], overlap.col[good])),
                          shape=(len(rows), n))
    star = ((r + q @ half) > 0).tocoo()
    sims = _pair_sims(space, rows[star.row], star.col, known)
    v = _row_normalise(sparse.csr_matrix((np.exp(2.0 * sims - 2.0), (star.row, star.col)), shape=(len(rows), n)))
    v.pair_sims = (rows[star.row] * len(space) + star.col, sims)  # exp(-|a - b|^2) on unit vectors, by pair
    return v


def _structure(idx: np.ndarray, k1: int, k2: int, present: np.ndarray):
    n = len(idx)
    half = max(1, int(round(k1 / 2)))
    near = _indicator(idx[:, :k1], n, present)
    nh = _indicator(idx[:, :half], n, present)
    return (near, near.multiply(near.T).tocsr(), nh.multiply(nh.T).tocsr(),
            _indicator(idx[:, :max(k2 - 1, 0)], n, present))


def encode(space: np.ndarray, idx: np.ndarray, sims: np.ndarray, k1: int, k2: int) -> Encoding:
    """Build the gallery encodings from neighbour lists ``idx``/``sims`` (N, >= max(k1, k2 - 1))."""
    present = np.ones(len(space), bool)
    near, recip, half, k2_lists = _structure(idx, k1, k2, present)
    v = _star_rows(space, recip, half, np.arange(len(space)))
    keys, pair = v.pair_sims
    order = np.argsort(keys)
    expanded = _row_normalise(k2_lists) @ v
    enc = Encoding(idx, sims, near, recip, half, k2_lists, v, expanded.tocsr(), expanded.tocsc())
    enc.known = (keys[order], pair[order])
    enc.thresholds(k1)
    return enc


def without(space: np.ndarray, neighbours: Neighbours, full: Encoding, excluded: np.ndarray, k1: int,
            k2: int) -> Encoding:
    """The encodings of the gallery without ``excluded``, recomputing only the rows that change.

    A removal changes the lists that held an excluded row (C); the reciprocal
    sets of those rows and of rows listing them (C_R); the expanded sets of
    rows listing a C_R row (C_*); and the k2-averaged encodings of rows
    listing a C_* row. Each set is found by column lookups; the rest is the
    full gallery's, which is exactly the rebuilt gallery's there.
    """
    n, width = len(space), full.idx.shape[1]
    lists = neighbours.reverse(excluded, width)
    idx, sims = full.idx.copy(), full.sims.copy()
    if len(lists):
        idx[lists], sims[lists] = neighbours.without(lists, excluded, width)
    idx[excluded], sims[excluded] = -1, -np.inf
    present = np.ones(n, bool)
    present[excluded] = False
    near, recip, half, k2_lists = _structure(idx, k1, k2, present)
    keep = lambda rows: np.setdiff1d(rows, excluded)  # noqa: E731
    c_r = keep(np.union1d(lists, _rows_of(near, lists)))
    c_star = keep(np.union1d(c_r, _rows_of(near, c_r)))
    drop = sparse.diags(np.isin(np.arange(n), np.union1d(c_star, excluded), invert=True).astype(np.float32))
    v = (drop @ full.v).tocsr()
    if len(c_star):
        patch = _star_rows(space, recip, half, c_star, full.known).tocoo()
        v = v + sparse.csr_matrix((patch.data, (c_star[patch.row], patch.col)), shape=(n, n))
    c_v = keep(np.union1d(lists, _rows_of(k2_lists, c_star)))
    expanded = (_row_normalise(k2_lists[c_v]) @ v).tocsr() if len(c_v) else full.expanded[:0]
    enc = Encoding(idx, sims, near, recip, half, k2_lists, v.tocsr(), expanded, full.columns, c_v, excluded)
    enc.thresholds(k1)
    enc.v_norm = full.v_norm.copy()
    enc.v_norm[c_v] = np.asarray(expanded.sum(axis=1)).ravel()
    enc.v_norm[excluded] = 0.0
    return enc


class KReciprocal:
    """Gallery lists and encodings, built once; ``rescore`` encodes queries online."""

    def __init__(self, space: np.ndarray, k1: int | None = None, k2: int | None = None, lam: float = LAMBDA,
                 neighbours: Neighbours | None = None):
        """``neighbours``: lists already computed for this ``space`` (at least k1 + EXTRA long), to share them."""
        defaults = default_params(len(space))
        self.k1 = defaults["k1"] if k1 is None else k1
        self.k2 = defaults["k2"] if k2 is None else k2
        self.lam, self.space = lam, space
        width = max(self.k1, self.k2 - 1)
        fits = neighbours is not None and neighbours.length >= width + EXTRA
        self.neighbours = neighbours if fits else Neighbours(space, width + EXTRA)
        self.encoding = encode(space, self.neighbours.idx[:, :width], self.neighbours.sims[:, :width],
                               self.k1, self.k2)

    def _without(self, excluded: np.ndarray) -> Encoding:
        """The encodings of the gallery without ``excluded`` (exact; no similarity pass)."""
        return without(self.space, self.neighbours, self.encoding, excluded, self.k1, self.k2)

    def _distance(self, s: np.ndarray, enc: Encoding) -> tuple[np.ndarray, np.ndarray]:
        """(Jaccard distance to every gallery item, rows it touches) for one query's similarities ``s``."""
        n, k1 = len(s), self.k1
        half = max(1, int(round(k1 / 2)))
        near = top_k(s[None], k1)[0]
        near = near[np.isfinite(s[near])]
        recip = near[s[near] > enc.kth[near]]
        recip_half = set(near[:half][s[near[:half]] > enc.kth_half[near[:half]]].tolist())
        members = set(recip.tolist())
        star = set(members)
        for x in recip.tolist():
            cand = enc.half.indices[enc.half.indptr[x]:enc.half.indptr[x + 1]]
            with_query = x in recip_half  # the query is in x's half set too
            shared = len(members.intersection(cand.tolist())) + with_query
            if shared > (2.0 / 3.0) * (len(cand) + with_query):
                star.update(cand.tolist())
        star_rows = np.array(sorted(star), np.int64)
        w = np.exp(2.0 * s[star_rows] - 2.0)
        total = w.sum() + 1.0  # the query's own dimension, exp(0)
        vq = np.zeros(n)
        vq[star_rows] = w / total
        own = 1.0 / total
        expand = near[:max(self.k2 - 1, 0)]
        if len(expand):  # local query expansion over the query's nearest items
            vq = vq + np.asarray(enc.v[expand].sum(axis=0)).ravel()
            vq, own = vq / (1 + len(expand)), own / (1 + len(expand))
        support = np.flatnonzero(vq)
        cols = enc.columns[:, support].tocoo()
        mins = np.minimum(cols.data, vq[support][cols.col])
        smin = np.bincount(cols.row, mins, minlength=n)
        touched = np.unique(cols.row)
        if enc.changed is not None:  # leave-one-out: absent rows, and rows whose codes differ
            smin[enc.excluded] = 0.0
            if len(enc.changed):
                own_min = enc.expanded.copy()
                own_min.data = np.minimum(own_min.data, vq[own_min.indices])
                smin[enc.changed] = np.asarray(own_min.sum(axis=1)).ravel()
                touched = np.union1d(touched, enc.changed[smin[enc.changed] > 0])
        smax = vq.sum() + own + enc.v_norm - smin
        return 1.0 - smin / np.where(smax > 0, smax, 1.0), touched

    def rescore(self, sims: np.ndarray, exclude: list[np.ndarray] | None = None,
                queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(keys, scores) (q, N): keys -d plus a tiny tie-break by similarity; the score shown is 1 - d.

        ``sims`` is -inf where a row is not a candidate (excluded, or outside
        an approximate index's proposals); ``queries`` fills in the similarity
        of a row the encodings reach but the candidates did not hold.
        """
        sims = np.array(sims, np.float64)
        keys = np.full(sims.shape, -np.inf)
        scores = np.zeros(sims.shape, np.float32)
        for j in range(len(sims)):
            ex = np.unique(np.asarray(exclude[j], np.int64)) if exclude is not None else np.zeros(0, np.int64)
            enc = self._without(ex) if len(ex) else self.encoding
            s = sims[j]
            s[ex] = -np.inf
            d_j, touched = self._distance(s, enc)
            missing = touched[~np.isfinite(s[touched])]
            missing = np.setdiff1d(missing, ex)
            if len(missing) and queries is not None:
                s[missing] = self.space[missing] @ queries[j]
            ok = np.isfinite(s)
            d = (1.0 - self.lam) * d_j[ok] + self.lam * 0.5 * (1.0 - s[ok])
            keys[j, ok] = -d + TIE * s[ok]
            scores[j, ok] = 1.0 - d
        return keys, scores

"""Exact top-k search with a chosen metric, plus optional re-ranking.

Why exact: up to a few hundred thousand vectors, one matrix product and an
``argpartition`` answer a query in milliseconds, with no index to build or
keep in sync. Results are deterministic: equal scores are ordered by gallery
row, so the same query always returns the same list.

The processing order is: L2-normalised descriptors -> optional PCA-whitening
(+ L2) -> optional database-side augmentation (DBA) of the gallery -> optional
alpha query expansion (aQE) of the query -> the metric (Mahalanobis in its
whitened space). Graph re-rankers (diffusion, k-reciprocal) instead re-score
the query's cosine similarities in the post-processed space, and their keys
order the results (the metric's own order no longer matters to them).
The re-rankers live in ``retrieval/rerank/``, one file each.

``exclude[i]`` lists gallery rows query i must not return. With
``absent=True`` (the default, and what leave-one-out needs) they are also
absent from the gallery for that query: no neighbour for aQE, no share in
any DBA vector, no node of a graph. ``absent=False`` only hides them, which
is the naive leave-one-out that lets a query's own row help its ranking; it
is kept to measure that effect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .distances import METRICS, Metric, squared_norms
from .rerank import RERANKS, Lazy, Rerank  # noqa: F401  (Rerank, RERANKS: the registry, re-exported)
from .rerank.neighbours import top_k
from .whitening import Whitening, fit, fit_whitening

# How a caller keeps learned transforms: ``fitted(kind, fit)`` returns a
# cached ``Whitening`` for ``kind`` or the result of ``fit()``.
Fitted = Callable[[str, Callable[[], Whitening]], Whitening]

_CHUNK_CELLS = 1 << 24  # (queries x gallery rows) scores per block: 64 MB of float32
_QUERY_CHUNK = 4096
_MIN_BLOCK = 4096

__all__ = ["RERANKS", "Ranker", "Ranking", "Rerank", "build_ranker", "top_k"]


@dataclass(frozen=True)
class Ranking:
    indices: np.ndarray  # (q, k) gallery rows, best first
    scores: np.ndarray  # (q, k) the metric's own values (similarity or distance), or the graph re-ranker's score
    timings: dict[str, float] = field(default_factory=dict)  # rerank_ms; graph_build_ms when this call built it


def _metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}") from None


def _fit_afresh(kind: str, fit: Callable[[], Whitening]) -> Whitening:
    """``build_ranker``'s default ``fitted``: nothing is kept between rankers."""
    return fit()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class Ranker:
    """A gallery prepared for one metric and re-ranking choice."""

    def __init__(self, gallery: np.ndarray, metric: str = "cosine", rerank: str = "none",
                 whitening: Whitening | None = None, mahalanobis: Whitening | None = None,
                 ann=None, ids: np.ndarray | None = None, *, graph: Lazy | None = None):
        """``ann`` (an ``ann.AnnIndex`` keyed by ``ids``, one per gallery row, sorted)
        proposes candidates that are then scored exactly; without it, search is exact.

        ``graph`` is a caller-kept ``Lazy`` for a graph re-ranker's state (it
        must have been made for this same post-processed gallery); by default
        the ranker makes its own, built on first use.
        """
        self.ann, self.ids = ann, ids
        if rerank not in RERANKS:
            raise ValueError(f"unknown re-ranking {rerank!r}: choose one of {', '.join(RERANKS)}")
        self.metric = _metric(metric)
        self.rerank = RERANKS[rerank]
        self.whitening = whitening
        space = whitening.apply(gallery) if whitening is not None else np.asarray(gallery, np.float32)
        self.base = space  # the post-processed gallery: graphs and DBA are built on it
        self.dba = self.rerank.augment_gallery(space) if self.rerank.augment_gallery is not None else None
        self.space = self.dba.space if self.dba is not None else space  # where aQE looks for neighbours
        self.graph = None
        if self.rerank.graph is not None:
            self.graph = graph if graph is not None else Lazy(lambda: self.rerank.graph(space))
        if self.metric.whitened:
            if mahalanobis is None:
                raise ValueError("the Mahalanobis metric needs a covariance transform fitted on the gallery")
            self.mahalanobis = mahalanobis
            self.metric_gallery = mahalanobis.apply(self.space, normalize=False)
        else:
            self.mahalanobis = None
            self.metric_gallery = self.space
        self._g_sq = squared_norms(self.metric_gallery) if self.metric.takes_norms else None

    def __len__(self) -> int:
        return len(self.metric_gallery)

    # -- the metric path (none, aQE, DBA) ---------------------------------------
    def _post(self, queries: np.ndarray) -> np.ndarray:
        return self.whitening.apply(queries) if self.whitening is not None else np.asarray(queries, np.float32)

    def _prepare(self, queries: np.ndarray, exclude: list[np.ndarray] | None, neighbours: np.ndarray | None = None,
                 timings: dict | None = None) -> np.ndarray:
        """Queries in the metric's space: whitened, expanded (aQE), Mahalanobis-transformed.

        aQE looks for neighbours in ``neighbours`` (default: the whole gallery).
        """
        q = self._post(queries)
        if self.rerank.expand_query is not None:
            started = time.perf_counter()
            q = self.rerank.expand_query(q, self.space if neighbours is None else neighbours, exclude=exclude)
            if timings is not None:
                timings["rerank_ms"] = timings.get("rerank_ms", 0.0) + _ms(started)
        if self.mahalanobis is not None:
            q = self.mahalanobis.apply(q, normalize=False)
        return q

    def _score_vectors(self, q: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Natural scores of q against vectors already in the metric's space."""
        if self.metric.takes_norms:
            return self.metric.score(q, vectors, squared_norms(vectors))
        return self.metric.score(q, vectors)

    def _score(self, q: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
        """Natural scores and higher-is-better keys against the selected gallery rows."""
        block = self.metric_gallery[rows]
        if self._g_sq is not None:
            scores = self.metric.score(q, block, self._g_sq[rows])
        else:
            scores = self.metric.score(q, block)
        return scores, (scores if self.metric.higher_is_better else -scores)

    def _patches(self, exclude: list[np.ndarray] | None, absent: bool, timings: dict | None = None):
        """Per query, the DBA rows that differ once its excluded rows are absent: (rows, metric-space vectors)."""
        if self.dba is None or exclude is None or not absent:
            return None
        started = time.perf_counter()
        patches = []
        for skip in exclude:
            rows, vectors = self.dba.absent(np.asarray(skip, np.int64))
            if self.mahalanobis is not None and len(rows):
                vectors = self.mahalanobis.apply(vectors, normalize=False)
            patches.append((rows, vectors))
        if timings is not None:
            timings["rerank_ms"] = timings.get("rerank_ms", 0.0) + _ms(started)
        return patches

    def _block_keys(self, q: np.ndarray, lo: int, hi: int, exclude: list[np.ndarray] | None, patches=None):
        """``_score`` on rows lo..hi, DBA patches applied, each query's excluded rows pushed to the end."""
        scores, keys = self._score(q, slice(lo, hi))
        if patches is not None:
            scores = np.array(scores)
            for row, (rows, vectors) in enumerate(patches):
                inside = (rows >= lo) & (rows < hi)
                if inside.any():
                    scores[row, rows[inside] - lo] = self._score_vectors(q[row:row + 1], vectors[inside])[0]
            keys = scores if self.metric.higher_is_better else -scores
        if exclude is not None:
            keys = np.array(keys, dtype=np.float64)
            for row, skip in enumerate(exclude):
                inside = skip[(skip >= lo) & (skip < hi)] - lo
                keys[row, inside] = -np.inf
        return scores, keys

    # -- the graph path (diffusion, k-reciprocal) --------------------------------
    def _graph_keys(self, queries: np.ndarray, exclude: list[np.ndarray] | None, absent: bool, timings: dict,
                    rows: list[np.ndarray] | None = None):
        """(keys, scores) (q, N) from the graph re-ranker; ``rows[i]``: query i's candidates (default: all)."""
        graph, built_ms = self.graph.get()
        if built_ms is not None:
            timings["graph_build_ms"] = built_ms
        q = self._post(queries)
        if rows is None:
            sims = q @ self.base.T
        else:
            sims = np.full((len(q), len(self)), -np.inf, np.float32)
            for i, r in enumerate(rows):
                sims[i, r] = q[i] @ self.base[r].T
        started = time.perf_counter()
        keys, scores = graph.rescore(sims, exclude if absent else None, queries=q)
        if exclude is not None:
            keys = np.array(keys, np.float64)
            for i, skip in enumerate(exclude):
                keys[i, skip] = -np.inf
        timings["rerank_ms"] = timings.get("rerank_ms", 0.0) + _ms(started)
        return keys, scores

    # -- public ------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None, *,
               absent: bool = True) -> Ranking:
        """Top-k for each query row; ``exclude[i]`` lists rows query i must not return.

        The gallery is walked in blocks, each read once for a whole chunk of
        queries, keeping a running top-k: memory stays bounded and a batch
        of queries costs one pass over the gallery, not one per chunk. A
        graph re-ranker needs every similarity of a query, so it takes
        queries in chunks of a bounded (queries x gallery) size instead.
        """
        queries = np.atleast_2d(queries)
        n = len(self)
        k = min(k, n)
        if exclude is not None:  # never fill a list with excluded rows
            k = min(k, n - max((len(np.unique(skip)) for skip in exclude), default=0))
        timings: dict[str, float] = {}
        if self.ann is not None:
            ranking = self._search_candidates(queries, k, exclude, absent, timings)
        elif self.graph is not None:
            ranking = self._search_graph(queries, k, exclude, absent, timings)
        else:
            ranking = self._search_blocks(queries, k, exclude, absent, timings)
        timings = {key: round(value, 3) for key, value in timings.items()}
        timings.setdefault("rerank_ms", 0.0)
        return Ranking(ranking[0], ranking[1], timings)

    def _search_graph(self, queries, k, exclude, absent, timings):
        step = max(1, min(_QUERY_CHUNK, _CHUNK_CELLS // max(len(self), 1)))
        indices, scores = [], []
        for qs in range(0, len(queries), step):
            ex = exclude[qs:qs + step] if exclude is not None else None
            keys, s = self._graph_keys(queries[qs:qs + step], ex, absent, timings)
            idx = top_k(keys, k)
            indices.append(idx)
            scores.append(np.take_along_axis(s, idx, axis=1).astype(np.float32))
        return np.concatenate(indices), np.concatenate(scores)

    def _search_blocks(self, queries, k, exclude, absent, timings):
        n = len(self)
        indices, scores = [], []
        for qs in range(0, len(queries), _QUERY_CHUNK):
            ex = exclude[qs:qs + _QUERY_CHUNK] if exclude is not None else None
            q = self._prepare(queries[qs:qs + _QUERY_CHUNK], ex if absent else None, timings=timings)
            patches = self._patches(ex, absent, timings)
            rows = max(_MIN_BLOCK, _CHUNK_CELLS // max(len(q), 1))
            best_keys = best_idx = best_scores = None
            for lo in range(0, n, rows):
                s, keys = self._block_keys(q, lo, min(n, lo + rows), ex, patches)
                idx = top_k(keys, k)
                cand_keys = np.take_along_axis(keys, idx, axis=1)
                cand_scores = np.take_along_axis(s, idx, axis=1)
                idx = idx + lo
                if best_idx is not None:
                    cand_keys = np.concatenate([best_keys, cand_keys], axis=1)
                    cand_scores = np.concatenate([best_scores, cand_scores], axis=1)
                    idx = np.concatenate([best_idx, idx], axis=1)
                    order = np.lexsort((idx, -cand_keys), axis=1)[:, :k]  # score, then lower row, wins
                    cand_keys = np.take_along_axis(cand_keys, order, axis=1)
                    cand_scores = np.take_along_axis(cand_scores, order, axis=1)
                    idx = np.take_along_axis(idx, order, axis=1)
                best_keys, best_scores, best_idx = cand_keys, cand_scores, idx
            indices.append(best_idx)
            scores.append(best_scores.astype(np.float32))
        return np.concatenate(indices), np.concatenate(scores)

    def _search_candidates(self, queries, k, exclude, absent, timings):
        """Approximate: the index proposes rows from the raw descriptors, the full
        pipeline (post-processing, aQE among the candidates, metric or graph) scores them.
        A graph re-ranker seeds from the candidates and may add rows its graph reaches."""
        from .ann import CANDIDATES_PER_RESULT

        proposed = self.ann.search(queries, max(200, k * CANDIDATES_PER_RESULT))
        indices = np.zeros((len(queries), k), np.int64)
        scores = np.zeros((len(queries), k), np.float32)
        for i, found in enumerate(proposed):
            rows = np.searchsorted(self.ids, found[found >= 0])
            ex = [np.asarray(exclude[i], np.int64)] if exclude is not None else None
            if ex is not None:
                rows = rows[~np.isin(rows, ex[0])]
            if self.graph is not None:
                keys, s = self._graph_keys(queries[i:i + 1], ex, absent, timings, rows=[rows])
                rows = np.flatnonzero(np.isfinite(keys[0]))
                s, keys = s[:, rows], keys[:, rows]
            else:
                q = self._prepare(queries[i:i + 1], None, neighbours=self.space[rows], timings=timings)
                s, keys = self._score(q, rows)
                patches = self._patches(ex, absent, timings)
                if patches:
                    s, (patch_rows, vectors) = np.array(s), patches[0]
                    hit = np.isin(rows, patch_rows)
                    if hit.any():
                        where = np.searchsorted(patch_rows, rows[hit])
                        s[0, hit] = self._score_vectors(q, vectors[where])[0]
                    keys = s if self.metric.higher_is_better else -s
            order = np.lexsort((rows, -keys[0]))[:k]
            indices[i, : len(order)], scores[i, : len(order)] = rows[order], s[0, order]
        return indices, scores

    def keys(self, queries: np.ndarray, exclude: list[np.ndarray] | None = None, *, absent: bool = True) -> np.ndarray:
        """Higher-is-better keys against every gallery row (for evaluation)."""
        queries = np.atleast_2d(queries)
        if self.graph is not None:
            return self._graph_keys(queries, exclude, absent, {})[0]
        q = self._prepare(queries, exclude if absent else None)
        return self._block_keys(q, 0, len(self), exclude, self._patches(exclude, absent))[1]

    def full_order(self, queries: np.ndarray, exclude: list[np.ndarray] | None = None, *,
                   absent: bool = True) -> np.ndarray:
        """Every gallery row, best first, per query (for evaluation)."""
        return np.argsort(-self.keys(queries, exclude, absent=absent), axis=1, kind="stable")


def build_ranker(gallery: np.ndarray, metric: str = "cosine", rerank: str = "none", whiten: str = "none", *,
                 fitted: Fitted | None = None, ann=None, ids: np.ndarray | None = None,
                 graph: Lazy | None = None) -> Ranker:
    """A ranker with every transform learned on this gallery.

    The one place a search configuration becomes a ranker, for the service,
    evaluation and benchmarks alike. Learning a transform costs a covariance
    (PCA, Mahalanobis), so a caller that searches the same gallery again
    passes ``fitted`` to keep them: it is asked for the post-processing as
    ``kind == whiten`` and for the Mahalanobis transform as
    ``kind == f"mahalanobis+{whiten}"`` (it is learned after post-processing).
    ``ann``, ``ids`` and ``graph`` go to the ``Ranker``.
    """
    fitted = fitted or _fit_afresh
    whitening = fitted(whiten, lambda: fit(whiten, gallery)) if whiten != "none" else None
    mahalanobis = None
    if _metric(metric).whitened:
        post = whitening.apply if whitening is not None else np.asarray
        mahalanobis = fitted(f"mahalanobis+{whiten}", lambda: fit_whitening(post(gallery)))
    return Ranker(gallery, metric, rerank, whitening, mahalanobis, ann=ann, ids=ids, graph=graph)

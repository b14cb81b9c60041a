"""Exact top-k search with a chosen metric, plus optional re-ranking.

Why exact: up to a few hundred thousand vectors, one matrix product and an
``argpartition`` answer a query in milliseconds, with no index to build or
keep in sync. Results are deterministic: equal scores are ordered by gallery
row, so the same query always returns the same list.

The processing order is: L2-normalised descriptors -> optional PCA-whitening
(+ L2) -> optional database-side augmentation (DBA) of the gallery -> optional
alpha query expansion (aQE) of the query -> the metric (Mahalanobis in its
whitened space). Neighbours for aQE and DBA are found by cosine similarity,
which is what both methods were defined with (Radenovic et al., 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .distances import METRICS, Metric, squared_norms
from .pooling import l2_normalize
from .whitening import Whitening, fit, fit_whitening

# How a caller keeps learned transforms: ``fitted(kind, fit)`` returns a
# cached ``Whitening`` for ``kind`` or the result of ``fit()``.
Fitted = Callable[[str, Callable[[], Whitening]], Whitening]

QE_NEIGHBOURS = 2
DBA_NEIGHBOURS = 2
ALPHA = 3.0
_CHUNK_CELLS = 1 << 24  # (queries x gallery rows) scores per block: 64 MB of float32
_QUERY_CHUNK = 4096
_MIN_BLOCK = 4096


@dataclass(frozen=True)
class Ranking:
    indices: np.ndarray  # (q, k) gallery rows, best first
    scores: np.ndarray  # (q, k) the metric's own values (similarity or distance)


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


def _weights(similarities: np.ndarray, alpha: float) -> np.ndarray:
    return np.power(np.clip(similarities, 0.0, None), alpha)


def alpha_query_expansion(queries: np.ndarray, gallery: np.ndarray, n: int = QE_NEIGHBOURS, alpha: float = ALPHA,
                          exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Each query plus its n nearest gallery vectors, weighted by similarity^alpha."""
    sims = queries @ gallery.T
    if exclude is not None:
        for row, skip in enumerate(exclude):
            sims[row, skip] = -np.inf
    idx = top_k(sims, n)
    w = _weights(np.take_along_axis(sims, idx, axis=1), alpha)
    expanded = queries + np.einsum("qk,qkd->qd", w, gallery[idx])
    return l2_normalize(expanded)


def database_augmentation(gallery: np.ndarray, n: int = DBA_NEIGHBOURS, alpha: float = ALPHA) -> np.ndarray:
    """Replace each gallery vector by a weighted mean of itself and its n neighbours.

    Costs one (N x N) similarity pass, done in chunks; cache the result.
    """
    out = np.empty_like(gallery)
    step = max(1, _CHUNK_CELLS // max(len(gallery), 1))
    for start in range(0, len(gallery), step):
        block = gallery[start:start + step]
        sims = block @ gallery.T
        idx = top_k(sims, n + 1)  # itself first, at similarity 1
        w = _weights(np.take_along_axis(sims, idx, axis=1), alpha)
        out[start:start + step] = np.einsum("qk,qkd->qd", w, gallery[idx])
    return l2_normalize(out)


@dataclass(frozen=True)
class Rerank:
    """A re-ranking, by where it acts: on the gallery once, or on every query.

    ``augment_gallery(space)`` replaces the gallery (costly: done when the
    ranker is built); ``expand_query(queries, neighbours, exclude=...)``
    rewrites each query from its neighbours among ``neighbours``.
    """

    name: str
    augment_gallery: Callable[[np.ndarray], np.ndarray] | None = None
    expand_query: Callable[..., np.ndarray] | None = None


# Every re-ranking a search can ask for, by name: adding one is adding an
# entry here (``config.RERANKS``, the CLI and the app list these keys).
RERANKS: Mapping[str, Rerank] = MappingProxyType({
    r.name: r
    for r in (
        Rerank("none"),
        Rerank("qe", expand_query=alpha_query_expansion),
        Rerank("dba", augment_gallery=database_augmentation),
    )
})


def _metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}") from None


def _fit_afresh(kind: str, fit: Callable[[], Whitening]) -> Whitening:
    """``build_ranker``'s default ``fitted``: nothing is kept between rankers."""
    return fit()


class Ranker:
    """A gallery prepared for one metric and re-ranking choice."""

    def __init__(self, gallery: np.ndarray, metric: str = "cosine", rerank: str = "none",
                 whitening: Whitening | None = None, mahalanobis: Whitening | None = None,
                 dba_gallery: np.ndarray | None = None, ann=None, ids: np.ndarray | None = None):
        """``dba_gallery`` is the gallery already augmented, when the caller kept it.

        ``ann`` (an ``ann.AnnIndex`` keyed by ``ids``, one per gallery row, sorted)
        proposes candidates that are then scored exactly; without it, search is exact.
        """
        self.ann, self.ids = ann, ids
        if rerank not in RERANKS:
            raise ValueError(f"unknown re-ranking {rerank!r}: choose one of {', '.join(RERANKS)}")
        self.metric = _metric(metric)
        self.rerank = RERANKS[rerank]
        self.whitening = whitening
        space = whitening.apply(gallery) if whitening is not None else np.asarray(gallery, np.float32)
        if self.rerank.augment_gallery is not None:
            space = dba_gallery if dba_gallery is not None else self.rerank.augment_gallery(space)
        self.space = space  # where aQE looks for neighbours
        if self.metric.whitened:
            if mahalanobis is None:
                raise ValueError("the Mahalanobis metric needs a covariance transform fitted on the gallery")
            self.mahalanobis = mahalanobis
            self.metric_gallery = mahalanobis.apply(space, normalize=False)
        else:
            self.mahalanobis = None
            self.metric_gallery = space
        self._g_sq = squared_norms(self.metric_gallery) if self.metric.takes_norms else None

    def __len__(self) -> int:
        return len(self.metric_gallery)

    def _prepare(self, queries: np.ndarray, exclude: list[np.ndarray] | None,
                 neighbours: np.ndarray | None = None) -> np.ndarray:
        """Queries in the metric's space: whitened, expanded (aQE), Mahalanobis-transformed.

        aQE looks for neighbours in ``neighbours`` (default: the whole gallery).
        """
        q = self.whitening.apply(queries) if self.whitening is not None else np.asarray(queries, np.float32)
        if self.rerank.expand_query is not None:
            q = self.rerank.expand_query(q, self.space if neighbours is None else neighbours, exclude=exclude)
        if self.mahalanobis is not None:
            q = self.mahalanobis.apply(q, normalize=False)
        return q

    def _score(self, q: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
        """Natural scores and higher-is-better keys against the selected gallery rows."""
        block = self.metric_gallery[rows]
        if self._g_sq is not None:
            scores = self.metric.score(q, block, self._g_sq[rows])
        else:
            scores = self.metric.score(q, block)
        return scores, (scores if self.metric.higher_is_better else -scores)

    def _block_keys(self, q: np.ndarray, lo: int, hi: int, exclude: list[np.ndarray] | None):
        """``_score`` on rows lo..hi, with each query's excluded rows pushed to the end."""
        scores, keys = self._score(q, slice(lo, hi))
        if exclude is not None:
            keys = np.array(keys, dtype=np.float64)
            for row, skip in enumerate(exclude):
                inside = skip[(skip >= lo) & (skip < hi)] - lo
                keys[row, inside] = -np.inf
        return scores, keys

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None) -> Ranking:
        """Top-k for each query row; ``exclude[i]`` lists rows query i must not return.

        The gallery is walked in blocks, each read once for a whole chunk of
        queries, keeping a running top-k: memory stays bounded and a batch
        of queries costs one pass over the gallery, not one per chunk.
        """
        queries = np.atleast_2d(queries)
        n = len(self)
        k = min(k, n)
        if self.ann is not None:
            return self._search_candidates(queries, k, exclude)
        indices, scores = [], []
        for qs in range(0, len(queries), _QUERY_CHUNK):
            ex = exclude[qs:qs + _QUERY_CHUNK] if exclude is not None else None
            q = self._prepare(queries[qs:qs + _QUERY_CHUNK], ex)
            rows = max(_MIN_BLOCK, _CHUNK_CELLS // max(len(q), 1))
            best_keys = best_idx = best_scores = None
            for lo in range(0, n, rows):
                s, keys = self._block_keys(q, lo, min(n, lo + rows), ex)
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
        return Ranking(np.concatenate(indices), np.concatenate(scores))

    def _search_candidates(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None) -> Ranking:
        """Approximate: the index proposes rows from the raw descriptors, the full
        pipeline (post-processing, aQE among the candidates, metric) scores them."""
        from .ann import CANDIDATES_PER_RESULT

        proposed = self.ann.search(queries, max(200, k * CANDIDATES_PER_RESULT))
        indices = np.zeros((len(queries), k), np.int64)
        scores = np.zeros((len(queries), k), np.float32)
        for i, found in enumerate(proposed):
            rows = np.searchsorted(self.ids, found[found >= 0])
            if exclude is not None:
                rows = rows[~np.isin(rows, exclude[i])]
            q = self._prepare(queries[i:i + 1], None, neighbours=self.space[rows])
            s, keys = self._score(q, rows)
            order = np.lexsort((rows, -keys[0]))[:k]
            indices[i, : len(order)], scores[i, : len(order)] = rows[order], s[0, order]
        return Ranking(indices, scores)

    def keys(self, queries: np.ndarray, exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """Higher-is-better keys against every gallery row (for evaluation)."""
        q = self._prepare(np.atleast_2d(queries), exclude)
        return self._block_keys(q, 0, len(self), exclude)[1]

    def full_order(self, queries: np.ndarray, exclude: list[np.ndarray] | None = None) -> np.ndarray:
        """Every gallery row, best first, per query (for evaluation)."""
        return np.argsort(-self.keys(queries, exclude), axis=1, kind="stable")


def build_ranker(gallery: np.ndarray, metric: str = "cosine", rerank: str = "none", whiten: str = "none", *,
                 fitted: Fitted | None = None, ann=None, ids: np.ndarray | None = None) -> Ranker:
    """A ranker with every transform learned on this gallery.

    The one place a search configuration becomes a ranker, for the service,
    evaluation and benchmarks alike. Learning a transform costs a covariance
    (PCA, Mahalanobis), so a caller that searches the same gallery again
    passes ``fitted`` to keep them: it is asked for the post-processing as
    ``kind == whiten`` and for the Mahalanobis transform as
    ``kind == f"mahalanobis+{whiten}"`` (it is learned after post-processing).
    ``ann`` and ``ids`` go to the ``Ranker``.
    """
    fitted = fitted or _fit_afresh
    whitening = fitted(whiten, lambda: fit(whiten, gallery)) if whiten != "none" else None
    mahalanobis = None
    if _metric(metric).whitened:
        post = whitening.apply if whitening is not None else np.asarray
        mahalanobis = fitted(f"mahalanobis+{whiten}", lambda: fit_whitening(post(gallery)))
    return Ranker(gallery, metric, rerank, whitening, mahalanobis, ann=ann, ids=ids)

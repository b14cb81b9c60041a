"""Retrieval quality from rankings and labels: mAP, P@k, R@k, nDCG, agreement.

Why pure functions over rankings: the measures are checked by hand on tiny
examples, and the same code scores any backbone, metric or re-ranking, since
all it sees is "which gallery rows came back, in what order".

Definitions (binary relevance: same label as the query):
- AP: mean of precision at each relevant item's rank, over all relevant items.
- P@k: relevant among the first k, divided by k.
- R@k: relevant among the first k, divided by all relevant items (the IR
  definition, not "at least one hit").
- nDCG@k: DCG with gain 1/log2(rank+1), divided by the ideal DCG.
Rows excluded for a query (itself, its exact duplicates) are removed from its
ranking before anything is counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from scipy.stats import kendalltau

from .ranking import top_k

KS = (1, 5, 10)


@dataclass
class EvalReport:
    map: float
    p_at: dict[int, float]
    r_at: dict[int, float]
    ndcg_at_10: float
    queries: int
    per_class_ap: dict[str, float]
    precision_curve: list[float] = field(default_factory=list)  # mean P@1..P@curve_k
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"map": self.map, "ndcg_at_10": self.ndcg_at_10, "queries": self.queries}
        out.update({f"p_at_{k}": v for k, v in self.p_at.items()})
        out.update({f"r_at_{k}": v for k, v in self.r_at.items()})
        out["per_class_ap"] = self.per_class_ap
        out["precision_curve"] = self.precision_curve
        out["seconds"] = self.seconds
        out["ms_per_query"] = 1000.0 * self.seconds / self.queries if self.queries else 0.0
        out["config"] = self.config
        return out


def average_precision(hits: np.ndarray, n_relevant: int) -> float:
    """AP of one ranked list of booleans (True = relevant)."""
    hits = np.asarray(hits, bool)
    if n_relevant == 0:
        return 0.0
    ranks = np.arange(1, len(hits) + 1)
    precisions = np.cumsum(hits) / ranks
    return float(precisions[hits].sum() / n_relevant)


def precision_at_k(hits: np.ndarray, k: int) -> float:
    return float(np.asarray(hits[:k], bool).sum() / k)


def recall_at_k(hits: np.ndarray, k: int, n_relevant: int) -> float:
    return float(np.asarray(hits[:k], bool).sum() / n_relevant) if n_relevant else 0.0


def ndcg_at_k(hits: np.ndarray, k: int, n_relevant: int) -> float:
    gains = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((np.asarray(hits[:k], bool) * gains[: len(hits[:k])]).sum())
    ideal = float(gains[: min(n_relevant, k)].sum())
    return dcg / ideal if ideal else 0.0


def exact_duplicate_groups(vectors: np.ndarray) -> list[np.ndarray]:
    """For each row, the other rows with an identical descriptor.

    Identical descriptors mean pixel-identical images (the store already
    merged byte-identical files), which leave-one-out must not count as hits.
    """
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, row in enumerate(np.ascontiguousarray(vectors)):
        groups[row.tobytes()].append(i)
    return [np.array([j for j in groups[np.ascontiguousarray(vectors[i]).tobytes()] if j != i], np.int64)
            for i in range(len(vectors))]


def _score_chunk(order: np.ndarray, rows: np.ndarray, labels: np.ndarray, exclude: list[np.ndarray], curve_k: int):
    """Vectorised AP, P@k, R@k, nDCG@10 for a chunk of queries."""
    q, n = order.shape
    valid = np.ones((q, n), bool)
    for i, row in enumerate(rows):
        bad = np.concatenate([[row], exclude[row]]).astype(np.int64)
        pos = np.zeros(n, bool)
        pos[bad] = True
        valid[i] = ~pos[order[i]]
    query_labels = labels[rows]
    hits = (labels[order] == query_labels[:, None]) & valid
    n_rel = hits.sum(axis=1)
    ranks = np.cumsum(valid, axis=1)
    cum_hits = np.cumsum(hits, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(hits, cum_hits / np.maximum(ranks, 1), 0.0).sum(axis=1) / np.maximum(n_rel, 1)
    out = {"ap": ap, "n_rel": n_rel}
    for k in sorted(set(KS) | {10}):
        top = hits & (ranks <= k)
        out[f"p{k}"] = top.sum(axis=1) / k
        out[f"r{k}"] = top.sum(axis=1) / np.maximum(n_rel, 1)
    gains = np.where(hits & (ranks <= 10), 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0).sum(axis=1)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, 12)))
    out["ndcg10"] = gains / ideal[np.clip(np.minimum(n_rel, 10) - 1, 0, 9)]
    curve = np.zeros((q, curve_k))
    for k in range(1, curve_k + 1):
        curve[:, k - 1] = (hits & (ranks <= k)).sum(axis=1) / k
    out["curve"] = curve
    return out


def leave_one_out(
    labels: list[str | None],
    rank: Callable[[np.ndarray, list[np.ndarray]], np.ndarray],
    exclude: list[np.ndarray] | None = None,
    chunk: int = 256,
    curve_k: int = 20,
    asking: np.ndarray | None = None,
) -> EvalReport:
    """Every labelled row queries all the others.

    ``rank(rows, exclude)`` returns the full gallery order for those query
    rows. Unlabelled rows stay in the gallery as distractors but never query
    and are never relevant. Queries with no other item of their label are
    skipped: they have no answer to find.

    The exclusions handed to ``rank`` hold the query's own row as well as its
    exact duplicates: a ranker must treat them as absent from the gallery for
    that query (``Ranker`` does), so that no re-ranker built on the gallery's
    own neighbourhoods (DBA, diffusion, k-reciprocal) lets a query's row help
    its own ranking.

    ``asking`` (row indices) narrows who asks, never who can be found: a
    text query needs the row's own caption, but an undescribed row of the
    query's label is still an answer it should have found.
    """
    n = len(labels)
    exclude = exclude if exclude is not None else [np.zeros(0, np.int64)] * n
    codes = {label: i for i, label in enumerate(sorted({l for l in labels if l is not None}))}
    coded = np.array([codes[l] if l is not None else -1 - i for i, l in enumerate(labels)], np.int64)
    candidates = np.array([i for i, l in enumerate(labels) if l is not None], np.int64)
    if asking is not None:
        candidates = np.intersect1d(candidates, np.asarray(asking, np.int64))
    acc: dict[str, list] = defaultdict(list)
    used_rows: list[np.ndarray] = []
    for start in range(0, len(candidates), chunk):
        rows = candidates[start:start + chunk]
        order = rank(rows, [np.union1d(np.array([r], np.int64), exclude[r]) for r in rows])
        part = _score_chunk(order, rows, coded, exclude, curve_k)
        keep = part["n_rel"] > 0
        used_rows.append(rows[keep])
        for key, value in part.items():
            acc[key].append(value[keep])
    if not used_rows or sum(len(r) for r in used_rows) == 0:
        return EvalReport(0.0, {k: 0.0 for k in KS}, {k: 0.0 for k in KS}, 0.0, 0, {})
    merged = {key: np.concatenate(values) for key, values in acc.items()}
    rows = np.concatenate(used_rows)
    per_class: dict[str, list[float]] = defaultdict(list)
    for row, ap in zip(rows, merged["ap"]):
        per_class[labels[row]].append(ap)
    return EvalReport(
        map=float(merged["ap"].mean()),
        p_at={k: float(merged[f"p{k}"].mean()) for k in KS},
        r_at={k: float(merged[f"r{k}"].mean()) for k in KS},
        ndcg_at_10=float(merged["ndcg10"].mean()),
        queries=int(len(rows)),
        per_class_ap={label: float(np.mean(v)) for label, v in sorted(per_class.items())},
        precision_curve=[float(x) for x in merged["curve"].mean(axis=0)],
    )


def _ranks_of_relevant(keys: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each relevant column in one row of keys, best first.

    Sorting the relevant and the other scores separately and counting, by
    binary search, the others ranked above each relevant one gives the same
    ranks as a full argsort at a fraction of its cost (no index arrays over
    the whole gallery). Ties with an irrelevant item count against the query,
    so the figure never flatters.
    """
    rel = np.sort(keys[relevant])[::-1]
    other = np.sort(keys[~relevant])
    ahead = len(other) - np.searchsorted(other, rel, side="left")
    return np.arange(1, len(rel) + 1) + ahead


def query_gallery(
    query_labels: list[str | None],
    gallery_labels: list[str | None],
    keys: Callable[[np.ndarray], np.ndarray],
    chunk: int = 256,
    curve_k: int = 20,
) -> EvalReport:
    """Held-out queries against a separate gallery (e.g. a test split against a train split).

    ``keys(rows)`` returns higher-is-better scores ``(len(rows), n_gallery)``
    for those query rows. No leave-one-out is needed, since no query is in
    the gallery. Unlabelled gallery rows are distractors; unlabelled
    queries, and queries whose label the gallery lacks, are skipped.
    """
    curve_k = max(curve_k, 10, *KS)
    g = np.array([l if l is not None else "\0none" for l in gallery_labels], dtype=object)
    masks = {label: g == label for label in set(gallery_labels) if label is not None}
    candidates = np.array([i for i, l in enumerate(query_labels) if l in masks], np.int64)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, 12)))
    gains = 1.0 / np.log2(np.arange(2, curve_k + 2))
    aps, curves, n_rels, ndcgs, used = [], [], [], [], []
    for start in range(0, len(candidates), chunk):
        rows = candidates[start:start + chunk]
        block = np.asarray(keys(rows))
        top = top_k(block, curve_k)
        for i, row in enumerate(rows):
            relevant = masks[query_labels[row]]
            n_rel = int(relevant.sum())
            ranks = _ranks_of_relevant(block[i], relevant)
            aps.append(float(np.mean(np.arange(1, n_rel + 1) / ranks)))
            hits = relevant[top[i]]
            curves.append(np.cumsum(hits) / np.arange(1, len(hits) + 1))
            n_rels.append(n_rel)
            ndcgs.append(float((hits[:10] * gains[: len(hits[:10])]).sum() / ideal[min(n_rel, 10) - 1]))
            used.append(row)
    if not used:
        return EvalReport(0.0, {k: 0.0 for k in KS}, {k: 0.0 for k in KS}, 0.0, 0, {})
    curve = np.array(curves)
    n_rel = np.array(n_rels, np.float64)
    per_class: dict[str, list[float]] = defaultdict(list)
    for row, ap in zip(used, aps):
        per_class[query_labels[row]].append(ap)
    return EvalReport(
        map=float(np.mean(aps)),
        p_at={k: float(curve[:, k - 1].mean()) for k in KS},
        r_at={k: float((curve[:, k - 1] * k / n_rel).mean()) for k in KS},
        ndcg_at_10=float(np.mean(ndcgs)),
        queries=len(used),
        per_class_ap={label: float(np.mean(v)) for label, v in sorted(per_class.items())},
        precision_curve=[float(x) for x in curve.mean(axis=0)],
    )


@dataclass(frozen=True)
class Agreement:
    """How alike two configurations rank the same gallery for the same queries."""

    overlap_at_k: float  # mean |A_k & B_k| / k
    kendall_tau: float  # mean over queries, on the union of both top-k lists
    spearman_rho: float  # mean over queries, on the full rankings
    k: int

    def to_json(self) -> dict:
        return asdict(self)


def overlap_at_k(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return len(set(a[:k].tolist()) & set(b[:k].tolist())) / k


def kendall_tau_top_k(order_a: np.ndarray, order_b: np.ndarray, k: int) -> float:
    """Kendall's tau between the positions both rankings give the union of their top k."""
    pos_a = np.empty(len(order_a), np.int64)
    pos_a[order_a] = np.arange(len(order_a))
    pos_b = np.empty(len(order_b), np.int64)
    pos_b[order_b] = np.arange(len(order_b))
    union = np.union1d(order_a[:k], order_b[:k])
    if len(union) < 2:
        return 1.0
    tau = kendalltau(pos_a[union], pos_b[union]).statistic
    return float(tau) if np.isfinite(tau) else 0.0


def spearman_full(order_a: np.ndarray, order_b: np.ndarray) -> float:
    """Spearman's rho of two permutations: 1 - 6 sum(d^2) / (n (n^2 - 1))."""
    n = len(order_a)
    if n < 2:
        return 1.0
    pos_a = np.empty(n, np.float64)
    pos_a[order_a] = np.arange(n)
    pos_b = np.empty(n, np.float64)
    pos_b[order_b] = np.arange(n)
    d2 = float(np.sum((pos_a - pos_b) ** 2))
    return 1.0 - 6.0 * d2 / (n * (n * n - 1.0))


def agreement(orders_a: np.ndarray, orders_b: np.ndarray, k: int = 10) -> Agreement:
    """Compare two sets of full rankings (one row per query)."""
    k = min(k, orders_a.shape[1])
    overlaps = [overlap_at_k(a, b, k) for a, b in zip(orders_a, orders_b)]
    taus = [kendall_tau_top_k(a, b, k) for a, b in zip(orders_a, orders_b)]
    rhos = [spearman_full(a, b) for a, b in zip(orders_a, orders_b)]
    return Agreement(float(np.mean(overlaps)), float(np.mean(taus)), float(np.mean(rhos)), k)

"""Galleries and leave-one-out helpers shared by the re-ranker tests.

``hubs``: each class is a hub with spokes around it, the spokes far from
each other, and near each hub a tight cluster of unlabelled distractors a
little closer to it than its spokes. The hub's spokes all list the hub
among their nearest items, so the hub's own row, left in a gallery-side
neighbourhood structure, pulls exactly its class towards it: the case where
a naive leave-one-out flatters a re-ranker.
"""

from __future__ import annotations

import numpy as np

from retrieval.evaluation import exact_duplicate_groups, leave_one_out
from retrieval.pooling import l2_normalize


def hubs(n_classes=6, spokes=4, distract=3, d=64, spread=1.3, bsim=0.7, seed=0):
    rng = np.random.default_rng(seed)
    vecs, labels = [], []
    for c in range(n_classes):
        hub = l2_normalize(rng.normal(size=d))
        vecs.append(hub)
        labels.append(f"c{c}")
        for _ in range(spokes):
            vecs.append(l2_normalize(hub + spread * l2_normalize(rng.normal(size=d))))
            labels.append(f"c{c}")
        away = l2_normalize(rng.normal(size=d))
        for _ in range(distract):
            vecs.append(l2_normalize(bsim * hub + np.sqrt(1 - bsim ** 2) * away + 0.05 * rng.normal(size=d)))
            labels.append(None)
    return np.array(vecs, np.float32), labels


def clusters(n_classes=6, per_class=12, d=16, noise=1.0, seed=1):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = l2_normalize(rng.normal(size=(n_classes, d))[labels] + noise * rng.normal(size=(len(labels), d)))
    return x.astype(np.float32), [f"c{label}" for label in labels]


def loo_map(ranker, x, labels, absent=True) -> float:
    """Leave-one-out mAP through ``Ranker.full_order`` (honest unless ``absent`` is False)."""
    rank = lambda rows, ex: ranker.full_order(x[rows], ex, absent=absent)  # noqa: E731
    return leave_one_out(labels, rank, exact_duplicate_groups(x)).map


def rebuilt_map(make_ranker, x, labels) -> float:
    """Leave-one-out mAP where each query's rows are truly removed and the ranker rebuilt without them."""
    def rank(rows, exclude):
        orders = []
        for row, ex in zip(rows, exclude):
            keep = np.setdiff1d(np.arange(len(x)), ex)
            order = make_ranker(x[keep]).full_order(x[row:row + 1])[0]
            orders.append(np.concatenate([keep[order], ex]))
        return np.array(orders)

    return leave_one_out(labels, rank, exact_duplicate_groups(x)).map

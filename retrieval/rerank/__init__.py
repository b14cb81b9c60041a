"""Re-rankers: better orderings from the same vectors, one method per file.

Three kinds, by where the work happens:
- expand the query (``qe``: alpha query expansion) - per query, no gallery state;
- augment the gallery (``dba``: database-side augmentation) - once per gallery,
  the search itself is unchanged;
- re-score on the gallery's neighbourhood graph (``diffusion``, ``kreciprocal``)
  - gallery-side state (kNN lists, a graph, reciprocal encodings) built once,
  lazily on the first query that needs it, and kept with the ranker; each
  query's similarities to the gallery are then turned into new scores.

All act in the post-processed (e.g. centred or whitened) cosine space: the
neighbourhoods they use are those the methods were defined with. Parameters
that depend on how many items a neighbourhood can hold adapt to the gallery
size (``default_k``, ``default_params``); docs/rerank_tuning.md has the
measurements behind them.

Leave-one-out: every re-ranker treats a query's excluded rows (itself, its
exact duplicates) as *absent from the gallery* for that query; each module's
docstring says what that recomputes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .dba import DBA
from .diffusion import Diffusion
from .kreciprocal import KReciprocal
from .qe import alpha_query_expansion


@dataclass(frozen=True)
class Rerank:
    """A re-ranking, by where it acts.

    ``expand_query(queries, neighbours, exclude=...)`` rewrites each query
    from its neighbours; ``augment_gallery(space)`` returns a ``DBA`` (the
    augmented gallery, and how to undo a row's share in it); ``graph(space)``
    returns an object whose ``rescore(sims, exclude, queries=...)`` gives
    ``(keys, scores)`` over the gallery from the queries' similarities.
    """

    name: str
    summary: str
    expand_query: Callable[..., np.ndarray] | None = None
    augment_gallery: Callable[[np.ndarray], DBA] | None = None
    graph: Callable[[np.ndarray], object] | None = None


# Every re-ranking a search can ask for, by name: adding one is a file here
# and an entry below (``config.RERANKS``, the CLI and the app list these keys).
RERANKS: Mapping[str, Rerank] = MappingProxyType({
    r.name: r
    for r in (
        Rerank("none", "the metric's order"),
        Rerank("qe", "alpha query expansion", expand_query=alpha_query_expansion),
        Rerank("dba", "database-side augmentation", augment_gallery=DBA),
        Rerank("diffusion", "diffusion on the gallery's kNN graph", graph=Diffusion),
        Rerank("kreciprocal", "k-reciprocal re-ranking", graph=KReciprocal),
    )
})


def describe() -> str:
    """One line naming every option, for help texts."""
    return " · ".join(f"{r.name}: {r.summary}" for r in RERANKS.values() if r.name != "none")


class Lazy:
    """Gallery-side state built once, on first use, by one thread; ``build_ms`` says what it cost."""

    def __init__(self, build: Callable[[], object]):
        self._build, self._value, self._lock = build, None, threading.Lock()
        self.build_ms: float | None = None

    def get(self) -> tuple[object, float | None]:
        """(the state, the build time in ms if this call built it, else None)."""
        if self._value is not None:
            return self._value, None
        with self._lock:
            if self._value is not None:
                return self._value, None
            started = time.perf_counter()
            value = self._build()
            self.build_ms = round((time.perf_counter() - started) * 1000.0, 2)
            self._value = value
            return value, self.build_ms

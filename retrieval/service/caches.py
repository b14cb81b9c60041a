"""Every in-memory cache built on a collection, bounded, and forgotten in one place.

Why keys are enough for correctness: every key starts with a collection id
and a configuration id, which the store never reuses, and most carry the
collection's generation, which every write bumps. A stale entry can
therefore never be served; ``forget_collection`` and ``forget_config`` only
give the memory back early (after a drop or a deleted model), and the LRU
bound caps it for everything else.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable


class LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop(self, stale: Callable[[tuple], bool]) -> None:
        with self._lock:
            for key in [k for k in self._items if stale(k)]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


class Caches:
    """Keys: (collection id, config id, ...). Galleries and rankers hold whole
    vector matrices, so only a few of each are kept."""

    def __init__(self):
        self.galleries = LRU(8)  # (cid, config_id, generation) -> complete Gallery
        self.rankers = LRU(8)  # (cid, config_id, generation, metric, rerank, whiten, ann) -> Ranker
        self.anns = LRU(4)  # (cid, config_id) -> AnnIndex, synced to the gallery on use
        self.maps = LRU(2)  # (cid, config_id, generation, whiten, rerank) -> 2-D projection
        # (cid, config_id, generation, whiten, rerank) -> rerank.Lazy: a graph re-ranker's
        # gallery-side state (kNN graph, reciprocal encodings), shared by every metric and index
        self.graphs = LRU(4)

    def _all(self) -> tuple[LRU, ...]:
        return self.galleries, self.rankers, self.anns, self.maps, self.graphs

    def forget_collection(self, collection_id: int) -> None:
        for lru in self._all():
            lru.drop(lambda key: key[0] == collection_id)

    def forget_config(self, config_id: int) -> None:
        for lru in self._all():
            lru.drop(lambda key: key[1] == config_id)

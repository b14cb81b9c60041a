"""An approximate index for large galleries: faiss IVF, persisted and updated in place.

Why IVF (``faiss.IndexIVFFlat``) rather than a graph index: on 2 CPU cores
it trains and fills a million-vector index of 1280-d in about 25 s
(an HNSW graph built with usearch took ~12 minutes at the ~1,400 inserts/s
measured here), it removes vectors by id, it saves to one file, and its one
knob, ``nprobe``, trades recall for speed predictably.

The index holds the raw L2-normalised descriptors, keyed by image id, and
only proposes candidates; ``ranking.Ranker`` re-scores them exactly with the
chosen post-processing, re-ranking and metric. That keeps the index valid
while the gallery mean (centring) or whitening change with the gallery, so
adding or removing images is an incremental update, never a rebuild.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUTO_THRESHOLD = 50_000  # galleries at least this large use the index under index="auto"
CANDIDATES_PER_RESULT = 10  # exact re-scoring of k x 10 candidates (at least 200)


def _faiss():
    import faiss

    return faiss


def nprobe_for(nlist: int) -> int:
    """Lists to visit: measured on 1M clustered vectors (docs/benchmarks.md),
    1024 lists at nprobe 32 give recall@10 0.975 at 20x the exact speed."""
    return max(8, nlist // 32)


def nlist_for(n: int) -> int:
    """About sqrt(n) lists, capped so training stays a few seconds on 2 cores,
    and never more lists than a tiny gallery can fill."""
    target = int(min(1024, max(16, 2 ** round(np.log2(max(np.sqrt(n), 16))))))
    return max(1, min(target, n // 4))


@dataclass
class AnnIndex:
    index: object  # faiss.IndexIVFFlat
    ids: set[int]
    nprobe: int = 8

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, nprobe: int | None = None, seed: int = 0) -> "AnnIndex":
        faiss = _faiss()
        n, dim = vectors.shape
        nlist = nlist_for(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.seed = seed
        sample = np.random.default_rng(seed).choice(n, size=min(n, 48 * nlist), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
        ann = cls(index, set(), nprobe or nprobe_for(nlist))
        ann.add(ids, vectors)
        return ann

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
            self.ids.update(int(i) for i in ids)

    def remove(self, ids) -> None:
        ids = np.fromiter((int(i) for i in ids), dtype=np.int64)
        if len(ids):
            self.index.remove_ids(ids)
            self.ids.difference_update(ids.tolist())

    def sync(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[int, int]:
        """Make the index hold exactly these ids; returns (added, removed)."""
        wanted = set(int(i) for i in ids)
        extra = self.ids - wanted
        missing = np.array(sorted(wanted - self.ids), dtype=np.int64)
        self.remove(extra)
        if len(missing):
            rows = np.searchsorted(ids, missing)  # ids are sorted (gallery rows follow image ids)
            self.add(missing, vectors[rows])
        return len(missing), len(extra)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Candidate image ids per query, best first (-1 pads when too few)."""
        self.index.nprobe = self.nprobe
        _, found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return found

    def save(self, path: Path) -> None:
        faiss = _faiss()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, nprobe: int | None = None) -> "AnnIndex":
        faiss = _faiss()
        index = faiss.read_index(str(path))
        ivf = faiss.extract_index_ivf(index)
        ids: set[int] = set()
        for lst in range(ivf.nlist):
            size = ivf.invlists.list_size(lst)
            if size:
                ptr = ivf.invlists.get_ids(lst)
                ids.update(faiss.rev_swig_ptr(ptr, size).tolist())
        return cls(index, ids, nprobe or nprobe_for(ivf.nlist))

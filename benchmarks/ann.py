"""The approximate IVF index against exact search: recall@10 and speed.

Data: clustered synthetic unit vectors (d=1280): one centre per
``--per-cluster`` vectors, each vector a centre plus Gaussian noise, so that
a query's ten nearest neighbours are its own kind, as in a real gallery. Pure random unit vectors have no
neighbour structure at all (every point is about equally far from every
other), which no index, and no retrieval use, ever meets. Queries are
perturbed gallery vectors. For each ``nprobe`` the script reports recall@10
against exact search on the same queries, and the median per-query latency
of the whole approximate path (IVF candidates + exact re-scoring) next to the
exact search's, both single-threaded-per-query on 2 cores.

    python -m benchmarks.ann [--sizes 100000,1000000] [--out docs/ann.json]
    python -m benchmarks.ann --real [--out docs/ann_real.json]

``--real`` uses real descriptors instead: the 60,000 Fashion-MNIST training
images (lite1, GeM p=3, from ``benchmarks.fashion_full extract``) as the
gallery (past the 50,000 from which ``--index auto`` picks IVF) and test
images as queries, at the default nprobe and around it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from retrieval.ann import AnnIndex
from retrieval.pooling import l2_normalize
from retrieval.ranking import Ranker

from .search import median_latency_ms

K = 10


def clustered(n: int, dim: int, clusters: int, noise: float, rng, latent: int = 64) -> np.ndarray:
    """Clusters in a ``latent``-dimensional space, mapped linearly into ``dim``.

    CNN descriptors have a low effective rank (a few dozen principal
    directions carry most of their variance); isotropic noise in all 1280
    dimensions would model something no backbone produces.
    """
    basis = rng.standard_normal((latent, dim), dtype=np.float32)
    centres = rng.standard_normal((clusters, latent), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        z = centres[rng.integers(0, clusters, m)] + noise * rng.standard_normal((m, latent), dtype=np.float32)
        out[s:s + m] = l2_normalize(z @ basis + 0.05 * rng.standard_normal((m, dim), dtype=np.float32))
    return out


def sweep(gallery: np.ndarray, queries: np.ndarray, nprobes: list[int]) -> dict:
    """Build the index, then recall@10 against exact search and per-query latency for each nprobe."""
    from retrieval.ann import nprobe_for

    ids = np.arange(len(gallery), dtype=np.int64)
    t = time.perf_counter()
    ann = AnnIndex.build(ids, gallery)
    build_s = time.perf_counter() - t
    exact = Ranker(gallery, "cosine")
    truth = exact.search(queries, K).indices
    exact_ms = median_latency_ms(lambda q: exact.search(q, K), queries)
    approx = Ranker(gallery, "cosine", ann=ann, ids=ids)
    default = nprobe_for(ann.index.nlist)
    points = []
    for nprobe in nprobes:
        ann.nprobe = nprobe
        found = approx.search(queries, K).indices
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)]))
        ms = median_latency_ms(lambda q: approx.search(q, K), queries)
        points.append({"nprobe": nprobe, "default": nprobe == default, "recall_at_10": round(recall, 4),
                       "ms": round(ms, 3), "speedup": round(exact_ms / ms, 1)})
        print(json.dumps({"n": len(gallery), **points[-1]}), flush=True)
    return {"n": len(gallery), "nlist": ann.index.nlist, "build_s": round(build_s, 1), "exact_ms": round(exact_ms, 2),
            "points": points}


def real(queries: int, nprobes: list[int]) -> dict:
    from retrieval.ann import nlist_for, nprobe_for

    from .fashion_full import vectors_path

    gallery = l2_normalize(np.load(vectors_path("efficientnet-lite1", "gem3", "train")))
    test = l2_normalize(np.load(vectors_path("efficientnet-lite1", "gem3", "t10k")))[:queries]
    result = sweep(gallery, test, sorted(set(nprobes) | {nprobe_for(nlist_for(len(gallery)))}))
    return {"command": f"python -m benchmarks.ann --real --queries {queries // 10}", "queries": len(test), **result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--per-cluster", type=int, default=100, help="gallery vectors per centre")
    parser.add_argument("--noise", type=float, default=0.5, help="spread of a cluster, relative to the spread of centres")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nprobes", default="4,8,16,32,64")
    parser.add_argument("--out", default=None)
    parser.add_argument("--real", action="store_true", help="Fashion-MNIST lite1 descriptors instead of synthetic")
    args = parser.parse_args()
    if args.real:
        out = real(args.queries * 10, [2, 4, 8, 16, 32])
        Path(args.out or "docs/ann_real.json").write_text(json.dumps(out, indent=2))
        return
    args.out = args.out or "docs/ann.json"

    rng = np.random.default_rng(0)
    results = []
    for n in map(int, args.sizes.split(",")):
        gallery = clustered(n, args.dim, max(1, n // args.per_cluster), args.noise, rng)
        queries = l2_normalize(gallery[rng.integers(0, n, args.queries)]
                               + 0.01 * rng.standard_normal((args.queries, args.dim), dtype=np.float32))
        results.append(sweep(gallery, queries, [int(p) for p in args.nprobes.split(",")]))
        gallery = None  # free memory before the next size
    out = {"command": f"python -m benchmarks.ann --sizes {args.sizes}", "dim": args.dim, "per_cluster": args.per_cluster,
           "noise": args.noise, "queries": args.queries, "k": K, "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

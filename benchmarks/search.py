"""Exact search latency and throughput against faiss ``IndexFlatIP``.

Synthetic L2-normalised vectors (d=1280) at N = 10k, 100k and 1M; the same
queries, k=10 and 2 threads for both. Single-query latency is the median of
``--repeats`` queries; batch throughput is queries/s on one batch of 256.
Also measured: float16 storage (recall@10 against float32, and speed).

Run it with the machine's own OPENBLAS_CORETYPE (Haswell here): faiss-cpu
bundles OpenBLAS 0.3.15, which misdetects this CPU as "Barcelona" when the
variable is unset and then runs a generic kernel, so unsetting it would
handicap faiss. numpy and faiss run under the same setting; the BLAS
libraries and kernels in use are printed in the results.

    python -m benchmarks.search [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from retrieval.pooling import l2_normalize
from retrieval.ranking import Ranker

K = 10


def latency_samples_ms(fn, queries: np.ndarray) -> list[float]:
    """Single-query latencies in ms, sorted, after one warm-up query (the one timing loop of the benchmarks)."""
    fn(queries[:1])
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None])
        times.append(1000 * (time.perf_counter() - t))
    return sorted(times)


def median_latency_ms(fn, queries: np.ndarray) -> float:
    return statistics.median(latency_samples_ms(fn, queries))


def _batch_qps(fn, queries: np.ndarray, repeats: int = 3) -> float:
    fn(queries[:8])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(queries)
        times.append(time.perf_counter() - t)
    return len(queries) / statistics.median(times)


def main() -> None:
    import faiss
    from threadpoolctl import threadpool_info, threadpool_limits

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/search.json")
    args = parser.parse_args()

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(args.threads):
        for n in map(int, args.sizes.split(",")):
            gallery = np.empty((n, args.dim), np.float32)
            for s in range(0, n, 100_000):  # in chunks: 1M x 1280 doubles would need 10 GB
                gallery[s:s + 100_000] = l2_normalize(rng.standard_normal((min(100_000, n - s), args.dim), dtype=np.float32))
            queries = l2_normalize(rng.standard_normal((max(args.repeats, args.batch), args.dim), dtype=np.float32))
            ranker = Ranker(gallery, "cosine")
            index = faiss.IndexFlatIP(args.dim)
            index.add(gallery)

            ours = lambda q: ranker.search(q, K)  # noqa: E731
            theirs = lambda q: index.search(q, K)  # noqa: E731
            a, b = ours(queries[:20]).indices, theirs(queries[:20])[1]
            agree = float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b)]))
            row = {"n": n, "ours_ms": median_latency_ms(ours, queries[: args.repeats]),
                   "faiss_ms": median_latency_ms(theirs, queries[: args.repeats]),
                   "ours_batch_qps": _batch_qps(ours, queries[: args.batch]),
                   "faiss_batch_qps": _batch_qps(theirs, queries[: args.batch]), "agreement_at_10": agree}
            if n <= 100_000:
                half = gallery.astype(np.float16)
                q16 = queries[: args.repeats].astype(np.float16)
                t = time.perf_counter()
                approx = np.argsort(-(q16 @ half.T).astype(np.float32), axis=1)[:, :K]
                row["fp16_ms"] = 1000 * (time.perf_counter() - t) / len(q16)
                exact = ranker.search(queries[: args.repeats], K).indices
                row["fp16_recall_at_10"] = float(np.mean([len(set(x) & set(y)) / K for x, y in zip(approx, exact)]))
            row["latency_ratio"] = row["ours_ms"] / row["faiss_ms"]
            row["batch_ratio"] = row["ours_batch_qps"] / row["faiss_batch_qps"]
            rows.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
            print(json.dumps(rows[-1]), flush=True)
            gallery = ranker = index = None  # free ~10 GB before the next size

    blas = sorted({f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})" for i in threadpool_info() if i["user_api"] == "blas"})
    result = {"command": "python -m benchmarks.search", "k": K, "dim": args.dim,
              "threads": args.threads, "repeats": args.repeats, "batch": args.batch, "blas": blas,
              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

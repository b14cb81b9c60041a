"""What each re-ranker costs: building its gallery-side state, and per query.

Galleries of real lite1 GeM vectors (centred, as the default search): the 70
demo photos, and the first 1,000 / 10,000 / 60,000 Fashion-MNIST training
images; queries are Fashion-MNIST test images (the demo gallery queries its
own photos). For each re-ranker:
- ``build_ms``: ``build_ranker`` (DBA's augmented gallery is made here) plus the
  graph re-rankers' state (kNN lists, graph or encodings), which is built lazily
  by the first query. When a gallery changes (a new generation), this is the
  rebuild cost: the state is rebuilt lazily, in full, on the next query that
  needs it (no incremental update yet);
- per query, one query at a time as the app sends them, k = 10: median and
  95th percentile of ``search_ms`` (the whole ranking) and of ``rerank_ms``
  (the re-ranker's own part of it).

    flock /tmp/bench.lock python -m benchmarks.rerank_cost [--sizes 70,1000,10000,60000] [--queries 50]
        [--out docs/rerank_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.pop("OPENBLAS_CORETYPE", None)

import numpy as np  # noqa: E402

from retrieval.pooling import l2_normalize  # noqa: E402
from retrieval.ranking import RERANKS, build_ranker  # noqa: E402

RQ = Path("benchmarks/out/runtime_quality")


def gallery(size: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    if size == 70:
        from .rerank_tune import demo_vectors

        v = l2_normalize(demo_vectors()[0])
        return v, v[np.random.default_rng(0).choice(len(v), queries)]
    g = l2_normalize(np.load(RQ / "fmnist_keras_train_60000.npy", mmap_mode="r")[:size])
    return g, l2_normalize(np.load(RQ / "fmnist_keras_t10k_10000.npy", mmap_mode="r")[:queries])


def measure(g: np.ndarray, q: np.ndarray, rerank: str) -> dict:
    started = time.perf_counter()
    ranker = build_ranker(g, "cosine", rerank, "center")
    build_ms = (time.perf_counter() - started) * 1000.0
    first = ranker.search(q[:1], 10)
    build_ms += first.timings.get("graph_build_ms", 0.0)
    search, rerank_ms = [], []
    for row in q:
        started = time.perf_counter()
        ranking = ranker.search(row[None], 10)
        search.append((time.perf_counter() - started) * 1000.0)
        rerank_ms.append(ranking.timings["rerank_ms"])
    graph = ranker.graph.get()[0] if ranker.graph is not None else None
    params = {key: getattr(graph, key) for key in ("k", "alpha", "gamma", "k1", "k2", "lam") if hasattr(graph, key)}
    return {"n": len(g), "rerank": rerank, **params, "build_ms": round(build_ms, 1),
            "search_ms_median": round(float(np.median(search)), 2),
            "search_ms_p95": round(float(np.percentile(search, 95)), 2),
            "rerank_ms_median": round(float(np.median(rerank_ms)), 2),
            "rerank_ms_p95": round(float(np.percentile(rerank_ms, 95)), 2)}


def render(result: dict) -> str:
    lines = ["# Re-ranking cost", "", f"    {result['command']}", "",
             f"{result['machine']}. Real lite1 GeM vectors, centred; one query at a time, k = 10. "
             "`build` is what a new gallery (or a changed one: the state is rebuilt lazily, in full, "
             "on the next query that needs it) costs before its first re-ranked answer.", "",
             "| gallery | re-ranker | parameters | build ms | search ms (median / p95) | re-rank ms (median / p95) |",
             "|---:|---|---|---:|---:|---:|"]
    notes = ["", "Notes: the machine was shared with other jobs while this ran (loadavg ~7 on 2 cores), so "
             "medians are the figure to read; p95 and a few medians (e.g. `none` at 1,000) carry that noise. "
             "`search` includes `re-rank`. DBA's and the graphs' build is one N x N similarity pass (blocks "
             "of `top_k`), which dominates at 60k. The gallery-side state is cached per (collection, "
             "configuration, generation, post-processing, re-ranker) and shared by every metric and index "
             "(`Caches.graphs`); it is rebuilt lazily, not incrementally, when the gallery changes."]
    for r in result["rows"]:
        params = ", ".join(f"{k}={r[k]}" for k in ("k", "alpha", "k1", "k2", "lam") if k in r)
        lines.append(f"| {r['n']:,} | {r['rerank']} | {params} | {r['build_ms']:,.0f} | "
                     f"{r['search_ms_median']} / {r['search_ms_p95']} | {r['rerank_ms_median']} / {r['rerank_ms_p95']} |")
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="70,1000,10000,60000")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", default="docs/rerank_cost.json")
    parser.add_argument("--render", action="store_true", help="only write the markdown from --out")
    args = parser.parse_args()
    if args.render:
        Path(args.out).with_suffix(".md").write_text(render(json.loads(Path(args.out).read_text())))
        return
    result = {"command": f"flock /tmp/bench.lock python -m benchmarks.rerank_cost --sizes {args.sizes} "
                         f"--queries {args.queries}",
              "machine": f"{os.cpu_count()} CPU cores (shared), numpy {np.__version__}", "rows": []}
    for size in (int(s) for s in args.sizes.split(",")):
        g, q = gallery(size, args.queries)
        for rerank in RERANKS:
            row = measure(g, q, rerank)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(result, indent=1))
    Path(args.out).with_suffix(".md").write_text(render(result))


if __name__ == "__main__":
    main()

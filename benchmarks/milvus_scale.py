"""Milvus Lite against the in-process faiss IVF index as a gallery's candidate proposer.

Same data as ``benchmarks.ann``: clustered, low-rank synthetic unit vectors
(d=1280, 100 per cluster). ``--queries`` extra vectors are generated with
the gallery and held out of it; the queries are those, slightly perturbed,
so each has real neighbours in the gallery without being in it.

Per gallery size N, on the same vectors:

* exact search with numpy (``gallery @ q``, top 10): the baseline, and the
  ground truth (computed in blocks) for recall;
* faiss IVF: ``AnnIndex.build`` time, then single-query ``search(q, 200)``;
* Milvus Lite file: ``connect(tmp/m.db)``, ``MilvusIndex.open``, ``add`` in
  its 2,000-row batches (inserts/s), time to the first answer, single-query
  ``MilvusIndex.search(q, 200)`` as the service calls it (ids and stored
  vectors back), the same with ids only, and re-opening the file;
* (smallest size, or ``--server-sizes``) the same through a Milvus Lite gRPC
  server (``python -m milvus_lite server``) started and stopped here.

200 candidates is what the service re-scores exactly
(``ann.CANDIDATES_PER_RESULT`` x k, at least 200). "recall@10 (200 cand.)"
is the share of the exact top 10 found among the 200 candidates: what the
re-scoring can recover; "top-10 overlap" is the proposer's own first 10.

If a Milvus insert runs past ``--insert-cap-s`` it is stopped there: the
rate so far and the extrapolated full time are reported, and queries run on
the rows inserted (ground truth recomputed for that prefix) -- marked so.

    flock /tmp/bench.lock env -u OPENBLAS_CORETYPE python -m benchmarks.milvus_scale \\
        [--sizes 100000,1000000] [--queries 100]
    python -m benchmarks.milvus_scale --sizes 20000 --queries 20 --out /tmp/ms.json   # smoke check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.ann import AnnIndex, nlist_for, nprobe_for
from retrieval.milvus import INSERT_BATCH, MilvusIndex, connect
from retrieval.pooling import l2_normalize

from .ann import clustered
from .search import latency_samples_ms

K = 10
CANDIDATES = 200  # what the service re-scores: CANDIDATES_PER_RESULT x k, at least 200
DOCS = Path(__file__).resolve().parents[1] / "docs"
PARTIAL = Path(tempfile.gettempdir()) / "milvus_scale.partial.json"


# ----------------------------------------------------------------------------- machine
def rss_mb(pid: int | str = "self") -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(("MemTotal:", "MemAvailable:")):
                mem[line.split(":")[0]] = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    from importlib.metadata import version

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_total_gb": mem.get("MemTotal"),
            "mem_available_gb_at_start": mem.get("MemAvailable"), "python": platform.python_version(),
            "pymilvus": version("pymilvus"), "milvus_lite": version("milvus-lite"), "faiss": version("faiss-cpu"),
            "numpy": np.__version__, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "loadavg_at_start": load()}


def dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 1)


# ----------------------------------------------------------------------------- measuring
def latencies(fn, queries: np.ndarray) -> dict:
    """Single-query latency: median and p95 in ms, one warm-up query first."""
    times = latency_samples_ms(fn, queries)
    return {"median_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[min(len(times) - 1, int(np.ceil(0.95 * len(times))) - 1)], 2)}


def exact_top(gallery: np.ndarray, queries: np.ndarray, k: int, block: int = 100_000) -> np.ndarray:
    """Exact inner-product top-k row numbers, best first, scanning the gallery in blocks."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(gallery), block):
        scores = queries @ gallery[s:s + block].T
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], 1)
        best_i = np.concatenate([best_i, part + s], 1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall(found: list[np.ndarray], truth: np.ndarray) -> dict:
    """Share of the exact top 10 among all candidates, and among the first 10."""
    cand = [len(set(map(int, f)) & set(map(int, t))) / K for f, t in zip(found, truth)]
    top = [len(set(map(int, f[:K])) & set(map(int, t))) / K for f, t in zip(found, truth)]
    return {"recall_at_10_in_200": round(float(np.mean(cand)), 4), "top10_overlap": round(float(np.mean(top)), 4)}


def exact_numpy(gallery: np.ndarray, queries: np.ndarray) -> dict:
    def one(q):
        scores = gallery @ q[0]
        part = np.argpartition(-scores, K)[:K]
        return part[np.argsort(-scores[part])]

    return {"engine": "exact numpy", **latencies(one, queries), "recall_at_10_in_200": 1.0, "top10_overlap": 1.0,
            "loadavg": load()}


def faiss_ivf(ids: np.ndarray, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    t = time.perf_counter()
    ann = AnnIndex.build(ids, gallery)
    build_s = time.perf_counter() - t
    found = [ann.search(q[None], CANDIDATES)[0] for q in queries]
    row = {"engine": "faiss IVF (in process)", "nlist": ann.index.nlist, "nprobe": ann.nprobe,
           "build_s": round(build_s, 1), "inserts_per_s": round(len(ids) / build_s),
           **latencies(lambda q: ann.search(q, CANDIDATES), queries), **recall(found, truth),
           "loadavg": load(), **rss_mb()}
    ann = None  # free the index before the next engine is measured
    gc.collect()
    return row


def milvus_fill(index: MilvusIndex, ids: np.ndarray, gallery: np.ndarray, cap_s: float, chunk: int = 20_000) -> dict:
    """``MilvusIndex.add`` in chunks (each its own 2,000-row batches), stopping after ``cap_s``."""
    t0 = time.perf_counter()
    progress = []
    done = 0
    capped = False
    for s in range(0, len(ids), chunk):
        index.add(ids[s:s + chunk], gallery[s:s + chunk])
        done = min(len(ids), s + chunk)
        elapsed = time.perf_counter() - t0
        if done % 100_000 == 0 or done == len(ids):
            progress.append({"rows": done, "s": round(elapsed, 1)})
            print(json.dumps({"milvus_insert": progress[-1], "loadavg": load(), **rss_mb()}), flush=True)
        if elapsed > cap_s and done < len(ids):
            capped = True
            progress.append({"rows": done, "s": round(elapsed, 1)})
            break
    insert_s = time.perf_counter() - t0
    rate = done / insert_s
    return {"rows_inserted": done, "insert_s": round(insert_s, 1), "inserts_per_s": round(rate),
            "capped": capped, "extrapolated_full_insert_s": round(len(ids) / rate) if capped else None,
            "insert_progress": progress}


def milvus_queries(index: MilvusIndex, queries: np.ndarray, truth: np.ndarray) -> dict:
    """One timed pass of ``MilvusIndex.search(q, 200)`` (ids + vectors) giving latency and recall,
    then a shorter pass asking for ids only."""
    t = time.perf_counter()
    next(index.search(queries[:1], CANDIDATES))
    first_s = time.perf_counter() - t
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        ids, _ = next(index.search(q[None], CANDIDATES))
        times.append(1000 * (time.perf_counter() - t))
        found.append(ids)
    times.sort()
    p95 = times[min(len(times) - 1, int(np.ceil(0.95 * len(times))) - 1)]

    def ids_only(q):
        return index.client.search(index.name, data=q.astype(np.float32).tolist(), limit=CANDIDATES,
                                   search_params={"metric_type": "IP"})

    bare = latencies(ids_only, queries[:20])
    return {"first_query_s": round(first_s, 2), "median_ms": round(statistics.median(times), 2),
            "p95_ms": round(p95, 2), "ids_only_median_ms": bare["median_ms"], "ids_only_p95_ms": bare["p95_ms"],
            **recall(found, truth)}


def unflushed(index: MilvusIndex, queries: np.ndarray, few: int = 5) -> dict:
    """Right after the last upsert, before any flush: a few queries only (the rows still in Lite's
    memtable are turned from Python lists into an array on every search), then the flush itself."""
    times = []
    for q in queries[:few]:
        t = time.perf_counter()
        list(index.search(q[None], CANDIDATES))
        times.append(1000 * (time.perf_counter() - t))
    t = time.perf_counter()
    index.client.flush(index.name)
    flush_s = time.perf_counter() - t
    return {"unflushed_queries": len(times), "unflushed_median_ms": round(statistics.median(times), 1),
            "unflushed_max_ms": round(max(times), 1), "flush_s": round(flush_s, 1)}


def milvus_lite_file(ids, gallery, queries, truth, tmp: Path, cap_s: float) -> dict:
    from milvus_lite.server_manager import server_manager_instance

    db = tmp / "m.db"
    t = time.perf_counter()
    client = connect(str(db))
    index = MilvusIndex.open(client, "bench", gallery.shape[1])
    open_s = time.perf_counter() - t
    fill = milvus_fill(index, ids, gallery, cap_s)
    n = fill["rows_inserted"]
    if fill["capped"]:
        truth = exact_top(gallery[:n], queries, K)
    count = index.count()
    row = {"engine": "Milvus Lite file (in process)", "open_s": round(open_s, 2), **fill, "count": count,
           "build_s": fill["insert_s"], **unflushed(index, queries), "after_flush_loadavg": load(),
           **milvus_queries(index, queries, truth), "loadavg": load(), **rss_mb()}
    print(json.dumps({"n": len(ids), **row}), flush=True)
    client.close()
    # pymilvus runs Lite as a gRPC server on a thread of this process, kept per path after close():
    # release it so that re-opening really reads the file again, as a restarted service would.
    server_manager_instance.release_server(str(db))
    index = client = None  # release the file before it is re-opened
    gc.collect()
    row["disk_mb"] = dir_mb(tmp)
    row["rss_after_release_mb"] = rss_mb()["rss_mb"]
    t = time.perf_counter()
    client = connect(str(db))
    index = MilvusIndex.open(client, "bench", gallery.shape[1], create=False)
    reopen_count = index.count()
    next(index.search(queries[:1], CANDIDATES))
    row["reopen_to_first_answer_s"] = round(time.perf_counter() - t, 2)
    row["reopen_count"] = reopen_count
    row["reopen_median_ms"] = latencies(lambda q: list(index.search(q, CANDIDATES)), queries[:20])["median_ms"]
    row.update({"after_reopen_" + k: v for k, v in rss_mb().items()})
    client.close()
    server_manager_instance.release_server(str(db))
    index = client = None
    gc.collect()
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def milvus_lite_server(ids, gallery, queries, truth, tmp: Path, cap_s: float) -> dict:
    data = tmp / "server"
    data.mkdir()
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        t = time.perf_counter()
        while True:
            try:
                client = connect(f"http://127.0.0.1:{port}", timeout=2.0)
                client.list_collections()
                break
            except Exception:
                if proc.poll() is not None or time.perf_counter() - t > 120:
                    raise RuntimeError(f"Milvus Lite server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        start_s = time.perf_counter() - t
        index = MilvusIndex.open(client, "bench", gallery.shape[1])
        fill = milvus_fill(index, ids, gallery, cap_s)
        if fill["capped"]:
            truth = exact_top(gallery[:fill["rows_inserted"]], queries, K)
        row = {"engine": "Milvus Lite gRPC server (local)", "server_start_s": round(start_s, 1), **fill,
               "count": index.count(), "build_s": fill["insert_s"], **unflushed(index, queries),
               "after_flush_loadavg": load(), **milvus_queries(index, queries, truth),
               "loadavg": load(), "client_" + "rss_mb": rss_mb()["rss_mb"],
               "server_rss_mb": rss_mb(proc.pid)["rss_mb"], "server_peak_rss_mb": rss_mb(proc.pid)["peak_rss_mb"],
               "disk_mb": dir_mb(data)}
        client.close()
        return row
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ----------------------------------------------------------------------------- report
def fmt(v, spec=""):
    return "—" if v is None else format(v, spec)


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = [
        "# Milvus Lite against faiss IVF as the candidate proposer",
        "",
        f"`{out['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_total_gb']} GB RAM, shared with other work "
        f"(load average {m['loadavg_at_start']} at the start, {out['loadavg_at_end']} at the end; per-row "
        "figures below). pymilvus " f"{m['pymilvus']}, milvus-lite {m['milvus_lite']} (pure-Python Lite), "
        f"faiss-cpu {m['faiss']}, numpy {m['numpy']}; `OPENBLAS_CORETYPE` "
        f"{'unset' if m['OPENBLAS_CORETYPE'] is None else m['OPENBLAS_CORETYPE']}.",
        "",
        f"Data: clustered low-rank synthetic unit vectors as in `benchmarks/ann.py` (d={out['dim']}, "
        f"{out['per_cluster']} per cluster); {out['queries']} queries are held-out vectors of the same clusters, "
        "perturbed (noise 0.01), never in the gallery. Every engine gets the same vectors. Latency is one query "
        f"at a time (median and p95 of {out['queries']}), top {CANDIDATES} candidates, the number the service "
        "re-scores exactly. *recall@10 in 200*: share of the exact inner-product top 10 (numpy, in blocks) among "
        "the 200 candidates, i.e. what exact re-scoring can recover; *top-10 overlap*: the proposer's own first "
        "10. Milvus latency is `MilvusIndex.search` as the service calls it (ids and the stored vectors come "
        "back); *ids only* is the same search without the vectors. Build for faiss is `AnnIndex.build` (train + "
        "add); for Milvus it is `MilvusIndex.add` of every row in its 2,000-row upserts. *Before flush*: "
        "median of 5 queries right after the last upsert, as `MilvusIndex.add` leaves the collection (Lite keeps "
        "up to 128 MB of recent rows, ~25k rows of 1280-d, in a memtable of Python lists that it converts to an "
        "array on every search); then `client.flush` (timed) seals them into segments (their HNSW indexes then "
        "build in the background), and the "
        "median/p95/recall columns are measured after it. RSS of the in-process rows includes the gallery "
        "array itself (N x 1280 x 4 bytes). A `.db` URI makes pymilvus start Lite as a gRPC server on a thread "
        "of the calling process, so the file variant also goes through gRPC on the loopback.",
        "",
        "| N | engine | build / insert s | rows/s | before flush: ms/query | flush s | median ms | p95 ms "
        "| ids only median ms | recall@10 in 200 | top-10 overlap | RSS MB | load avg (1 min) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for res in out["results"]:
        for r in res["rows"]:
            build = r.get("build_s")
            if r.get("capped"):
                build = f"{r['insert_s']} for {r['rows_inserted']:,} rows (**capped**; full ≈ {r['extrapolated_full_insert_s']} s)"
            rss = r.get("rss_mb") or r.get("server_rss_mb")
            if r.get("server_rss_mb") is not None:
                rss = f"{r['server_rss_mb']} server + {r['client_rss_mb']} client"
            lines.append(
                f"| {res['n']:,} | {r['engine']} | {fmt(build)} | {fmt(r.get('inserts_per_s'), ',')} "
                f"| {fmt(r.get('unflushed_median_ms'))} | {fmt(r.get('flush_s'))} | {r['median_ms']} | {r['p95_ms']} | {fmt(r.get('ids_only_median_ms'))} "
                f"| {r['recall_at_10_in_200']} | {r['top10_overlap']} | {fmt(rss)} | {r['loadavg'][0]} |")
    lines += [""]
    for res in out["results"]:
        extra = []
        for r in res["rows"]:
            if r["engine"].startswith("faiss"):
                extra.append(f"faiss IVF: {r['nlist']} lists, nprobe {r['nprobe']} (`nlist_for`/`nprobe_for`)")
            if r["engine"].startswith("Milvus Lite file"):
                reopen = (f"re-opened to the first answer in {r['reopen_to_first_answer_s']} s "
                          f"(count {r['reopen_count']:,}; {r['reopen_median_ms']} ms median afterwards; "
                          f"RSS {r['after_reopen_rss_mb']} MB)" if "reopen_median_ms" in r
                          else f"re-open not measured: {r.get('reopen_note', 'missing')}")
                extra.append(f"Lite file: {fmt(r.get('disk_mb'))} MB on disk, collection opened in {r['open_s']} s, "
                             f"{reopen}, insert progress "
                             + ", ".join(f"{p['rows']:,} rows at {p['s']} s" for p in r["insert_progress"]))
                if r.get("capped"):
                    extra.append(f"**The Lite insert at N={res['n']:,} was stopped after {r['insert_s']} s "
                                 f"(cap {out['insert_cap_s']} s) at {r['rows_inserted']:,} rows; the full insert "
                                 f"would take about {r['extrapolated_full_insert_s']} s at that rate. Its query "
                                 f"figures are over the {r['rows_inserted']:,} rows inserted, with the ground "
                                 "truth recomputed for them, not over the full gallery**")
            if r["engine"].startswith("Milvus Lite gRPC"):
                extra.append(f"Lite server: started in {r['server_start_s']} s, {r['disk_mb']} MB on disk, "
                             f"server peak RSS {r['server_peak_rss_mb']} MB")
        lines.append(f"- N={res['n']:,}: peak RSS of this process {res['peak_rss_mb']} MB; " + "; ".join(extra) + ".")
    lines += ["", *[f"- {n}" for n in out.get("notes", []) + derived_notes(out)], "",
              "## What this shows, and what it cannot", "",
              "Shown here, on one 2-core machine: how Milvus **Lite** behaves as a single-process store "
              "(insert rate, query latency, memory, disk, re-opening a file); that the project's `MilvusIndex` "
              "works unchanged against a Lite file and a Lite gRPC server (one client API: create with "
              "AUTOINDEX/IP, upsert in batches, count, search returning ids and vectors); and the recall of the "
              "candidates it proposes against exact search, next to faiss IVF on the same vectors.", "",
              "Not shown, and only a real Milvus Standalone/Distributed deployment can show it: throughput "
              "with query and data nodes spread over machines, concurrent clients, galleries larger than one "
              "box's memory (segments spread across nodes, disk-based indexes), the index types a cluster picks "
              "for AUTOINDEX and their recall there, and availability (node loss, replicas, rolling upgrades). "
              "Milvus Lite is a pure-Python re-implementation (faiss per segment underneath): its figures say "
              "nothing about the C++ server's speed, in either direction.", ""]
    return "\n".join(lines)


def derived_notes(out: dict) -> list[str]:
    """What the figures themselves say that a reader could miss."""
    notes = [
        "How Lite answers (milvus-lite 3.x source, `index/factory.py`, `engine/collection.py`): with faiss "
        "installed, `AUTOINDEX` becomes a faiss HNSW index per sealed segment (M 16, efConstruction 200, "
        "ef 64 at search; not FLAT), built on a single background thread after each flush or compaction "
        "(segments of at most 100,000 rows). Until a segment's index is built it is searched by brute force, "
        "and rows still in the memtable are converted from Python lists on every search. So the post-flush "
        "columns are the collection right after publishing, while indexes build behind it; the re-open "
        "figures are closer to a settled collection.",
    ]
    for res in out["results"]:
        for r in res["rows"]:
            if r["engine"].startswith("Milvus Lite file") and r.get("reopen_median_ms"):
                notes.append(f"N={res['n']:,}: Lite file median {r['median_ms']} ms/query right after the flush, "
                             f"{r['reopen_median_ms']} ms over 20 queries after re-opening the file "
                             f"(re-open to first answer {r['reopen_to_first_answer_s']} s).")
    m = out["machine"]
    notes.append(f"The machine was shared: load average {m['loadavg_at_start'][0]} at the start and "
                 f"{out['loadavg_at_end'][0]} at the end on {m['cores']} cores, with other sessions' tests and "
                 "benchmarks running beside this one (`flock /tmp/bench.lock` only serialises the jobs that take "
                 "the lock). Absolute times are inflated by that, for every engine alike; compare engines within "
                 "a row group, and see docs/ann.json for quieter exact/IVF figures.")
    return notes


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--server-sizes", default=None, help="sizes that also run the gRPC server (default: the smallest)")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--per-cluster", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--insert-cap-s", type=float, default=900, help="stop a Milvus insert after this long")
    parser.add_argument("--out", default=str(DOCS / "milvus_scale.json"), help="JSON path; markdown beside it (.md)")
    parser.add_argument("--render", action="store_true", help="only re-write the markdown from the JSON at --out")
    args = parser.parse_args()
    if args.render:
        json_path = Path(args.out)
        json_path.with_suffix(".md").write_text(markdown(json.loads(json_path.read_text())))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    server_sizes = {int(s) for s in args.server_sizes.split(",")} if args.server_sizes else {min(sizes)}

    command = "flock /tmp/bench.lock env -u OPENBLAS_CORETYPE python -m benchmarks.milvus_scale " + " ".join(sys.argv[1:])
    out = {"command": command.strip(), "machine": machine(), "dim": args.dim, "per_cluster": args.per_cluster,
           "noise": args.noise, "queries": args.queries, "k": K, "candidates": CANDIDATES,
           "insert_cap_s": args.insert_cap_s, "insert_batch": INSERT_BATCH, "results": [], "notes": []}
    print(json.dumps(out["machine"]), flush=True)
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="milvus_scale_", dir="/tmp"))
    try:
        for n in sizes:
            t = time.perf_counter()
            data = clustered(n + args.queries, args.dim, max(1, n // args.per_cluster), args.noise, rng)
            gallery = data[:n]
            queries = l2_normalize(data[n:] + 0.01 * rng.standard_normal((args.queries, args.dim), dtype=np.float32))
            ids = np.arange(n, dtype=np.int64)
            gen_s = time.perf_counter() - t
            t = time.perf_counter()
            truth = exact_top(gallery, queries, K)
            truth_s = time.perf_counter() - t
            rows = [exact_numpy(gallery, queries)]
            print(json.dumps({"n": n, **rows[-1]}), flush=True)
            rows.append(faiss_ivf(ids, gallery, queries, truth))
            print(json.dumps({"n": n, **rows[-1]}), flush=True)
            d = tmp / f"lite_{n}"
            d.mkdir()
            rows.append(milvus_lite_file(ids, gallery, queries, truth, d, args.insert_cap_s))
            print(json.dumps({"n": n, **rows[-1]}), flush=True)
            shutil.rmtree(d, ignore_errors=True)
            if n in server_sizes:
                d = tmp / f"server_{n}"
                d.mkdir()
                rows.append(milvus_lite_server(ids, gallery, queries, truth, d, args.insert_cap_s))
                print(json.dumps({"n": n, **rows[-1]}), flush=True)
                shutil.rmtree(d, ignore_errors=True)
            out["results"].append({"n": n, "data_gen_s": round(gen_s, 1), "truth_s": round(truth_s, 1),
                                   "nlist": nlist_for(n), "nprobe": nprobe_for(nlist_for(n)),
                                   "peak_rss_mb": rss_mb()["peak_rss_mb"], "rows": rows})
            del data, gallery, queries, ids, truth
            gc.collect()
            PARTIAL.write_text(json.dumps(out, indent=2))  # what a killed run had finished
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_at_end"] = load()
    out["wall_s"] = round(time.perf_counter() - start, 1)
    json_path = Path(args.out)
    json_path.write_text(json.dumps(out, indent=2))
    PARTIAL.unlink(missing_ok=True)
    json_path.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()

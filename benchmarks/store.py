"""Store scale: insert N random 1280-d embeddings, then load them for search.

Reports insert throughput, the cold load of the (N, 1280) float32 matrix
(first ``gallery()`` call in a fresh process-level Store), the warm cached
load, and database bytes per image. Median of ``--repeats`` loads.

    python -m benchmarks.store [--n 100000] [--repeats 3] [--out docs/store.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.backbones import resolve
from retrieval.config import ExtractorConfig
from retrieval.pooling import l2_normalize
from retrieval.store import NewMember, Store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/store.json")
    args = parser.parse_args()

    path = Path(tempfile.mkdtemp(prefix="bench-store-")) / "s.sqlite"
    rng = np.random.default_rng(0)
    cfg = resolve(ExtractorConfig())
    with Store(path) as store:
        cid = store.collection_id("bench", create=True)
        config_id = store.config_id(cfg, args.dim)
        started = time.perf_counter()
        for start in range(0, args.n, args.batch):
            vectors = l2_normalize(rng.normal(size=(min(args.batch, args.n - start), args.dim)).astype(np.float32))
            store.write_batch(cid, config_id, [
                NewMember(f"{start + i:064x}", f"img{start + i}.jpg", None, f"c{(start + i) % 10}", 224, 224, 50_000, v)
                for i, v in enumerate(vectors)])
        insert_s = time.perf_counter() - started

    cold = []
    for _ in range(args.repeats):
        with Store(path) as store:
            t = time.perf_counter()
            gallery = store.gallery(cid, config_id)
            cold.append(time.perf_counter() - t)
            assert gallery.vectors.shape == (args.n, args.dim)
            t = time.perf_counter()
            store.gallery(cid, config_id)
            warm = time.perf_counter() - t
    size = sum(p.stat().st_size for p in path.parent.glob("s.sqlite*"))
    # Resident memory of a fresh process with the gallery loaded and searched,
    # as the app holds it (VmRSS after the load; TensorFlow not loaded).
    probe = ("import re; from retrieval.store import Store; from retrieval.ranking import Ranker; "
             f"s = Store({str(path)!r}); g = s.gallery({cid}, {config_id}); r = Ranker(g.vectors); "
             "r.search(g.vectors[:1], 10); "
             "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    rss_mb = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout) / 1024
    result = {"command": f"python -m benchmarks.store --n {args.n} --repeats {args.repeats}", "n": args.n, "dim": args.dim,
              "insert_s": round(insert_s, 2), "insert_per_s": round(args.n / insert_s),
              "load_cold_s_median": round(statistics.median(cold), 3), "load_warm_ms": round(1000 * warm, 3),
              "db_bytes_per_image": round(size / args.n), "rss_mb_loaded": round(rss_mb), "repeats": args.repeats}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

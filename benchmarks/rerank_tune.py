"""Tuning the re-rankers' parameters on real vectors, to choose size-adaptive defaults.

Sets (lite1, GeM p=3, centred; vectors cached by other benchmarks):
- demo: the 70 labelled demo photos (12 classes), leave-one-out;
- photos: the realistic photo set of ``benchmarks.photoset`` (1200, 16 classes), leave-one-out,
  and a 300-image random subset of it (a smaller gallery, classes of ~19);
- fmnist-2k: Fashion-MNIST, the first 2000 test images, leave-one-out (classes of ~200);
- fmnist: held-out, test queries (first --queries) against the 60,000 training images.
Leave-one-out is the honest one (``Ranker``: a query's own row is absent from every graph).

    python -m benchmarks.rerank_tune [--sets demo,photos,photos300,fmnist-2k,fmnist] [--queries 2000]
        [--out docs/rerank_tuning.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.pop("OPENBLAS_CORETYPE", None)

import numpy as np  # noqa: E402

from retrieval.evaluation import exact_duplicate_groups, leave_one_out, query_gallery  # noqa: E402
from retrieval.pooling import l2_normalize  # noqa: E402
from retrieval.ranking import Ranker, build_ranker  # noqa: E402
from retrieval.rerank import Lazy  # noqa: E402
from retrieval.rerank.diffusion import Diffusion  # noqa: E402
from retrieval.rerank.kreciprocal import KReciprocal  # noqa: E402
from retrieval.rerank.neighbours import EXTRA, Neighbours  # noqa: E402

RQ = Path("benchmarks/out/runtime_quality")


def demo_vectors() -> tuple[np.ndarray, list[str]]:
    """The demo photos embedded by the default configuration (cached under benchmarks/out/rerank)."""
    folder = Path("benchmarks/out/rerank")
    if not (folder / "demo_labels.json").exists():
        import tempfile

        from retrieval import ExtractorConfig, Studio

        studio = Studio(Path(tempfile.mkdtemp(prefix="bench-rerank-")) / "d.sqlite", device="cpu")
        cfg = studio.resolve(ExtractorConfig())
        studio.index("assets/demo", "demo", cfg)
        gallery = studio.gallery("demo", cfg)[2]
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "demo_lite1_gem3.npy", gallery.vectors)
        (folder / "demo_labels.json").write_text(json.dumps(list(gallery.labels)))
    return np.load(folder / "demo_lite1_gem3.npy"), json.loads((folder / "demo_labels.json").read_text())


def load(name: str, queries: int):
    """(gallery vectors, gallery labels, query vectors or None, query labels or None)."""
    if name == "demo":
        return (*demo_vectors(), None, None)
    if name.startswith("photos"):
        folder = Path("benchmarks/out/photoset")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        labels = [f.relative_to(folder).parts[0] for f in files]
        v = np.load(RQ / f"photos_keras_{len(files)}.npy")
        if name != "photos":
            keep = np.sort(np.random.default_rng(0).choice(len(v), int(name[6:]), replace=False))
            v, labels = v[keep], [labels[i] for i in keep]
        return v, labels, None, None
    from . import fashion_mnist

    _, yt = fashion_mnist.load("t10k")
    t = np.load(RQ / "fmnist_keras_t10k_10000.npy")
    if name == "fmnist-2k":
        return t[:2000], [str(y) for y in yt[:2000]], None, None
    _, yg = fashion_mnist.load("train")
    g = np.load(RQ / "fmnist_keras_train_60000.npy")
    return g, [str(y) for y in yg], t[:queries], [str(y) for y in yt[:queries]]


def evaluate(ranker: Ranker, g, gl, q, ql) -> float:
    if q is None:
        return leave_one_out(gl, lambda rows, ex: ranker.full_order(g[rows], ex), exact_duplicate_groups(g)).map
    return query_gallery(ql, gl, lambda rows: ranker.keys(q[rows]), chunk=500).map


def run(name: str, queries: int, grid: str) -> list[dict]:
    g, gl, q, ql = load(name, queries)
    g = l2_normalize(g)
    q = l2_normalize(q) if q is not None else None
    rows = []

    def record(method: str, params: dict, value: float, started: float):
        row = {"set": name, "n": len(g), "method": method, **params, "map": round(value, 4),
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for rerank in ("none", "qe", "dba"):
        started = time.perf_counter()
        record(rerank, {}, evaluate(build_ranker(g, "cosine", rerank, "center"), g, gl, q, ql), started)
    base = build_ranker(g, "cosine", "none", "center")
    space = base.base
    big = len(g) > 20000
    shared = Neighbours(space, min(len(g) - 1, 80 + EXTRA))
    if "diffusion" in grid:
        ks = (10, 30, 50) if big else (5, 10, 20, 30, 50) if len(g) > 500 else (3, 5, 8, 10, 15, 20, 30, 50)
        for k in [k for k in ks if k < len(g)]:
            state = Diffusion(space, k=k, neighbours=shared)
            for alpha in ((0.9,) if big else (0.8, 0.9) if len(g) > 500 else (0.8, 0.9, 0.95)):
                state.alpha = alpha
                started = time.perf_counter()
                ranker = build_ranker(g, "cosine", "diffusion", "center", graph=Lazy(lambda s=state: s))
                record("diffusion", {"k": k, "alpha": alpha}, evaluate(ranker, g, gl, q, ql), started)
    if "kreciprocal" in grid:
        small = len(g) <= 500
        k1s = (3, 5, 8, 10, 15, 20, 30) if small else (5, 10, 20)
        for k1 in [k for k in k1s if k < len(g)]:
            for k2 in sorted({1, max(1, k1 // 3), 6}) if small else (6,):
                state = KReciprocal(space, k1=k1, k2=k2, neighbours=shared)
                for lam in (0.1, 0.3, 0.6) if small else (0.3,):
                    state.lam = lam
                    started = time.perf_counter()
                    ranker = build_ranker(g, "cosine", "kreciprocal", "center", graph=Lazy(lambda s=state: s))
                    record("kreciprocal", {"k1": k1, "k2": k2, "lambda": lam}, evaluate(ranker, g, gl, q, ql),
                           started)
    return rows


def render(result: dict) -> str:
    """The tuning table: per set, every configuration's mAP, best first within each method."""
    lines = ["# Re-ranker tuning (measured)", "", f"    {result['command']}", "",
             "Leave-one-out is the honest one: a query's own row is absent from every gallery-side structure.", ""]
    sets = []
    for r in result["rows"]:
        if r["set"] not in sets:
            sets.append(r["set"])
    for name in sets:
        rows = [r for r in result["rows"] if r["set"] == name]
        base = next(r["map"] for r in rows if r["method"] == "none")
        lines += [f"## {name} (N = {rows[0]['n']:,})", "", "| method | parameters | mAP | vs none |", "|---|---|---:|---:|"]
        for r in sorted(rows, key=lambda r: (r["method"] not in ("none", "qe", "dba"), r["method"], -r["map"])):
            params = ", ".join(f"{k}={r[k]}" for k in ("k", "alpha", "k1", "k2", "lambda") if k in r)
            lines.append(f"| {r['method']} | {params} | {r['map']:.4f} | {r['map'] - base:+.4f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default="demo,photos300,photos,fmnist-2k,fmnist")
    parser.add_argument("--grid", default="diffusion,kreciprocal")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", default="docs/rerank_tuning.json")
    parser.add_argument("--render", action="store_true", help="only write the markdown from --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.render:
        out.with_suffix(".table.md").write_text(render(json.loads(out.read_text())))
        return
    result = json.loads(out.read_text()) if out.exists() else {"rows": []}
    result["command"] = f"python -m benchmarks.rerank_tune --sets {args.sets} --queries {args.queries}"
    for name in args.sets.split(","):
        result["rows"] = [r for r in result["rows"] if r["set"] != name] + run(name, args.queries, args.grid)
        out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".table.md").write_text(render(result))


if __name__ == "__main__":
    main()

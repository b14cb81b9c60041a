"""Does the runtime ``auto`` picks keep retrieval quality? mAP against Keras f32, two sets.

- Fashion-MNIST, the full split: 10,000 test queries against the 60,000
  training images, the default configuration (lite1, GeM, centred, alpha-QE
  with cosine), queries never in the gallery.
- The realistic photo set of ``benchmarks.photoset`` (labelled), leave-one-out.

Each runtime embeds the same inputs through the project's own runtime layer
(``Studio.backbone(cfg, runtime=...)``); vectors are cached under
``benchmarks/out/runtime_quality`` so a second run only evaluates. The gate in
the issue: a reduced precision may be the default only if its mAP loss is at
most 0.005 on both sets. ``OPENBLAS_CORETYPE`` is unset for this process.

    python -m benchmarks.runtime_quality [--runtimes keras,openvino-bf16] [--out docs/runtime_quality.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.pop("OPENBLAS_CORETYPE", None)

import numpy as np  # noqa: E402

OUT = Path("benchmarks/out/runtime_quality")
BATCH = 64


def _embed_arrays(backbone, images: np.ndarray, size: int, label: str) -> np.ndarray:
    from .quality import to_inputs

    out = np.empty((len(images), backbone.dim), np.float32)
    started = time.perf_counter()
    for i in range(0, len(images), BATCH):
        out[i:i + BATCH] = backbone.embed(to_inputs(images[i:i + BATCH], size))
        if i % (BATCH * 100) == 0:
            print(f"{label}: {i + BATCH}/{len(images)} ({(i + BATCH) / (time.perf_counter() - started):.0f} img/s)",
                  flush=True)
    return out


def _cached(path: Path, make) -> np.ndarray:
    if path.exists():
        return np.load(path)
    vectors = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def fashion(studio, cfg, runtime: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, list, list]:
    from . import fashion_mnist

    backbone = studio.backbone(cfg, runtime=runtime)
    vectors, labels = {}, {}
    for split in ("t10k", "train"):
        images, y = fashion_mnist.load(split, limit)
        labels[split] = [str(v) for v in y]
        vectors[split] = _cached(OUT / f"fmnist_{runtime}_{split}_{len(images)}.npy",
                                 lambda: _embed_arrays(backbone, images, cfg.input_size, f"{runtime} {split}"))
    return vectors["t10k"], vectors["train"], labels["t10k"], labels["train"]


def photos(studio, cfg, runtime: str, folder: Path) -> tuple[np.ndarray, list]:
    from retrieval.decode import decode

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    backbone = studio.backbone(cfg, runtime=runtime)

    def make():
        pixels = [decode(f, cfg.input_size).pixels for f in files]
        return np.concatenate([backbone.embed(np.stack(pixels[i:i + 32])) for i in range(0, len(pixels), 32)])

    vectors = _cached(OUT / f"photos_{runtime}_{len(files)}.npy", make)
    return vectors, [f.relative_to(folder).parts[0] for f in files]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtimes", default="keras,openvino-bf16,openvino-f32")
    parser.add_argument("--fmnist-runtimes", default="keras,openvino-bf16",
                        help="f32 conversions match Keras to ~1e-6, so the 70k pass is spent on reduced precision")
    parser.add_argument("--limit", type=int, default=None, help="first N of each Fashion-MNIST split (smoke runs)")
    parser.add_argument("--photos", default="benchmarks/out/photoset")
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--out", default="docs/runtime_quality.json")
    args = parser.parse_args()

    from retrieval import ExtractorConfig, SearchConfig, Studio
    from retrieval.evaluation import exact_duplicate_groups, leave_one_out, query_gallery
    from retrieval.pooling import l2_normalize
    from retrieval.ranking import build_ranker
    from retrieval.runtime import parity

    from . import photoset

    photoset.build(Path(args.photos), n=args.n)
    scfg = SearchConfig()
    studio = Studio(Path(tempfile.mkdtemp(prefix="bench-rtq-")) / "q.sqlite", device="cpu")
    cfg = studio.resolve(ExtractorConfig())
    result = {"command": f"python -m benchmarks.runtime_quality --runtimes {args.runtimes} "
                         f"--fmnist-runtimes {args.fmnist_runtimes}" + (f" --limit {args.limit}" if args.limit else ""),
              "config": cfg.key, "search": {"metric": scfg.metric, "whiten": scfg.whiten, "rerank": scfg.rerank},
              "fashion_mnist": {}, "photos": {}}

    reference = None
    for runtime in args.fmnist_runtimes.split(","):
        q, g, ql, gl = fashion(studio, cfg, runtime, args.limit)
        q, g = l2_normalize(q), l2_normalize(g)
        ranker = build_ranker(g, scfg.metric, scfg.rerank, scfg.whiten)
        report = query_gallery(ql, gl, lambda rows, q=q, r=ranker: r.keys(q[rows]), chunk=500)
        row = {"runtime": studio.backbone(cfg, runtime=runtime).runtime, "map": round(report.map, 4),
               "p_at_10": round(report.p_at[10], 4), "queries": report.queries, "gallery": len(g)}
        if reference is None:
            reference = (q, g, report.map)
        else:
            agree = parity.measure(reference[0][:2000], q[:2000], ql[:2000])
            row["map_loss"] = round(reference[2] - report.map, 4)
            row["median_cosine"] = round(agree.median_cosine, 5)
        result["fashion_mnist"][runtime] = row
        print(json.dumps(row), flush=True)

    reference = None
    for runtime in args.runtimes.split(","):
        v, labels = photos(studio, cfg, runtime, Path(args.photos))
        v = l2_normalize(v)
        ranker = build_ranker(v, scfg.metric, scfg.rerank, scfg.whiten)
        report = leave_one_out(labels, lambda rows, ex, r=ranker, v=v: r.full_order(v[rows], ex),
                               exact_duplicate_groups(v))
        row = {"runtime": studio.backbone(cfg, runtime=runtime).runtime, "map": round(report.map, 4),
               "queries": report.queries}
        if reference is None:
            reference = (v, report.map)
        else:
            agree = parity.measure(reference[0], v, labels)
            row.update(map_loss=round(reference[1] - report.map, 4), median_cosine=round(agree.median_cosine, 5),
                       min_cosine=round(agree.min_cosine, 4), top10_overlap=round(agree.top10_overlap, 3))
        result["photos"][runtime] = row
        print(json.dumps(row), flush=True)
    studio.close()
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

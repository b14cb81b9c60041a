"""Retrieval quality on Fashion-MNIST, to choose the engine's defaults.

Leave-one-out on the first N test images (default 2000, as in the reference
figures in shared/NOTES.md): every image queries the other N-1. Feature maps
are computed once per backbone and pooled in numpy for each pooling, so the
table compares poolings on identical activations.

    python -m benchmarks.quality [--n 2000] [--out docs/quality.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from retrieval.backbones import REGISTRY
from retrieval.config import METRICS, RERANKS, WHITENINGS
from retrieval.decode import to_pixels
from retrieval.device import resolve
from retrieval.evaluation import exact_duplicate_groups, leave_one_out
from retrieval.pooling import DEFAULT_GEM_P, l2_normalize, pool
from retrieval.ranking import build_ranker

from . import fashion_mnist


def to_inputs(images: np.ndarray, size: int) -> np.ndarray:
    """Grey 28x28 -> RGB size x size, as the studio prepares an image in memory (``decode.to_pixels``)."""
    return np.stack([to_pixels(im, size) for im in images])


def evaluate(vectors: np.ndarray, labels: list[str], metric="cosine", rerank="none", whiten="none") -> dict:
    started = time.perf_counter()
    ranker = build_ranker(vectors, metric, rerank, whiten)
    report = leave_one_out(labels, lambda rows, ex: ranker.full_order(vectors[rows], ex), exact_duplicate_groups(vectors))
    return {"map": round(report.map, 4), "p_at_1": round(report.p_at[1], 4), "p_at_10": round(report.p_at[10], 4),
            "r_at_10": round(report.r_at[10], 4), "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    parser.add_argument("--out", default="docs/quality.json")
    parser.add_argument("--render", action="store_true", help="only re-render the markdown from --out")
    args = parser.parse_args()
    if args.render:
        Path(args.out).with_suffix(".md").write_text(render(json.loads(Path(args.out).read_text())))
        return

    images, labels = fashion_mnist.load("t10k", args.n)
    names = [fashion_mnist.CLASSES[l] for l in labels]
    rows = []

    def record(config: str, **result):
        rows.append({"config": config, **result})
        print(f"{config:<58} mAP {result['map']:.4f}  P@1 {result['p_at_1']:.4f}  P@10 {result['p_at_10']:.4f}  "
              f"R@10 {result['r_at_10']:.4f}  ({result.get('extract_s', 0):.1f} s extract, {result['seconds']:.1f} s eval)",
              flush=True)

    for name in ("pixels", "colorhist"):
        spec = REGISTRY[name]
        t = time.perf_counter()
        vectors = l2_normalize(spec.build().embed(to_inputs(images, spec.input_size)))
        record(name, extract_s=round(time.perf_counter() - t, 2), **evaluate(vectors, names))

    placement = resolve("cpu")
    best = None
    for name in args.backbones.split(","):
        spec = REGISTRY[name]
        backbone = spec.build("gap", DEFAULT_GEM_P, placement)
        t = time.perf_counter()
        x = to_inputs(images, spec.input_size)
        maps = np.concatenate([backbone.feature_maps(x[i:i + 64]) for i in range(0, len(x), 64)])
        extract_s = round(time.perf_counter() - t, 2)
        for kind, p in (("gap", 1.0), ("mac", 0.0), ("gem", 2.0), ("gem", 3.0), ("gem", 4.0)):
            vectors = l2_normalize(pool(maps, kind, p))
            label = f"{name} {kind}" + (f" p={p:g}" if kind == "gem" else "")
            record(label, extract_s=extract_s, **evaluate(vectors, names))
            result = evaluate(vectors, names, whiten="center")
            record(f"{label} · center", extract_s=extract_s, **result)
            if best is None or result["map"] > best[0]:
                best = (result["map"], label, vectors)
        del maps

    # Smaller inputs: faster extraction; does retrieval hold up?
    for name, size in (("efficientnet-lite1", 224), ("efficientnet-lite1", 192), ("efficientnet-lite0", 192)):
        backbone = REGISTRY[name].build("gem", DEFAULT_GEM_P, placement, input_size=size)
        x = to_inputs(images, size)
        backbone.embed(x[:64])
        t = time.perf_counter()
        vectors = l2_normalize(np.concatenate([backbone.embed(x[i:i + 64]) for i in range(0, len(x), 64)]))
        extract_s = round(time.perf_counter() - t, 2)
        record(f"{name} @{size}px gem p=3 · center", extract_s=extract_s, **evaluate(vectors, names, whiten="center"))
        record(f"{name} @{size}px gem p=3 · center · qe", extract_s=extract_s,
               **evaluate(vectors, names, whiten="center", rerank="qe"))

    _, label, vectors = best
    others = [m for m in METRICS if m != "cosine"]
    for metric in others:
        record(f"{label} · {metric}", **evaluate(vectors, names, metric=metric))
    for metric in others:
        record(f"{label} · center · {metric}", **evaluate(vectors, names, metric=metric, whiten="center"))
    for whiten in WHITENINGS:
        for rerank in RERANKS:
            if (whiten, rerank) == ("none", "none"):
                continue
            record(f"{label} · cosine · {whiten} · {rerank}", **evaluate(vectors, names, rerank=rerank, whiten=whiten))

    result = {"n": args.n, "command": f"python -m benchmarks.quality --n {args.n}", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    Path(args.out).with_suffix(".md").write_text(render(result))


def render(result: dict) -> str:
    """The JSON as the markdown table committed in docs/."""
    lines = [
        "# Retrieval quality on Fashion-MNIST",
        "",
        f"Leave-one-out over the first {result['n']} test images (each queries the other {result['n'] - 1}).",
        f"Made by `{result['command']}` on 2 CPU cores; `docs/quality.json` has the raw figures.",
        "",
        "| configuration | mAP | P@1 | P@10 | R@10 | extract s | eval s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['config']} | {r['map']:.4f} | {r['p_at_1']:.4f} | {r['p_at_10']:.4f} | "
                     f"{r['r_at_10']:.4f} | {r.get('extract_s', '')} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

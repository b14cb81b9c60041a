"""Indexing throughput on 2 cores: the seed's loop, the model alone, the project.

Workload: N Fashion-MNIST test images written out as PNG files in class
folders (Debian ``dataset-fashion-mnist``). All three are measured in the
same run, on the same machine, with the default backbone:

- (a) seed: open one image, ``model.predict`` on it, repeat;
- (b) model: ``predict_on_batch`` on tensors already decoded and resized;
- (c) project: ``Studio.index`` from files on disk to rows in SQLite;
- (d) re-index of the same folder, which should compute nothing.

Also: ``import retrieval`` time and the default model's load time (from the
converted-weights cache). Each figure is the median of ``--repeats`` runs.

    python -m benchmarks.indexing [--n 2000] [--repeats 3] [--out docs/indexing.json]
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


def median_of(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed-n", type=int, default=200, help="images for the slow one-at-a-time loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default=None, help="backbone (default: the engine's default)")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--out", default="docs/indexing.json")
    args = parser.parse_args()

    from . import fashion_mnist

    code = "import time; t=time.perf_counter(); import retrieval; from retrieval.device import import_keras; import_keras(); print(time.perf_counter()-t)"
    import_s = median_of(lambda: float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout), args.repeats)

    from retrieval import ExtractorConfig, Studio
    from retrieval.backbones import REGISTRY
    from retrieval.backbones import resolve as resolve_config
    from retrieval.decode import decode
    from retrieval.device import resolve

    cfg = resolve_config(ExtractorConfig(**({"backbone": args.model} if args.model else {}), input_size=args.input_size))
    spec_build = REGISTRY[cfg.backbone].build
    spec_build(cfg.pooling, cfg.gem_p, resolve("cpu"))  # make sure the converted cache exists

    def load_once() -> float:
        t = time.perf_counter()
        spec_build(cfg.pooling, cfg.gem_p, resolve("cpu"))
        return time.perf_counter() - t

    load_s = median_of(load_once, args.repeats)

    images, labels = fashion_mnist.load("t10k", args.n)
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    folder = fashion_mnist.write_folder(work / "fmnist", images, labels)
    files = sorted(folder.rglob("*.png"))

    studio = Studio(work / "warm.sqlite", device="cpu", batch_size=args.batch_size)
    backbone = studio.backbone(cfg)
    size = backbone.input_size
    pixels = np.stack([decode(f, size).pixels for f in files[:512]])
    backbone.embed(pixels[: args.batch_size])  # compile once

    def seed_loop() -> float:
        t = time.perf_counter()
        for f in files[: args.seed_n]:
            x = backbone.preprocess(decode(f, size).pixels[None].astype(np.float32))
            backbone.model.predict(x, verbose=0)
        return args.seed_n / (time.perf_counter() - t)

    def model_alone(batch: int, call) -> float:
        call(pixels[:batch])  # trace this shape once
        t = time.perf_counter()
        for i in range(0, len(pixels), batch):
            call(pixels[i:i + batch])
        return len(pixels) / (time.perf_counter() - t)

    import tensorflow as tf

    traced = tf.function(lambda x: backbone.model(x, training=False))  # the benchmark may be TF-specific

    def tf_function_call(images):
        return traced(tf.constant(backbone.preprocess(images.astype(np.float32)))).numpy()

    runs = []

    def project() -> float:
        s = studio  # model already loaded: measure indexing, not loading
        s.drop_collection("fmnist")  # its images and vectors go with it: the run computes everything again
        t = time.perf_counter()
        report = s.index(folder, "fmnist", cfg)
        elapsed = time.perf_counter() - t
        assert report.computed == len(files), report
        t = time.perf_counter()
        again = s.index(folder, "fmnist", cfg)
        runs.append((elapsed, time.perf_counter() - t, again.computed))
        return len(files) / elapsed

    seed = median_of(seed_loop, args.repeats)
    variants = {}
    for batch in (16, 32, 64):
        backbone.batch_size = batch
        variants[f"predict_on_batch, batch {batch}"] = median_of(lambda: model_alone(batch, backbone.embed), args.repeats)
    backbone.batch_size = args.batch_size
    variants[f"tf.function, batch {args.batch_size}"] = median_of(lambda: model_alone(args.batch_size, tf_function_call), args.repeats)
    best_variant = max(variants, key=variants.get)
    alone = variants[best_variant]
    proj = median_of(project, args.repeats)
    reindex_s = statistics.median(r[1] for r in runs)
    result = {
        "command": f"python -m benchmarks.indexing --n {args.n} --repeats {args.repeats}"
                   + (f" --model {args.model}" if args.model else "") + (f" --input-size {args.input_size}" if args.input_size else ""),
        "config": cfg.key,
        "repeats": args.repeats, "images": len(files), "batch_size": args.batch_size, "workers": studio.workers,
        "import_s": round(import_s, 2), "model_load_s": round(load_s, 2),
        "seed_img_per_s": round(seed, 1), "model_img_per_s": round(alone, 1), "model_best_call": best_variant,
        "model_variants_img_per_s": {k: round(v, 1) for k, v in variants.items()}, "project_img_per_s": round(proj, 1),
        "project_over_model": round(proj / alone, 3), "project_over_seed": round(proj / seed, 2),
        "first_index_s": round(statistics.median(r[0] for r in runs), 2), "reindex_s": round(reindex_s, 2),
        "reindex_computed": runs[-1][2], "device": backbone.device,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Adapting to Fashion-MNIST: the three methods against the frozen backbone.

Training uses the train split only (a tenth of it for early stopping);
queries and gallery come from the test split (leave-one-out over its 10,000
images), the same for every row. Post-processing is centring for every row.

    python -m benchmarks.adapt [--finetune-images 3000] [--out docs/adapt.json]

- head: on the cached lite1 GeM vectors of all 60,000 training images
  (``benchmarks.fashion_full extract`` writes them; computed here if missing);
- scratch: the seed CNN at 32x32 (Fashion-MNIST is 28x28) on all 60,000;
- finetune: lite1's top 2 blocks at 240x240 on a class-balanced subset
  (``--finetune-images``): a full epoch over 60k images at 240 px would take
  about 20 minutes of a 2-core CPU per epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from retrieval import adapt as A
from retrieval.device import import_keras
from retrieval.evaluation import leave_one_out
from retrieval.pooling import DEFAULT_GEM_P, l2_normalize
from retrieval.ranking import build_ranker

from . import fashion_mnist
from .fashion_full import vectors_path
from .quality import to_inputs


def loo_map(vectors: np.ndarray, labels: list[str]) -> dict:
    started = time.perf_counter()
    ranker = build_ranker(vectors, whiten="center")
    report = leave_one_out(labels, lambda rows, ex: ranker.full_order(vectors[rows], ex))
    return {"map": round(report.map, 4), "p_at_1": round(report.p_at[1], 4), "p_at_10": round(report.p_at[10], 4),
            "eval_s": round(time.perf_counter() - started, 1)}


def base_vectors(split: str) -> np.ndarray:
    path = vectors_path("efficientnet-lite1", "gem3", split)
    if not path.exists():
        from .fashion_full import extract

        extract(["efficientnet-lite1"])
    return l2_normalize(np.load(path))


def embed(model, images: np.ndarray, size: int, batch: int = 128) -> np.ndarray:
    out = [np.asarray(model.predict_on_batch(to_inputs(images[i:i + batch], size).astype(np.float32)))
           for i in range(0, len(images), batch)]
    return l2_normalize(np.concatenate(out))


def balanced(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per = n // len(np.unique(labels))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in np.unique(labels)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finetune-images", type=int, default=3000)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--scratch-epochs", type=int, default=15)
    parser.add_argument("--methods", default="head,scratch,finetune")
    parser.add_argument("--out", default="docs/adapt.json")
    args = parser.parse_args()

    train_images, train_y = fashion_mnist.load("train")
    test_images, test_y = fashion_mnist.load("t10k")
    test_labels = [fashion_mnist.CLASSES[i] for i in test_y]
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result["command"] = ("python -m benchmarks.adapt " f"--finetune-images {args.finetune_images} "
                         f"--finetune-epochs {args.finetune_epochs} --scratch-epochs {args.scratch_epochs}")
    rows = {r["method"]: r for r in result.get("rows", [])}

    def save(method: str, **row) -> None:
        rows[method] = {"method": method, **row}
        print(json.dumps(rows[method]), flush=True)
        result["rows"] = list(rows.values())
        out_path.write_text(json.dumps(result, indent=2))
        out_path.with_suffix(".md").write_text(render(result))

    xtest = base_vectors("t10k")
    if "before" not in rows:
        save("before", model="efficientnet-lite1 GeM p=3 (ImageNet, frozen)", train_images=0, train_s=0.0,
             **loo_map(xtest, test_labels))
    methods = args.methods.split(",")
    if "head" in methods:
        xtrain = base_vectors("train")
        fit, val = A.split_by_image([str(v) for v in train_y], 0.1, 0)
        cfg = A.AdaptConfig(method="head", epochs=30)
        started = time.perf_counter()
        weights, log = A.train_head(xtrain[fit], train_y[fit], 10, cfg, val=(xtrain[val], train_y[val]))
        seconds = time.perf_counter() - started
        save("head", model=f"lite1 GeM vectors -> {cfg.heads} x (512 -> 128), CosFace", train_images=len(fit),
             train_s=round(seconds, 1),
             epochs=len(log.history), best_epoch=log.best_epoch, **loo_map(A.apply_head(weights, xtest), test_labels))
    keras = import_keras()
    if "scratch" in methods:
        cfg = A.AdaptConfig(method="scratch", epochs=args.scratch_epochs, scratch_size=32)
        fit, val = A.split_by_image([str(v) for v in train_y], 0.1, 0)
        model = A.build_scratch(keras, cfg)
        started = time.perf_counter()
        x = to_inputs(train_images, 32)
        log = A.train_images(model, x[fit], train_y[fit], 10, cfg, (x[val], train_y[val]))
        seconds = time.perf_counter() - started
        save("scratch", model="seed CNN (Conv 32-64-128 + max-pool, Dense 512) at 32x32, CosFace", train_images=len(fit),
             train_s=round(seconds, 1), epochs=len(log.history), best_epoch=log.best_epoch,
             **loo_map(embed(model, test_images, 32), test_labels))
    if "finetune" in methods:
        from retrieval.backbones import REGISTRY
        from retrieval.device import resolve

        cfg = A.AdaptConfig(method="finetune", epochs=args.finetune_epochs, finetune_blocks=2)
        subset = balanced(train_y, args.finetune_images)
        fit, val = A.split_by_image([str(v) for v in train_y[subset]], 0.1, 0)
        base = REGISTRY["efficientnet-lite1"].build("gem", DEFAULT_GEM_P, resolve("cpu"))
        model = A.build_finetune(keras, base.feature_model, cfg)
        x = to_inputs(train_images[subset], 240)
        started = time.perf_counter()
        log = A.train_images(model, x[fit], train_y[subset][fit], 10, cfg, (x[val], train_y[subset][val]))
        seconds = time.perf_counter() - started
        save("finetune", model=f"lite1 top 2 blocks + GeM + 128, CosFace, {len(subset)} training images",
             train_images=len(fit), train_s=round(seconds, 1), epochs=len(log.history), best_epoch=log.best_epoch,
             **loo_map(embed(model, test_images, 240, 64), test_labels))


def render(result: dict) -> str:
    lines = [
        "# Adapting to Fashion-MNIST",
        "",
        "Trained on the train split (a tenth held out for early stopping); figures are leave-one-out over the",
        "10,000 test images, the same queries for every row, centring as post-processing.",
        f"Made by `{result['command']}` on 2 CPU cores; raw figures in `docs/adapt.json`.",
        "",
        "| method | model | training images | epochs (best) | training s | mAP | P@1 | P@10 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        epochs = f"{r['epochs']} ({r['best_epoch']})" if "epochs" in r else ""
        lines.append(f"| {r['method']} | {r['model']} | {r['train_images']} | {epochs} | {r['train_s']} | "
                     f"{r['map']:.4f} | {r['p_at_1']:.4f} | {r['p_at_10']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

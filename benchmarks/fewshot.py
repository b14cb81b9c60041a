"""Few-shot adaptation: the head trained on a few hundred labels per class (issue 12, part 4).

    flock /tmp/bench.lock env -u OPENBLAS_CORETYPE python -m benchmarks.fewshot [--seeds 0,1,2]
        [--variants legacy,single,ensemble,ensemble60,selftrain] [--data fmnist,photos] [--out docs/fewshot.json]

A run with some variants or data replaces only those rows in the .json; ``--render`` rewrites the .md.

Fashion-MNIST: exactly 300 labelled images per class drawn from the train
split (one draw per seed); the head splits a tenth of them off for
validation, as the service does. Headline: leave-one-out over the 10,000
test images with centring, the protocol of ``benchmarks.adapt`` (frozen lite1
GeM: 0.6029). For seed 0 the frozen, today's and the chosen head are also
scored as held-out test queries against the 60,000 train images as gallery
(``evaluation.query_gallery``, centred on the gallery).

Real photos: ``benchmarks.photoset`` (1,200 views of 16 photos, built if
missing); 10 labelled images per class train, the other 65 per class are the
leave-one-out test set, 3 seeds.

Variants (all CosFace on cached lite1 GeM p=3 vectors, no CNN at training):
- legacy: today's head before this change (one MLP, batch 256, early stopping
  on validation loss, patience 3, at most 30 epochs);
- single: one MLP with the new schedule (cosine decay, the whole schedule run);
- ensemble: the new default, 5 MLPs trained together, cosines averaged;
- ensemble60: the same for 60 epochs instead of 30;
- selftrain: semi-supervised, ``ensemble`` then pseudo-labels for the most
  confident 30% of the 57,000 *unlabelled* train images per class (10-NN vote
  among the labelled ones in the head's space), retrained on both.

Training seconds are wall time of the training call on 2 shared cores (take
the lock, as above, so other benchmarks do not run at the same time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval import adapt as A
from retrieval.device import import_keras
from retrieval.pooling import l2_normalize

from . import fashion_mnist
from .adapt import loo_map
from .fashion_full import evaluate_one, vectors_path

PER_CLASS = 300
PHOTOS = Path("benchmarks/out/photoset")
PHOTO_CACHE = Path("benchmarks/out/fewshot/photos_lite1_gem3.npy")
PHOTO_LABELLED = 10
# Directions measured while choosing (seed 0, one run each, the same test leave-one-out protocol; scratch
# scripts, not rerun here). Kept with the table so the negative results are not tried again blindly.
NOTES = [
    "## Verdict",
    "",
    "- The target of 0.85 mAP from 300 labels per class is **not reached**: the new default head gives",
    "  0.8295 (0.7877 before, +0.042), 0.8309 with 60 epochs; all 54,000 labels give 0.87 (`docs/adapt.md`).",
    "- Training 3,000 images takes 20-45 s on 2 shared cores (the ensemble, 1,230 updates), under the 2 minutes.",
    "- Real photos: the old head did not lift them (0.966 -> 0.963: it stopped early); the new one does",
    "  (0.966 -> 0.992 from 10 labels per class).",
    "- Semi-supervised self-training on the 57,000 unlabelled train images: 0.8258, no better than the",
    "  supervised ensemble it starts from, at four times the time: not adopted.",
    "",
    "## Measured while choosing (Fashion-MNIST, seed 0, test leave-one-out; one run each, not rerun)",
    "",
    "Noise between two runs of the same setting is about ±0.005 mAP.",
    "",
    "- **Schedule**: one head, early stopping on validation loss: 0.787 (it stops at epoch 9-16, best ~6);",
    "  the same head run for 60 epochs: 0.824, 100 epochs with cosine decay: 0.825. The biggest single gain.",
    "- **Objective and regularisation** (one head, 60 epochs, cosine): mixup α=0.3 0.815, dim 64 0.818,",
    "  hidden 1024 0.824, dropout 0.3 0.812, margin 0.35 0.822, weight decay 1e-2 0.819, input dropout 0.3",
    "  0.823, scale 16 / margin 0.1 0.820, batch 128 0.824: none beyond noise.",
    "- **Ensembles** of separately trained heads: 3 heads 0.828, 5 heads 0.832 (the default trains its 5",
    "  together on the same batches, which costs about two heads).",
    "- **Richer frozen inputs**: GAP+MAC+GeM concatenated 0.829 vs GeM 0.824 (+0.005, would need a new base",
    "  vector per image); PCA whitening fitted on the 60k unlabelled vectors before the head: 0.49-0.77.",
    "- **Multi-view augmentation** (flip, random 22-26 px crops, flip+crop: 3 more views of each labelled image,",
    "  9,000 CNN passes, 537 s on shared cores): one head 0.807 vs 0.804, ensemble 0.821 vs 0.818: no gain.",
    "- **Semi-supervised, label propagation** (Zhou et al. on a k=30-50 NN graph over all 60k train vectors in",
    "  the head's space; labels of the unlabelled 57k never used): pseudo-labels 88.4% right (97.3% for the",
    "  most confident half); retraining on all of them 0.803 (0.802 certainty-weighted), on the most confident",
    "  30% 0.817 (0.822 with the head's own proxies as labeller) vs 0.824 without: the pseudo-labels repeat",
    "  the head's own mistakes, and the confident ones teach nothing new. The graph alone took 57-80 s.",
    "- **Fine-tuning** with the head was not tried: `docs/adapt.md` measures 87 s for 2 epochs of the top 2",
    "  blocks on 2,700 images at 240 px (0.715 mAP), far from what the head reaches in the same time.",
]

VARIANTS = {
    "legacy": "one MLP 512-128, early stopping on val loss (before this change)",
    "single": "one MLP 512-128, cosine schedule run to the end (30 epochs, >= 40 updates each)",
    "ensemble": "5 MLPs 512-128 trained together, same schedule (the new default)",
    "ensemble60": "the same ensemble, 60 epochs",
    "selftrain": "ensemble + pseudo-labels on 30% of the unlabelled train split",
}


def per_class(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Exactly ``n`` rows of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c in np.unique(labels)]))


def legacy_head(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> dict[str, np.ndarray]:
    """The head as it was trained before ensembles: one MLP, early stopping on validation loss."""
    keras = import_keras()
    cfg = A.AdaptConfig(heads=1, seed=seed)
    keras.utils.set_random_seed(seed)
    fit, val = A.split_by_image([str(v) for v in y], cfg.val_fraction, seed)
    mean = x[fit].mean(axis=0)
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Dropout(cfg.dropout)(keras.layers.Dense(cfg.hidden, activation="relu", name="hidden")(inputs))
    z = keras.layers.UnitNormalization()(keras.layers.Dense(cfg.dim, name="project")(h))
    proxies, loss = A._cosface_parts(keras, n_classes, cfg)
    model = keras.Model(inputs, proxies(z))
    model.compile(keras.optimizers.AdamW(cfg.effective_lr, weight_decay=cfg.weight_decay), loss)
    A._fit(keras, model, (x[fit] - mean, y[fit]), (x[val] - mean, y[val]), cfg, None, None)
    hidden, project = model.get_layer("hidden"), model.get_layer("project")
    return {"mean": mean, "w1": np.asarray(hidden.kernel), "b1": np.asarray(hidden.bias),
            "w2": np.asarray(project.kernel), "b2": np.asarray(project.bias)}


def pseudo_labels(weights: dict, x_lab: np.ndarray, y_lab: np.ndarray, x_unl: np.ndarray, share: float,
                  k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(rows of x_unl, labels): the most confident ``share`` per class by a 10-NN vote in the head's space."""
    za, zu = A.apply_head(weights, x_lab), A.apply_head(weights, x_unl)
    n_classes = int(y_lab.max()) + 1
    votes = np.zeros((len(zu), n_classes), np.float32)
    for i in range(0, len(zu), 4096):
        sims = zu[i:i + 4096] @ za.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        np.add.at(votes[i:i + 4096], (np.arange(len(top))[:, None], y_lab[top]), np.take_along_axis(sims, top, 1))
    label, confidence = votes.argmax(1), votes.max(1) / np.maximum(votes.sum(1), 1e-12)
    keep = [r[np.argsort(-confidence[r])[:int(len(r) * share)]] for r in (np.flatnonzero(label == c)
                                                                           for c in range(n_classes))]
    rows = np.sort(np.concatenate(keep))
    return rows, label[rows]


def train(variant: str, x: np.ndarray, y: np.ndarray, seed: int, unlabelled: np.ndarray | None = None):
    """(weights, seconds, note) for one variant on labelled (x, y)."""
    n_classes = int(y.max()) + 1
    started = time.perf_counter()
    note = ""
    if variant == "legacy":
        weights = legacy_head(x, y, n_classes, seed)
    else:
        cfg = A.AdaptConfig(seed=seed, heads=1 if variant == "single" else 5,
                            epochs=60 if variant == "ensemble60" else 30)
        weights, _ = A.train_head(x, y, n_classes, cfg)
        if variant == "selftrain":
            rows, labels = pseudo_labels(weights, x, y, unlabelled, 0.3)
            weights, _ = A.train_head(np.concatenate([x, unlabelled[rows]]), np.concatenate([y, labels]), n_classes,
                                      replace(cfg, seed=seed))
            note = f"{len(rows)} pseudo-labelled"
    return weights, time.perf_counter() - started, note


def fashion_rows(seeds: list[int], variants: list[str], save) -> None:
    def load(split):
        path = vectors_path("efficientnet-lite1", "gem3", split)
        return l2_normalize(np.load(path))

    xtrain, xtest = load("train"), load("t10k")
    _, ytrain = fashion_mnist.load("train")
    _, ytest = fashion_mnist.load("t10k")
    test_labels = [fashion_mnist.CLASSES[i] for i in ytest]
    train_labels = [fashion_mnist.CLASSES[i] for i in ytrain]

    def gallery_map(vectors_test, vectors_train) -> dict:
        r = evaluate_one(vectors_test, vectors_train, test_labels, train_labels, whiten="center")
        return {"qg_map": r["map"], "qg_p_at_1": r["p_at_1"]}

    save({"data": "fmnist", "variant": "frozen", "seed": None, "train_images": 0, "train_s": 0.0,
          **loo_map(xtest, test_labels), **gallery_map(xtest, xtrain)})
    for seed in seeds:
        labelled = per_class(ytrain, PER_CLASS, seed)
        unlabelled = np.setdiff1d(np.arange(len(ytrain)), labelled)
        for variant in variants:
            weights, seconds, note = train(variant, xtrain[labelled], ytrain[labelled], seed, xtrain[unlabelled])
            row = {"data": "fmnist", "variant": variant, "seed": seed, "train_images": len(labelled),
                   "train_s": round(seconds, 1), "note": note, **loo_map(A.apply_head(weights, xtest), test_labels)}
            if seed == seeds[0] and variant in ("legacy", "ensemble"):
                row.update(gallery_map(A.apply_head(weights, xtest), A.apply_head(weights, xtrain)))
            save(row)


def photo_vectors() -> tuple[np.ndarray, np.ndarray]:
    """lite1 GeM vectors of the photo set in file order (decoded as the studio decodes), computed once.

    ``benchmarks.runtime_quality`` caches the same vectors (Keras runtime); they are reused when present.
    """
    if not PHOTOS.exists():
        from .photoset import build

        build(PHOTOS, 1200, 0)
    files = sorted(p for p in PHOTOS.rglob("*") if p.is_file() and not p.name.startswith("."))
    labels = [f.relative_to(PHOTOS).parts[0] for f in files]
    shared = Path(f"benchmarks/out/runtime_quality/photos_keras_{len(files)}.npy")
    if shared.exists():
        vectors = np.load(shared)
    elif PHOTO_CACHE.exists():
        vectors = np.load(PHOTO_CACHE)
    else:
        from retrieval.backbones import REGISTRY
        from retrieval.decode import decode
        from retrieval.device import resolve
        from retrieval.pooling import DEFAULT_GEM_P

        backbone = REGISTRY["efficientnet-lite1"].build("gem", DEFAULT_GEM_P, resolve("cpu"))
        pixels = [decode(f, backbone.input_size).pixels for f in files]
        vectors = np.concatenate([backbone.embed(np.stack(pixels[i:i + 32])) for i in range(0, len(pixels), 32)])
        PHOTO_CACHE.parent.mkdir(parents=True, exist_ok=True)
        np.save(PHOTO_CACHE, vectors)
    names = sorted(set(labels))
    return l2_normalize(vectors), np.array([names.index(v) for v in labels])


def photo_rows(seeds: list[int], variants: list[str], save) -> None:
    x, y = photo_vectors()
    for seed in seeds:
        labelled = per_class(y, PHOTO_LABELLED, seed)
        test = np.setdiff1d(np.arange(len(y)), labelled)
        test_labels = [str(v) for v in y[test]]
        save({"data": "photos", "variant": "frozen", "seed": seed, "train_images": 0, "train_s": 0.0,
              **loo_map(x[test], test_labels)})
        for variant in variants:
            if variant == "selftrain":
                continue  # the set has no unlabelled images beyond the test ones
            weights, seconds, note = train(variant, x[labelled], y[labelled], seed)
            save({"data": "photos", "variant": variant, "seed": seed, "train_images": len(labelled),
                  "train_s": round(seconds, 1), "note": note, **loo_map(A.apply_head(weights, x[test]), test_labels)})


def summary(rows: list[dict]) -> list[dict]:
    """Mean and spread (min-max over seeds) per data set and variant."""
    out = []
    for data in ("fmnist", "photos"):
        for variant in ["frozen", *VARIANTS]:
            group = [r for r in rows if r["data"] == data and r["variant"] == variant]
            if not group:
                continue
            maps = [r["map"] for r in group]
            entry = {"data": data, "variant": variant, "seeds": len(group), "map": round(statistics.mean(maps), 4),
                     "map_min": min(maps), "map_max": max(maps),
                     "p_at_1": round(statistics.mean(r["p_at_1"] for r in group), 4),
                     "train_images": group[0]["train_images"],
                     "train_s": round(statistics.mean(r["train_s"] for r in group), 1)}
            qg = [r for r in group if "qg_map" in r]
            if qg:
                entry["qg_map"] = qg[0]["qg_map"]
            out.append(entry)
    return out


def render(result: dict) -> str:
    names = {"frozen": "frozen lite1 GeM (no training)", **VARIANTS}
    lines = [
        "# Few-shot adaptation: the head on 300 labels per class",
        "",
        f"Made by `{result['command']}` on 2 shared CPU cores; raw figures per seed in `docs/fewshot.json`.",
        "",
        "- **fmnist**: 300 labelled train images per class (3,000; a tenth of them validate), one draw per seed.",
        "  mAP: leave-one-out over the 10,000 test images, centred (the protocol of `docs/adapt.md`).",
        "  test→train mAP: the test images as queries against the 60,000 train images (seed 0 only).",
        "- **photos**: `benchmarks.photoset` (1,200 views of 16 photos); 10 labelled per class train,",
        "  the other 1,040 are the leave-one-out test set.",
        "- mAP is the mean over seeds, [min, max] beside it; training s is the training call alone (vectors",
        "  cached: no CNN runs while training).",
        "",
        "| data | method | seeds | training images | mAP [min, max] | P@1 | test→train mAP | training s |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in result["summary"]:
        qg = f"{r['qg_map']:.4f}" if "qg_map" in r else ""
        lines.append(f"| {r['data']} | {r['variant']}: {names[r['variant']]} | {r['seeds']} | {r['train_images']} | "
                     f"{r['map']:.4f} [{r['map_min']:.4f}, {r['map_max']:.4f}] | {r['p_at_1']:.4f} | {qg} | "
                     f"{r['train_s']} |")
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--data", default="fmnist,photos")
    parser.add_argument("--out", default="docs/fewshot.json")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = parser.parse_args()
    if args.render:
        result = json.loads(Path(args.out).read_text())
        Path(args.out).with_suffix(".md").write_text(render({**result, "notes": NOTES}))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    result = {"command": "python -m benchmarks.fewshot" + (f" --seeds {args.seeds}" if args.seeds != "0,1,2" else ""),
              "notes": NOTES, "rows": []}
    rerun = {(d, v) for d in args.data.split(",") for v in ["frozen", *variants]}
    keep = [r for r in previous.get("rows", []) if (r["data"], r["variant"]) not in rerun
            or (r["seed"] is not None and r["seed"] not in seeds)]

    def save(row: dict) -> None:
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        result["summary"] = summary(keep + result["rows"])
        out.write_text(json.dumps({**result, "rows": keep + result["rows"]}, indent=2))
        out.with_suffix(".md").write_text(render(result))

    if "fmnist" in args.data:
        fashion_rows(seeds, variants, save)
    if "photos" in args.data:
        photo_rows(seeds, variants, save)


if __name__ == "__main__":
    main()

"""Indexing throughput on what users bring: real-size photos, per runtime, on this machine.

Workload: the realistic photo set of ``benchmarks.photoset`` (mixed-size
JPEGs up to 12 MP, EXIF-rotated files, PNGs with alpha, WebP; labelled), and
Fashion-MNIST PNGs as a second row. For each configuration (lite0/GAP, and
the default lite1/GeM), one run measures, on the same machine:

- seed: the seed's loop, one file at a time: decode, ``model.predict``;
- model: each runtime alone on pre-decoded, pre-processed batches
  (Keras ``predict_on_batch`` and ``tf.function``; OpenVINO f32, bf16);
- decode: read + sha256 + decode alone, with the pipeline's threads;
- end to end: ``Studio.index`` from files to rows in SQLite, per runtime,
  with CPU utilisation (process CPU time / wall / cores) and how long each
  stage worked (decode threads, model, SQLite writer).

Ratios (end to end over model alone, over the seed, auto over keras) come
from the same run. ``OPENBLAS_CORETYPE`` is unset for this process.

    python -m benchmarks.indexing [--n 1200] [--fmnist-n 2000] [--out docs/indexing.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.pop("OPENBLAS_CORETYPE", None)

import numpy as np  # noqa: E402

CONFIGS = {"lite0/GAP": ("efficientnet-lite0", "gap"), "default (lite1/GeM)": ("efficientnet-lite1", "gem")}
RUNTIMES = ("keras", "openvino-f32", "openvino-bf16", "auto")


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds else 0.0


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_alone(studio, cfg, pixels: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """Each runtime on the same pre-decoded images, median of ``repeats`` passes."""
    from retrieval.device import import_keras

    import_keras()
    import tensorflow as tf

    out = {}
    for runtime in RUNTIMES[:-1]:
        backbone = studio.backbone(cfg, runtime=runtime)
        x = backbone.prepare(pixels)
        call = backbone.runner or (lambda b, bb=backbone: bb.keras_call(bb.model, b))

        def run(call=call, x=x):
            for i in range(0, len(x), batch):
                call(x[i:i + batch])

        run()  # trace / compile every shape once
        out[runtime] = rate(len(x), statistics.median(timed(run) for _ in range(repeats)))
        if runtime == "keras":
            traced = tf.function(lambda t, m=backbone.model: m(t, training=False))

            def run_tf(x=x):
                for i in range(0, len(x), batch):
                    traced(tf.constant(x[i:i + batch])).numpy()

            run_tf()
            out["keras tf.function"] = rate(len(x), statistics.median(timed(run_tf) for _ in range(repeats)))
    return out


def seed_loop(studio, cfg, files: list[Path]) -> float:
    """The seed's loop: one image at a time, decoded, then ``model.predict`` on it alone."""
    from retrieval.decode import decode

    backbone = studio.backbone(cfg, runtime="keras")
    backbone.model.predict(backbone.prepare(decode(files[0], backbone.input_size).pixels[None]), verbose=0)
    start = time.perf_counter()
    for f in files:
        backbone.model.predict(backbone.prepare(decode(f, backbone.input_size).pixels[None]), verbose=0)
    return rate(len(files), time.perf_counter() - start)


def decode_only(files: list[Path], size: int, workers: int) -> dict[str, float]:
    from retrieval.extract import ordered_map, prepare
    from retrieval.files import SourceFile
    from retrieval.settings import Limits

    sources = [SourceFile(f, f.name, None) for f in files]

    def work(source):
        return prepare(source, size, lambda _digest: True, Limits())

    out = {}
    for threads in sorted({1, workers}):
        seconds = timed(lambda: list(ordered_map(work, sources, threads, prefetch=64)))
        out[f"{threads} thread{'s' if threads > 1 else ''}"] = rate(len(files), seconds)
    return out


def end_to_end(db: Path, folder: Path, cfg, runtime: str, batch: int, workers: int) -> dict:
    """``Studio.index`` from files to SQLite with a warm model, and how busy the CPU and each stage were."""
    from retrieval import Studio

    studio = Studio(db, device="cpu", batch_size=batch, workers=workers, runtime=runtime)
    try:
        studio.backbone(cfg)  # load, convert and check outside the timing (cached across runs)
        studio.drop_collection("bench")
        cpu, start = time.process_time(), time.perf_counter()
        report = studio.index(folder, "bench", cfg)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        studio.close()
    cores = os.cpu_count() or 1
    return {"img_per_s": rate(report.computed, wall), "runtime": report.runtime, "images": report.computed,
            "skipped": len(report.skipped), "wall_s": round(wall, 2), "cpu_utilisation": round(cpu / wall / cores, 2),
            "stage_busy_share": {k.removesuffix("_s"): round(v / wall, 2) for k, v in report.timings.items()}}


def sweep(folder: Path, cfg, work: Path, limit: int) -> dict:
    """End to end with ``auto`` over batch sizes and decode threads, on the first ``limit`` photos."""
    import shutil

    subset = work / "sweep"
    if not subset.exists():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))[:limit]
        for f in files:
            target = subset / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
    out = {}
    for batch in (8, 16, 32, 64):
        for workers in (1, 2, 3, 4):
            row = end_to_end(work / f"sweep-{batch}-{workers}.sqlite", subset, cfg, "auto", batch, workers)
            out[f"batch {batch}, {workers} decode threads"] = row["img_per_s"]
            print(f"sweep batch {batch} workers {workers}: {row['img_per_s']} img/s", flush=True)
    return out


def measure(name: str, folder: Path, cfg, args, work: Path) -> dict:
    from retrieval import Studio
    from retrieval.decode import decode

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    studio = Studio(work / f"{name}-warm.sqlite", device="cpu", batch_size=args.batch_size)
    cfg = studio.resolve(cfg)
    size = cfg.input_size
    pixels = np.stack([decode(f, size).pixels for f in files[:args.model_n]])
    row = {"config": cfg.key, "images": len(files)}
    row["seed_img_per_s"] = seed_loop(studio, cfg, files[:args.seed_n])
    row["model_img_per_s"] = model_alone(studio, cfg, pixels, args.batch_size, args.repeats)
    row["decode_img_per_s"] = decode_only(files, size, studio.workers)
    studio.close()
    row["end_to_end"] = {r: end_to_end(work / f"{name}-{r}.sqlite", folder, cfg, r, args.batch_size, args.workers)
                         for r in RUNTIMES}
    keras_alone = row["model_img_per_s"]["keras"]
    auto = row["end_to_end"]["auto"]["img_per_s"]
    row["ratios"] = {
        "auto_end_to_end_over_keras_model_alone": round(auto / keras_alone, 2),
        "auto_end_to_end_over_seed": round(auto / row["seed_img_per_s"], 1),
        "auto_end_to_end_over_keras_end_to_end": round(auto / row["end_to_end"]["keras"]["img_per_s"], 2),
        "auto_end_to_end_over_its_model_alone": round(
            auto / max(v for k, v in row["model_img_per_s"].items() if k.startswith("openvino")), 2),
    }
    print(json.dumps({name: row}, indent=1), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1200, help="photos in the realistic set")
    parser.add_argument("--fmnist-n", type=int, default=2000)
    parser.add_argument("--seed-n", type=int, default=60, help="files for the slow one-at-a-time loop")
    parser.add_argument("--model-n", type=int, default=256, help="pre-decoded images for the model-alone runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--photos", default="benchmarks/out/photoset", help="where the photo set is built (reused)")
    parser.add_argument("--sweep", type=int, default=0, metavar="N",
                        help="also sweep batch size x decode threads for the default config on N photos")
    parser.add_argument("--out", default="docs/indexing.json")
    args = parser.parse_args()

    from retrieval import ExtractorConfig

    from . import fashion_mnist, photoset

    summary = photoset.build(Path(args.photos), n=args.n)
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    images, labels = fashion_mnist.load("t10k", args.fmnist_n)
    fmnist = fashion_mnist.write_folder(work / "fmnist", images, labels)
    result = {"command": f"python -m benchmarks.indexing --n {args.n} --fmnist-n {args.fmnist_n} --repeats {args.repeats}",
              "machine": {"cores": os.cpu_count(), "cpu": _cpu_name()}, "photoset": summary, "rows": {}}
    if args.sweep:
        backbone, pooling = CONFIGS["default (lite1/GeM)"]
        result["sweep"] = sweep(Path(args.photos), ExtractorConfig(backbone, pooling), work, args.sweep)
        result["command"] += f" --sweep {args.sweep}"
    for label, (backbone, pooling) in CONFIGS.items():
        result["rows"][f"photos · {label}"] = measure(f"photos-{pooling}", Path(args.photos),
                                                      ExtractorConfig(backbone, pooling), args, work)
    backbone, pooling = CONFIGS["default (lite1/GeM)"]
    result["rows"]["fashion-mnist · default (lite1/GeM)"] = measure("fmnist", fmnist, ExtractorConfig(backbone, pooling),
                                                                    args, work)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()

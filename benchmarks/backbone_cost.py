"""What each backbone costs on CPU: indexing throughput, query latency, build time, memory.

Why: the ``hub`` family (DINOv2, CLIP, SigLIP) and users' own model files
sit beside the default EfficientNet-Lite1 in the model picker, and a user
choosing one should know what it costs per image on their machine. Compute
does not depend on the weights, so the KerasHub presets are built here at
their real sizes (layers, widths, heads, patch sizes and text towers as
KerasHub's presets; the parameter counts are checked against KerasHub's
preset metadata) with random weights and saved with ``save_to_preset`` into
a scratch folder found through ``$RETRIEVAL_PRESETS``: nothing is
downloaded, and no figure here says anything about retrieval quality.

Every row runs in a fresh process with a fresh Studio and database, so no
model, conversion choice or cache in memory is shared; the rows run one
after the other in one command, and the Lite1 baseline (runtime auto) runs
before the first row, between every two rows and after the last: on a
shared machine whose load changes during the run, each row is compared
with the Lite1 runs just before and after it (``× lite1``), and the spread
of the Lite1 runs shows the drift. The runtimes' conversion cache
(``$RETRIEVAL_CACHE_DIR``) is a fresh scratch folder for the whole run: the
first Lite1 run pays the OpenVINO conversion and parity trials, the later
ones find them cached.

Per row:
- ``build_s``: ``Studio.backbone(cfg)`` before indexing: loading the network
  (and, with runtime ``auto``, converting and checking it); a user model's
  ``add_model`` is timed apart (``add_s``);
- ``img/s``: ``Studio.index`` of N photos from ``benchmarks/photoset.py``
  (mixed camera/phone/web JPEGs, PNG with alpha, WebP; decoding included),
  model already built;
- image query: median of ``--queries`` ``Studio.search`` calls, each with a
  different photo file not in the gallery, after one warm-up query (decode
  and embed medians from the result's timings);
- text query (CLIP, SigLIP): median of ``--queries`` ``Studio.search(TextQuery(...))``;
- peak RSS of the row's process (``VmHWM``), TensorFlow included.

    flock /tmp/bench.lock env -u OPENBLAS_CORETYPE python -m benchmarks.backbone_cost \\
        [--photos /tmp/photoset] [--n 200] [--queries 20] [--skip clip-vit-b16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
TEXT = "a photo of a cat"
SIZE = 224


@dataclass(frozen=True)
class Row:
    key: str  # unique in the run
    backbone: str  # the name given to ExtractorConfig
    runtime: str = "auto"
    user: str | None = None  # a user model file to register: "keras" or "onnx"
    text: bool = False


ROWS = [
    Row("efficientnet-lite1", "efficientnet-lite1"),
    Row("efficientnet-lite1 · keras", "efficientnet-lite1", runtime="keras"),
    Row("dinov2-small-patchmean", "dinov2-small-patchmean"),
    Row("dinov2-base-patchmean", "dinov2-base-patchmean"),
    Row("clip-vit-b32", "clip-vit-b32", text=True),
    Row("clip-vit-b16", "clip-vit-b16"),
    Row("siglip-b16-224", "siglip-b16-224", text=True),
    Row("MobileNetV2 .keras", "my-mobilenetv2", user="keras"),
    Row("MobileNetV2 .keras · keras", "my-mobilenetv2", runtime="keras", user="keras"),
    Row("MobileNetV2 .onnx", "my-mobilenetv2-onnx", user="onnx"),
]
BASELINE = ROWS[0].key  # runs before the first row, between every two rows and after the last


# -- the inputs: photos, presets at real size, a user's model files --------------------------------
def ordered_photos(photos: Path) -> list[str]:
    """The set's files round-robin over its classes (as ``benchmarks.distributed.subset`` picks them)."""
    from .photoset import load_manifest

    by_class: dict[str, list[str]] = defaultdict(list)
    for record in load_manifest(photos):
        by_class[record["label"]].append(record["path"])
    lists = [sorted(v) for _, v in sorted(by_class.items())]
    picked: list[str] = []
    for i in range(max(map(len, lists))):
        picked += [paths[i] for paths in lists if i < len(paths)]
    return picked


def link(photos: Path, rels: list[str], folder: Path) -> list[Path]:
    out = []
    for rel in rels:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photos / rel, target)
        out.append(target)
    return out


def _clip_tokenizer(keras_hub):
    """A small BPE vocabulary: tokenising costs next to nothing either way; the text tower runs on
    ``max_sequence_length`` (77) tokens whatever the vocabulary."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    merges = ["c a", "ca t</w>", "p h", "ph o", "pho t", "phot o</w>"]
    vocab = {t: i for i, t in enumerate([*letters, *(x + "</w>" for x in letters),
                                         *(m.replace(" ", "") for m in merges), "<|startoftext|>", "<|endoftext|>"])}
    return keras_hub.models.CLIPTokenizer(vocabulary=vocab, merges=merges)


def _siglip_tokenizer(keras_hub):
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a photo of a cat", "a photo of a dog", "a red car on the road",
                                "coffee in a white cup"] * 5),
        model_writer=model, vocab_size=40, model_type="word", hard_vocab_limit=False, minloglevel=2,
        unk_id=0, eos_id=1, bos_id=-1, pad_id=-1, unk_piece="<unk>", eos_piece="</s>")
    return keras_hub.models.SigLIPTokenizer(proto=model.getvalue())


# KerasHub preset folder -> (what its metadata says the parameters are, how to make it at that size)
def _dinov2(keras_hub, hidden: int, heads: int):
    net = keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=12, hidden_dim=hidden, num_heads=heads,
                                          intermediate_dim=4 * hidden, image_shape=(518, 518, 3),
                                          position_embedding_shape=(518, 518, 3))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    converter = keras_hub.layers.DINOV2ImageConverter(image_size=(518, 518), scale=[1 / (255 * s) for s in std],
                                                      offset=[-m / s for m, s in zip(mean, std)])
    return net, converter, None


def _clip(keras_hub, patch: int):
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=patch, hidden_dim=768, num_layers=12, num_heads=12,
                                                intermediate_dim=3072, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=49408, embedding_dim=512, hidden_dim=512, num_layers=12,
                                            num_heads=8, intermediate_dim=2048, max_sequence_length=77)
    net = keras_hub.models.CLIPBackbone(vision, text, projection_dim=512)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    converter = keras_hub.layers.CLIPImageConverter(image_size=(SIZE, SIZE), scale=[1 / (255 * s) for s in std],
                                                    offset=[-m / s for m, s in zip(mean, std)])
    return net, converter, _clip_tokenizer(keras_hub)


def _siglip(keras_hub):
    vision = keras_hub.models.SigLIPVisionEncoder(patch_size=16, hidden_dim=768, num_layers=12, num_heads=12,
                                                  intermediate_dim=3072, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=32000, embedding_dim=768, hidden_dim=768,
                                              num_layers=12, num_heads=12, intermediate_dim=3072,
                                              max_sequence_length=64, projection_dim=768)
    net = keras_hub.models.SigLIPBackbone(vision, text)
    converter = keras_hub.layers.SigLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    return net, converter, _siglip_tokenizer(keras_hub)


MAKERS = {
    "dinov2_small": lambda kh: _dinov2(kh, 384, 6),
    "dinov2_base": lambda kh: _dinov2(kh, 768, 12),
    "clip_vit_base_patch32": lambda kh: _clip(kh, 32),
    "clip_vit_base_patch16": lambda kh: _clip(kh, 16),
    "siglip_base_patch16_224": _siglip,
}


def make_presets(root: Path, needed: set[str]) -> dict:
    """Real-size random presets under ``root``; returns {preset: {params, expected, seconds}}."""
    from retrieval.backbones import hub
    from retrieval.backbones.hub_presets import PRESETS

    keras_hub = hub._keras_hub()
    expected = {p.preset: p.params for p in PRESETS.values()}
    out = {}
    for preset in sorted(needed):
        started = time.perf_counter()
        parts = MAKERS[preset](keras_hub)
        params = parts[0].count_params()
        if params != expected[preset]:  # the architecture must be the real one, or the cost is not
            raise SystemExit(f"{preset}: built {params:,} parameters, KerasHub's preset has {expected[preset]:,}")
        for part in parts:
            if part is not None:
                part.save_to_preset(str(root / preset))
        out[preset] = {"params": params, "seconds": round(time.perf_counter() - started, 1)}
        print(f"preset {preset}: {params:,} parameters (as KerasHub's metadata), {out[preset]['seconds']} s",
              flush=True)
    return out


def make_user_models(folder: Path) -> dict:
    """MobileNetV2 (random weights, no top) as a ``.keras`` file and as ONNX."""
    import numpy as np

    from retrieval.device import import_keras

    keras = import_keras()
    model = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    model(np.zeros((1, SIZE, SIZE, 3), np.float32))  # Keras' ONNX export refuses a model never called
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "mobilenetv2.keras")
    how = "keras model.export(format='onnx')"
    try:
        model.export(str(folder / "mobilenetv2.onnx"), format="onnx")
    except Exception as exc:  # noqa: BLE001 - fall back to tf2onnx, and say so
        import tensorflow as tf
        import tf2onnx

        how = f"tf2onnx ({type(exc).__name__} from Keras' export)"
        spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="images"),)
        tf2onnx.convert.from_keras(model, input_signature=spec, output_path=str(folder / "mobilenetv2.onnx"))
    return {"params": model.count_params(), "onnx_export": how}


# -- one row, in its own process ------------------------------------------------------------------
def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def run_row(row: Row, folder: Path, queries: list[Path], models: Path, scratch: Path) -> dict:
    from retrieval import ExtractorConfig, Studio, TextQuery

    out: dict = {"key": row.key, "backbone": row.backbone, "asked_runtime": row.runtime}
    studio = Studio(scratch / "bench.sqlite", device="cpu", runtime=row.runtime)
    try:
        if row.user:
            started = time.perf_counter()
            file = models / ("mobilenetv2.keras" if row.user == "keras" else "mobilenetv2.onnx")
            studio.add_model(row.backbone, file, preprocess="tf")
            out["add_s"] = round(time.perf_counter() - started, 2)
        cfg = ExtractorConfig(backbone=row.backbone)
        started = time.perf_counter()
        backbone = studio.backbone(cfg)
        out["build_s"] = round(time.perf_counter() - started, 2)
        out.update(runtime=backbone.runtime, runtime_note=getattr(backbone, "runtime_note", ""), dim=backbone.dim)
        started = time.perf_counter()
        report = studio.index(folder, "bench", cfg)
        seconds = time.perf_counter() - started
        out.update(index_s=round(seconds, 2), computed=report.computed, failed=len(report.skipped),
                   img_per_s=round(report.computed / seconds, 2))
        studio.search(queries[0], "bench", cfg)  # warm-up: the gallery and its ranker are built here
        totals, decode, embed = [], [], []
        for query in queries[1:]:
            started = time.perf_counter()
            result = studio.search(query, "bench", cfg)
            totals.append(1000 * (time.perf_counter() - started))
            decode.append(result.timings.get("decode_ms", 0.0))
            embed.append(result.timings.get("embed_ms", 0.0))
        out.update(query_ms=_median_ms(totals), query_decode_ms=_median_ms(decode), query_embed_ms=_median_ms(embed),
                   query_runtime=result.runtime)
        if row.text:
            studio.search(TextQuery(TEXT), "bench", cfg)
            totals, embed = [], []
            for _ in queries[1:]:
                started = time.perf_counter()
                result = studio.search(TextQuery(TEXT), "bench", cfg)
                totals.append(1000 * (time.perf_counter() - started))
                embed.append(result.timings.get("embed_ms", 0.0))
            out.update(text_ms=_median_ms(totals), text_embed_ms=_median_ms(embed))
    finally:
        studio.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> int:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ``ru_maxrss`` would
    carry the parent's peak (the preset builder's) into every row."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# -- the run ----------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("keras", "keras-hub", "tensorflow", "openvino", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def markdown(result: dict) -> str:
    runs = result["rows"]
    bases = [r for r in runs if r["key"] == BASELINE]
    base_rates = [r["img_per_s"] for r in bases if "img_per_s" in r]

    def neighbours(i: int) -> float | None:
        """The mean Lite1 rate of the baseline runs just before and after run ``i``."""
        near = [r["img_per_s"] for r in runs[max(0, i - 1):i + 2:2] if r["key"] == BASELINE and "img_per_s" in r]
        return sum(near) / len(near) if near else None

    table = []
    if bases:  # the baseline once: the first (cold) build, the median of its runs' rates and latencies
        first = bases[0]
        good = [r for r in bases if "img_per_s" in r]
        table.append({**first, "img_per_s": statistics.median(base_rates) if base_rates else None,
                      "query_ms": statistics.median(r["query_ms"] for r in good) if good else None,
                      "query_embed_ms": statistics.median(r["query_embed_ms"] for r in good) if good else None,
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in good) if good else None, "times": 1.0,
                      "lite1_near": None})
    for i, r in enumerate(runs):
        if r["key"] != BASELINE:
            near = neighbours(i)
            rate = r.get("img_per_s")
            table.append({**r, "lite1_near": near, "times": near / rate if near and rate else None,
                          "times_median": statistics.median(base_rates) / rate if base_rates and rate else None})
    lines = ["# What each backbone costs on CPU", "", f"`{result['command']}`", "",
             f"{result['machine']}. {result['n']} photos from `benchmarks/photoset.py` (mixed camera, phone and web "
             f"JPEGs, PNG with alpha, WebP; decoding included), {result['queries']} query photos not in the gallery. "
             f"{result['versions_line']}", "",
             "**Random weights**: the KerasHub presets were built here at their real sizes (parameter counts equal "
             "to KerasHub's preset metadata) with random weights, because this machine has no network. These figures "
             "are compute cost only and say nothing about retrieval quality.", "",
             "Each row is a fresh process, Studio and database. *build*: `Studio.backbone(cfg)` before indexing "
             "(load, and with runtime auto the conversion and its checks); *img/s*: `Studio.index` with the model "
             "already built; *× lite1*: time per image relative to the Lite1 runs just before and after the row "
             "(their mean rate in brackets), then relative to the median of all Lite1 runs; *query*: median "
             "`Studio.search` with a photo file (decode + embed + rank), after one warm-up; *text*: median "
             f"`Studio.search(TextQuery(\"{TEXT}\"))`; *peak RSS*: the row's process, TensorFlow included.", "",
             "| backbone | runtime asked → what ran | dim | build s | index img/s | × lite1 per image "
             "(their img/s) / vs median | image query ms (embed) | text query ms (embed) | peak RSS MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table:
        if "error" in r:
            lines.append(f"| {r['key']} | {r['asked_runtime']} | – | – | – | – | – | – | – |")
            continue
        times = ("–" if r["times"] is None else
                 f"{r['times']:.1f}×" + (f" ({r['lite1_near']:.1f}) / {r['times_median']:.1f}×"
                                         if r["lite1_near"] else " (itself)"))
        build = f"{r['build_s']:.1f}" + (f" (+{r['add_s']:.1f} add)" if "add_s" in r else "")
        text = f"{r['text_ms']:.0f} ({r['text_embed_ms']:.0f})" if "text_ms" in r else "–"
        lines.append(f"| {r['key']} | {r['asked_runtime']} → {r['runtime']} | {r['dim']} | {build} | "
                     f"{r['img_per_s']:.1f} | {times} | {r['query_ms']:.0f} ({r['query_embed_ms']:.0f}) | {text} | "
                     f"{r['peak_rss_mb']:,} |")
    if base_rates:
        rebuilt = ", ".join(f"{r['build_s']:.1f}" for r in bases[1:] if "build_s" in r)
        rates = ", ".join(f"{x:.1f}" for x in base_rates)
        lines += ["", f"The baseline row is the median of {len(base_rates)} Lite1 runs (the first one's build, with "
                  f"the conversion and its checks; later builds found the conversion cached: "
                  f"{rebuilt} s). Lite1 rates in run order, img/s: {rates} (the machine's drift during the run)."]
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines += ["", "Rows that failed:", ""] + [f"- {r['key']}: {r['error']}" for r in errors]
    if result.get("skipped"):
        lines += ["", f"Not run (`--skip`): {', '.join(result['skipped'])}."]
    made = ", ".join(f"{k} ({v['params'] / 1e6:.1f} M params)" for k, v in result["presets"].items())
    lines += ["", f"Presets made for this run: {made}; "
              f"user model: Keras MobileNetV2 (no top, {result['user_model']['params'] / 1e6:.2f} M params, "
              f"`preprocess=\"tf\"`), ONNX by {result['user_model']['onnx_export']}. Total run "
              f"{result['total_s'] / 60:.1f} min."]
    if result.get("notes"):
        lines += ["", "## What it means for picking a backbone", "", result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=Path("/tmp/photoset"),
                   help="a photoset folder; built with benchmarks/photoset.py when it holds none")
    p.add_argument("--n", type=int, default=200, help="photos indexed per backbone")
    p.add_argument("--queries", type=int, default=20, help="timed queries per backbone (after one warm-up)")
    p.add_argument("--skip", default="", help="comma-separated row keys or backbone names not to run")
    p.add_argument("--out", default="backbone_cost", help="the results: docs/OUT.md")
    p.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "backbone_cost.json",
                   help="where the raw figures go (JSON)")
    p.add_argument("--render", type=Path, help="only write docs/OUT.md again from a run's JSON")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row (JSON args) and print its result
    a = p.parse_args(argv)
    if a.render:
        (DOCS / f"{a.out}.md").write_text(markdown(json.loads(a.render.read_text())))
        return
    if a.row:
        job = json.loads(a.row)
        row = next(r for r in ROWS if r.key == job["key"])
        result = run_row(row, Path(job["folder"]), [Path(q) for q in job["queries"]], Path(job["models"]),
                         Path(job["scratch"]))
        print("ROW " + json.dumps(result), flush=True)
        return

    command = ("python -m benchmarks.backbone_cost " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    rows = [r for r in ROWS if r.key not in skip and r.backbone not in skip]
    started_all = time.perf_counter()
    load_start = os.getloadavg()[0]
    if not (a.photos / ".photoset.json").is_file():  # an existing set is used as it is, never rebuilt
        from .photoset import build

        build(a.photos, n=max(1200, a.n + a.queries + 1))
    order = ordered_photos(a.photos)
    if len(order) < a.n + a.queries + 1:
        raise SystemExit(f"the set at {a.photos} has {len(order)} files; need {a.n + a.queries + 1}")
    with tempfile.TemporaryDirectory(prefix="bench-backbone-cost-") as tmp:
        scratch = Path(tmp)
        env = {**os.environ, "RETRIEVAL_PRESETS": str(scratch / "presets"),
               "RETRIEVAL_DATA_DIR": str(scratch / "data"), "RETRIEVAL_CACHE_DIR": str(scratch / "cache"),
               "RETRIEVAL_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        os.environ.update({k: env[k] for k in ("RETRIEVAL_PRESETS", "RETRIEVAL_DATA_DIR", "RETRIEVAL_CACHE_DIR",
                                                "RETRIEVAL_OFFLINE", "HF_HUB_OFFLINE")})
        folder = scratch / "gallery"
        link(a.photos, order[:a.n], folder)
        queries = link(a.photos, order[a.n:a.n + a.queries + 1], scratch / "queries")
        from retrieval.backbones.hub_presets import PRESETS

        needed = {PRESETS[r.backbone].preset for r in rows if r.backbone in PRESETS}
        presets = make_presets(scratch / "presets", needed)
        user_model = make_user_models(scratch / "models")
        print(f"inputs ready in {time.perf_counter() - started_all:.0f} s", flush=True)
        results = []
        others = [r for r in rows if r.key != BASELINE]
        schedule = [ROWS[0]]
        for row in others:
            schedule += [row, ROWS[0]]
        for i, row in enumerate(schedule):
            row_dir = scratch / f"row{i}"
            row_dir.mkdir()
            job = {"key": row.key, "folder": str(folder), "queries": [str(q) for q in queries],
                   "models": str(scratch / "models"), "scratch": str(row_dir)}
            began = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "benchmarks.backbone_cost", "--row", json.dumps(job)],
                                  check=False, env=env, capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parents[1])
            found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            if found:
                result = json.loads(found[-1])
            else:
                tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
                result = {"key": row.key, "backbone": row.backbone, "asked_runtime": row.runtime,
                          "error": f"exit {proc.returncode}: {tail[0][:300]}"}
            result["process_s"] = round(time.perf_counter() - began, 1)
            result["order"] = i
            print(json.dumps(result), flush=True)
            results.append(result)
            shutil.rmtree(row_dir, ignore_errors=True)
    result = {"command": command,
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, load {load_start:.1f} at the start and "
                         f"{os.getloadavg()[0]:.1f} at the end",
              "versions_line": ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
              "n": a.n, "queries": a.queries, "rows": results, "presets": presets, "user_model": user_model,
              "skipped": [r.key for r in ROWS if r not in rows and r.key != BASELINE], "total_s": round(time.perf_counter() - started_all)}
    a.json.write_text(json.dumps(result, indent=1))
    (DOCS / f"{a.out}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

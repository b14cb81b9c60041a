"""Fusion backbones: cost per image of each part and preset, and leave-one-out mAP against lite1.

Why: a fusion (``retrieval/backbones/fusion.py``) runs several networks per
image, so the app and ``models`` show its cost relative to lite1; the
relative costs in ``fusion.RELATIVE_COST`` come from this run. The mAP
figures say what the cost buys, on labelled photo files.

- Networks: a ``Studio``'s own, through the runtime it picks (``auto``), so
  what is timed is what users run. ``--runtime keras`` times Keras instead.
- Timing: ms per image at batch 32 of each part's network on photos at its
  size (model time), of each preset end to end (``FusionBackbone.embed``:
  resizing, mirrors and all parts), and of the resize itself (Pillow on
  uint8 against ``keras.ops.image.resize``); best of 3 rounds, the rounds
  interleaved across candidates.
- Quality: each photo is decoded once per decode size (240 for lite1 alone,
  260 for the presets, 368 for the multi-scale ones), each view (part, size,
  mirror) is embedded once, and every recipe is combined from those with
  ``fusion.fuse``. One preset is also embedded end to end and must equal the
  combination. mAP: ``build_ranker(vectors, whiten="center")`` and
  ``leave_one_out``, without and with DBA re-ranking.
- Centring: the share of each block in the centred vectors' squared norm,
  against its nominal weight (what the gallery's ``center`` does to a fusion).

On a shared machine, serialise timing runs:

    python -m benchmarks.photoset /tmp/photoset300 --n 300
    unset OPENBLAS_CORETYPE; flock /tmp/bench.lock python -m benchmarks.fusion /tmp/photoset300 assets/demo
    python -m benchmarks.fusion --render                     # docs/fusion.md from docs/fusion.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.pop("OPENBLAS_CORETYPE", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from retrieval import ExtractorConfig
from retrieval.backbones import SINGLE, fusion
from retrieval.evaluation import exact_duplicate_groups, leave_one_out
from retrieval.ranking import build_ranker
from retrieval.runtime import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LITES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
SCALES = (1.0, 0.707, 1.414)
# The recipes whose mAP is measured (the presets among them), besides the parts alone.
RECIPES = (
    "fusion:lite1;flip",
    "fusion-lite",
    "fusion-lite-flip",
    "fusion:lite0+lite1+lite2;flip;logits=0.25",
    "fusion:lite0+lite1+lite2;flip;logits=0.5",
    "fusion:lite0+lite1+lite2;flip;logits=1",
    "fusion-lite-ms",
    "fusion:lite0+lite1+lite2;flip;scales=1,0.707,1.414;logits=0.5",
)
CHECKED = "fusion:lite0+lite1+lite2;flip;logits=0.5"
TIMED = (*fusion.PRESETS, CHECKED)  # timed end to end  # embedded end to end too: must equal the combination


def photos(folder: Path, size: int) -> tuple[np.ndarray, list[str | None]]:
    """The folder's readable photos at ``size``, decoded as the runtime check decodes its reference set."""
    pixels, labels = reference.photos(size, Path(folder))
    return pixels, list(labels)


def interleaved_ms(candidates: dict[str, tuple], rounds: int = 3) -> dict[str, float]:
    """ms per image of each ``(call, x)``, best of ``rounds``; rounds interleave the candidates.

    On a shared machine a busy spell then slows every candidate alike,
    instead of whichever happened to run during it.
    """
    for call, x in candidates.values():
        call(x[:32])  # warm-up: traces and compiled models
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, (call, x) in candidates.items():
            start = time.perf_counter()
            for i in range(0, len(x), 32):
                call(x[i:i + 32])
            best[name] = min(best[name], (time.perf_counter() - start) * 1000 / len(x))
    return best


def evaluate(vectors: np.ndarray, labels: list) -> dict:
    out = {}
    for rerank in ("none", "dba"):
        ranker = build_ranker(vectors, whiten="center", rerank=rerank)
        report = leave_one_out(labels, lambda rows, ex: ranker.full_order(vectors[rows], ex),
                               exact_duplicate_groups(vectors))
        out[rerank] = round(report.map, 4)
    return out


def centred_shares(vectors: np.ndarray, dims: list[int]) -> list[float]:
    """Each block's mean share of the centred vectors' squared norm."""
    x = vectors - vectors.mean(axis=0)
    total = np.sum(x * x, axis=1)
    edges = np.cumsum([0, *dims])
    return [round(float(np.mean(np.sum(x[:, a:b] ** 2, axis=1) / total)), 3) for a, b in zip(edges[:-1], edges[1:])]


class Views:
    """Every (part, size, mirror) output of one photo set, computed once, from the Studio's networks."""

    def __init__(self, studio, pixels_by_size: dict[int, np.ndarray]):
        self.studio, self.pixels, self.cache = studio, pixels_by_size, {}
        self.networks = {}
        wide = studio.backbone(ExtractorConfig("fusion:lite0+lite1+lite2;flip;scales=1,0.707,1.414;logits"))
        for view in wide.views:
            self.networks[(view.part, view.size)] = view
        self.logits_part = wide.logits_part

    def output(self, part: str, size: int, decoded: int, mirror: bool) -> np.ndarray:
        key = (part, size, decoded, mirror)
        if key not in self.cache:
            view = self.networks[(part, size)]
            x = fusion.resize(self.pixels[decoded], size)
            if mirror:
                x = x[:, :, ::-1]
            self.cache[key] = np.concatenate([view.network.embed(np.ascontiguousarray(x[i:i + 32]))
                                              for i in range(0, len(x), 32)]).astype(np.float64)
        return self.cache[key]

    def recipe(self, text: str) -> tuple[np.ndarray, list[int]]:
        """The fused vectors of a recipe, by ``FusionBackbone``'s rule, from the stored views."""
        recipe = fusion.parse(text, SINGLE)
        decoded = fusion.input_size(recipe, SINGLE)
        blocks, weights, logits = [], [], None
        for name, weight in recipe.parts:
            total = 0.0
            sizes = recipe.sizes(SINGLE[name].input_size)
            for size in sizes:
                out = self.output(name, size, decoded, False)
                if recipe.flip:
                    out = (out + self.output(name, size, decoded, True)) / 2
                total = total + out
            total = total / len(sizes)
            blocks.append(total[:, :1280])
            weights.append(weight)
            if name == self.logits_part:
                logits = total[:, 1280:]
        if recipe.logits:
            blocks.append(logits)
            weights.append(recipe.logits)
        return fusion.fuse(blocks, weights), [b.shape[1] for b in blocks]


def run(folders: list[Path], runtime: str) -> dict:
    from retrieval import Studio
    from retrieval.device import import_keras

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": os.getloadavg()},
              "runtime_asked": runtime, "sets": {}}
    with tempfile.TemporaryDirectory(prefix="bench-fusion-") as tmp:
        studio = Studio(Path(tmp) / "b.sqlite", device="cpu", runtime=runtime)
        try:
            for n, folder in enumerate(folders):
                sizes = {240, 260, round(1.414 * 260)}
                pixels = {}
                for size in sorted(sizes):
                    pixels[size], labels = photos(folder, size)
                views = Views(studio, pixels)
                entry = {"images": len(labels), "classes": len(set(labels)), "map": {}, "dims": {}}
                if n == 0:  # timing on the first set only
                    keras = import_keras()
                    x = pixels[260][:64]
                    candidates = {}
                    for name in LITES:
                        view = views.networks[(name, SINGLE[name].input_size)]
                        candidates[name] = (view.network.embed, fusion.resize(x, view.size))
                    for text in TIMED:
                        recipe = fusion.parse(text, SINGLE)
                        candidates[text] = (studio.backbone(ExtractorConfig(text)).embed,
                                            pixels[fusion.input_size(recipe, SINGLE)][:64])
                    candidates["resize: pillow uint8"] = (lambda b: fusion.resize(b, 224), x)
                    candidates["resize: keras.ops float32"] = (
                        lambda b: np.asarray(keras.ops.image.resize(b.astype(np.float32), (224, 224))), x)
                    ms = interleaved_ms(candidates)
                    lite1 = ms["efficientnet-lite1"]
                    parts = {name: {"ms": round(ms[name], 2), "relative": round(ms[name] / lite1, 2),
                                    "runtime": views.networks[(name, SINGLE[name].input_size)].network.runtime}
                             for name in LITES}
                    presets = {text: {"ms": round(ms[text], 2), "relative": round(ms[text] / lite1, 2),
                                      "estimate": round(fusion.parse(text, SINGLE).cost() or 0, 2),
                                      "runtime": studio.backbone(ExtractorConfig(text)).runtime} for text in TIMED}
                    entry["timing"] = {"parts": parts, "presets": presets,
                                       "resize_260_to_224_ms_per_image": {
                                           "pillow_uint8": round(ms["resize: pillow uint8"], 3),
                                           "keras_ops_float32": round(ms["resize: keras.ops float32"], 3)}}
                # the check: one preset end to end equals its combination from the stored views
                recipe = fusion.parse(CHECKED, SINGLE)
                end_to_end = studio.backbone(ExtractorConfig(CHECKED)).embed(pixels[fusion.input_size(recipe, SINGLE)][:8])
                combined, _ = views.recipe(CHECKED)
                entry["check_max_abs_diff"] = float(np.abs(end_to_end - combined[:8]).max())
                lite1 = views.output("efficientnet-lite1", 240, 240, False)[:, :1280]
                entry["map"]["efficientnet-lite1"] = evaluate(fusion.fuse([lite1], [1.0]), labels)
                for name in ("efficientnet-lite0", "efficientnet-lite2"):
                    entry["map"][name + " (from 260)"] = evaluate(
                        fusion.fuse([views.output(name, SINGLE[name].input_size, 260, False)[:, :1280]], [1.0]), labels)
                for text in RECIPES:
                    vectors, dims = views.recipe(text)
                    name = fusion.parse(text, SINGLE).name
                    entry["map"][text] = evaluate(vectors, labels)
                    weights = [w for _, w in fusion.parse(text, SINGLE).parts] + (
                        [fusion.parse(text, SINGLE).logits] if fusion.parse(text, SINGLE).logits else [])
                    entry["dims"][text] = {"recipe": name, "nominal": [round(w / sum(weights), 3) for w in weights],
                                           "centred": centred_shares(vectors, dims)}
                result["sets"][str(folder)] = entry
        finally:
            studio.close()
    result["machine"]["load_after"] = os.getloadavg()
    return result


PREFACE = """\
A fusion is a backbone whose name is a recipe (`retrieval/backbones/fusion.py`):
`fusion:PART[*W]+PART[*W]…[;flip][;scales=S,…][;logits[=W]]`, e.g.
`python -m retrieval search photo.jpg --model 'fusion:lite0+lite1*2+lite2;flip;logits=0.5'`.
The presets `fusion-lite` (lite0+lite1+lite2) and `fusion-lite-flip` are in the
app's Backbone pickers and in `python -m retrieval models`, with their cost
relative to lite1 (an estimate from the part costs below: a view at scale s
costs s², a mirror doubles it).

Each part's pooled descriptor (mean over mirrors and scales) is L2-normalised
and scaled by sqrt(w/Σw), then the blocks are concatenated: the cosine of two
fused vectors is the weighted mean of the parts' cosines. The logits block is
the largest Lite part's ImageNet logits, from the same forward pass as its
feature map. The gallery's `center` post-processing then subtracts the mean of
the whole vector, i.e. of each block, and renormalises: a block's effective
weight becomes its share of the centred vector's squared norm (last column),
not its nominal weight."""


def render(result: dict) -> str:
    lines = ["# Fusion backbones: cost and quality", "",
             "Generated by `benchmarks/fusion.py` (command in its header) from `docs/fusion.json`.", "",
             *PREFACE.splitlines(), "",
             f"Machine: {result['machine']['cpus']} CPUs, load {result['machine']['load_before'][0]:.1f} before and "
             f"{result['machine']['load_after'][0]:.1f} after (a shared machine: timings are noisy). "
             f"Runtime asked: `{result['runtime_asked']}`.", ""]
    for folder, entry in result["sets"].items():
        lines += [f"## `{folder}` — {entry['images']} images, {entry['classes']} labels", ""]
        timing = entry.get("timing")
        if timing:
            lines += ["Cost per image (batch 32, model time, best of rounds):", "",
                      "| network | runtime | ms/image | × lite1 |", "|---|---|---:|---:|"]
            for name, p in timing["parts"].items():
                lines.append(f"| {name} | {p['runtime']} | {p['ms']:.1f} | {p['relative']:.2f} |")
            lines += ["", "Presets end to end (`FusionBackbone.embed`: resizing, mirrors, all parts):", "",
                      "| fusion | runtime | ms/image | × lite1 measured | × lite1 shown (estimate) |",
                      "|---|---|---:|---:|---:|"]
            for name, p in timing["presets"].items():
                lines.append(f"| `{name}` | {p['runtime']} | {p['ms']:.1f} | {p['relative']:.2f} | {p['estimate']:.2f} |")
            r = timing["resize_260_to_224_ms_per_image"]
            lines += ["", f"Resizing a part's batch 260 → 224: Pillow on uint8 {r['pillow_uint8']:.3f} ms/image, "
                      f"`keras.ops.image.resize` on float32 {r['keras_ops_float32']:.3f} ms/image.", ""]
        lines += [f"Leave-one-out mAP, post-processing `center` (end-to-end check of `{CHECKED}` against "
                  f"the combination: max |Δ| = {entry['check_max_abs_diff']:.1e}):", "",
                  "| configuration | mAP | mAP + DBA | nominal block weights | block shares after centring |",
                  "|---|---:|---:|---|---|"]
        for name, m in entry["map"].items():
            d = entry["dims"].get(name)
            nominal = " / ".join(f"{w:.2f}" for w in d["nominal"]) if d else ""
            centred = " / ".join(f"{w:.2f}" for w in d["centred"]) if d else ""
            lines.append(f"| `{name}` | {m['none']:.4f} | {m['dba']:.4f} | {nominal} | {centred} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="labelled photo folders (one subfolder per label)")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--render", action="store_true", help="only rewrite docs/fusion.md from docs/fusion.json")
    args = parser.parse_args()
    if not args.render:
        if not args.folders:
            parser.error("give at least one labelled folder, or --render")
        result = run(args.folders, args.runtime)
        (DOCS / "fusion.json").write_text(json.dumps(result, indent=1) + "\n")
    result = json.loads((DOCS / "fusion.json").read_text())
    (DOCS / "fusion.md").write_text(render(result))
    print((DOCS / "fusion.md").read_text())


if __name__ == "__main__":
    main()

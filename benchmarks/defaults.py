"""Re-choose the defaults by measurement: held-out queries on real-photo sets and Fashion-MNIST.

For each labelled real-photo set of ``benchmarks/realsets.py`` the gallery
and the held-out queries are embedded once per backbone (GeM p=3, decoded
from the files as the app decodes them: ``retrieval.decode.decode`` at the
backbone's input size, Keras f32, L2-normalised; vectors cached under
``benchmarks/out/defaults/``), then every post-processing x re-ranking is
scored two ways:

- held out: the queries against the gallery (``evaluation.query_gallery``);
  no query file, and no crop of one, is in the gallery;
- leave-one-out on the gallery alone (``evaluation.leave_one_out``), the
  protocol of ``docs/quality.md``, for comparison.

Fashion-MNIST adds the 10k test images as queries against the 60k training
images, from the vectors ``benchmarks/fashion_full.py extract`` cached in
``benchmarks/out/fmnist`` (no extraction here: a backbone without cached
vectors is skipped with a note).

Each row's gain is relative to the defaults before issue 12
(efficientnet-lite1, GeM p=3, centred, aQE; ``BASELINE``) measured on the
same set in the same run. Re-rankings and post-processings are read from
the engine's registries at run time (``all``: every one there, e.g.
``diffusion`` and ``kreciprocal``); backbones are named with ``--backbones``
(built-in ones, fusion presets such as ``fusion-lite``, or any
``fusion:...`` recipe). A name that does not exist (yet) is skipped with a
printed note.

    env -u OPENBLAS_CORETYPE flock /tmp/bench.lock python -m benchmarks.defaults \\
        [--sets skimage-parts,opencv-scenes,fashion-mnist] \\
        [--backbones efficientnet-lite0,efficientnet-lite1,efficientnet-lite2] \\
        [--reranks all] [--whitens all] [--fmnist-backbones efficientnet-lite1] [--fmnist-reranks ...]

OPENBLAS_CORETYPE is unset for this process only (it slows numpy on these
machines; see shared/NOTES.md). It writes ``docs/defaults.json`` and
``docs/defaults.md``; rows of sets not re-run are kept from the previous
JSON. ``--render`` only re-renders the markdown. Timings: ``ms/query`` is
the ranking alone (``Ranker.keys`` for the query batch, aQE and graph
re-scoring included; best of three passes on the small sets),
``build ms`` is making the ranker (fitting the post-processing, DBA's pass
over the gallery), ``embed ms/img`` is decoding plus the network, per image,
on this machine's cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from retrieval import config
from retrieval.backbones import BackboneUnavailable, get_spec
from retrieval.decode import decode
from retrieval.device import resolve
from retrieval.evaluation import exact_duplicate_groups, leave_one_out, query_gallery
from retrieval.pooling import DEFAULT_GEM_P, l2_normalize
from retrieval.ranking import build_ranker

from . import fashion_mnist, realsets

CACHE = Path("benchmarks/out/defaults")
FMNIST = Path("benchmarks/out/fmnist")
BASELINE = {"backbone": "efficientnet-lite1", "whiten": "center", "rerank": "qe"}  # the defaults before issue 12
DEFAULT_BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
BATCH = 32


# ---------------------------------------------------------------- embedding


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def embed_files(name: str, paths: list[Path], placement) -> tuple[np.ndarray, float, str]:
    """L2-normalised GeM vectors of the files, ms per image (decode + network), and the runtime."""
    spec = get_spec(name)
    backbone = spec.build("gem", DEFAULT_GEM_P, placement)
    size = spec.input_size
    backbone.embed(np.stack([decode(paths[0], size).pixels] * BATCH))  # warm-up: graph tracing is not per image
    started = time.perf_counter()
    out = []
    for i in range(0, len(paths), BATCH):
        pixels = np.stack([decode(p, size).pixels for p in paths[i:i + BATCH]])
        out.append(backbone.embed(pixels))
    ms = 1000 * (time.perf_counter() - started) / len(paths)
    return l2_normalize(np.concatenate(out).astype(np.float32)), ms, backbone.runtime


def cached_vectors(set_name: str, name: str, gallery: list[Path], queries: list[Path], placement):
    """(gallery vectors, query vectors, embed ms per image, runtime), computed once per set content."""
    key = _digest(gallery + queries)
    path = CACHE / set_name / f"{name.replace(':', '_').replace('/', '_')}_gem3_{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["gallery"], z["queries"], float(z["ms"]), str(z["runtime"])
    vectors, ms, runtime = embed_files(name, gallery + queries, placement)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, gallery=vectors[:len(gallery)], queries=vectors[len(gallery):], ms=ms, runtime=runtime)
    return vectors[:len(gallery)], vectors[len(gallery):], ms, runtime


# ---------------------------------------------------------------- scoring


def held_out(gallery: np.ndarray, g_labels: list, queries: np.ndarray, q_labels: list, whiten: str, rerank: str):
    t = time.perf_counter()
    ranker = build_ranker(gallery, "cosine", rerank, whiten)
    if getattr(ranker, "graph", None) is not None:  # graph re-rankers build lazily: count it as building
        ranker.graph.get()
    build_ms = 1000 * (time.perf_counter() - t)
    spent = [0.0]

    def keys(rows):
        t0 = time.perf_counter()
        out = ranker.keys(queries[rows])
        spent[0] += time.perf_counter() - t0
        return out

    report = query_gallery(q_labels, g_labels, keys)
    if len(queries) <= 1000:  # small sets: a pass takes milliseconds, so take the best of three
        for _ in range(3):
            t0 = time.perf_counter()
            ranker.keys(queries)
            spent[0] = min(spent[0], time.perf_counter() - t0)
    return report, build_ms, 1000 * spent[0] / max(len(queries), 1)


def loo(gallery: np.ndarray, labels: list, whiten: str, rerank: str):
    ranker = build_ranker(gallery, "cosine", rerank, whiten)
    return leave_one_out(labels, lambda rows, ex: ranker.full_order(gallery[rows], ex), exact_duplicate_groups(gallery))


def _r(x: float, n: int = 4) -> float:
    return round(float(x), n)


def score_grid(set_name: str, backbone: str, vectors, labels, whitens, reranks, embed_ms, runtime,
               with_loo: bool) -> list[dict]:
    gallery, queries = vectors
    g_labels, q_labels = labels
    rows = []
    for whiten in whitens:
        for rerank in reranks:
            report, build_ms, ms_query = held_out(gallery, g_labels, queries, q_labels, whiten, rerank)
            row = {"set": set_name, "backbone": backbone, "pooling": "gem3", "whiten": whiten, "rerank": rerank,
                   "map": _r(report.map), "p_at_1": _r(report.p_at[1]), "p_at_10": _r(report.p_at[10]),
                   "r_at_10": _r(report.r_at[10]), "queries": report.queries, "gallery": len(gallery),
                   "ms_per_query": _r(ms_query, 3), "build_ms": _r(build_ms, 1),
                   "embed_ms_per_image": _r(embed_ms, 2) if embed_ms is not None else None, "runtime": runtime}
            if with_loo:
                lo = loo(gallery, g_labels, whiten, rerank)
                row.update({"loo_map": _r(lo.map), "loo_p_at_1": _r(lo.p_at[1])})
            rows.append(row)
            print(f"{set_name:<14} {backbone:<20} {whiten:<7} {rerank:<12} mAP {row['map']:.4f}  P@1 "
                  f"{row['p_at_1']:.3f}  P@10 {row['p_at_10']:.3f}"
                  + (f"  LOO mAP {row['loo_map']:.4f}" if with_loo else "")
                  + f"  {ms_query:.2f} ms/q  build {build_ms:.0f} ms", flush=True)
    return rows


def mark_gains(rows: list[dict]) -> list[dict]:
    """Flag the baseline row of each set and each row's relative gain over it (same set, same run)."""
    for set_name in {r["set"] for r in rows}:
        mine = [r for r in rows if r["set"] == set_name]
        base = next((r for r in mine if all(r[k] == v for k, v in BASELINE.items())), None)
        for r in mine:
            r["baseline"] = r is base
            r["current_default"] = (r["backbone"], r["whiten"], r["rerank"]) == (
                config.DEFAULT_BACKBONE, config.DEFAULT_WHITEN, config.DEFAULT_RERANK)
            r["gain"] = _r(r["map"] / base["map"] - 1) if base and base["map"] else None
            if base and "loo_map" in r and base.get("loo_map"):
                r["loo_gain"] = _r(r["loo_map"] / base["loo_map"] - 1)
    return rows


# ---------------------------------------------------------------- the sets


def run_real_set(set_name: str, backbones, whitens, reranks, placement) -> tuple[list[dict], dict]:
    set_dir = realsets.OUT / set_name
    manifest = realsets.build_set(set_name, realsets.OUT)
    gallery, g_labels, queries, q_labels = realsets.load(set_dir)
    info = {k: v for k, v in manifest["summary"].items() if k != "per_class"}
    rows = []
    for name in backbones:
        t = time.perf_counter()
        g, q, ms, runtime = cached_vectors(set_name, name, gallery, queries, placement)
        print(f"{set_name}: {name} vectors in {time.perf_counter() - t:.1f} s ({ms:.1f} ms/img when embedded)",
              flush=True)
        rows += score_grid(set_name, name, (g, q), (g_labels, q_labels), whitens, reranks, ms, runtime, True)
    return rows, info


def fmnist_set_name(limit: int | None) -> str:
    """The full split is ``fashion-mnist``; fewer queries are another set, never mixed with it."""
    return "fashion-mnist" if not limit or limit >= 10000 else f"fashion-mnist-q{limit}"


def run_fmnist(backbones, whitens, reranks, limit: int | None) -> tuple[list[dict], dict]:
    _, train_labels = fashion_mnist.load("train")
    _, test_labels = fashion_mnist.load("t10k", limit)
    g_labels = [fashion_mnist.CLASSES[i] for i in train_labels]
    q_labels = [fashion_mnist.CLASSES[i] for i in test_labels]
    timings_path = FMNIST / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    rows = []
    for name in backbones:
        paths = [FMNIST / f"{name}_gem3_{split}.npy" for split in ("train", "t10k")]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            print(f"fashion-mnist: {name} skipped, no cached vectors ({', '.join(missing)}; "
                  f"run python -m benchmarks.fashion_full extract --backbones {name})")
            continue
        g = l2_normalize(np.load(paths[0]).astype(np.float32))
        q = l2_normalize(np.load(paths[1])[:limit].astype(np.float32))
        t = timings.get(f"{name}/t10k")
        ms = 1000 / t["img_per_s"] if t else None
        rows += score_grid(fmnist_set_name(limit), name, (g, q), (g_labels, q_labels), whitens, reranks, ms, "Keras f32",
                           False)
    return rows, {"classes": 10, "gallery": len(g_labels), "queries": len(q_labels)}


# ---------------------------------------------------------------- main


def _known(kind: str, asked: str, registry) -> list[str]:
    names = list(registry) if asked == "all" else [n for n in asked.split(",") if n]
    for n in names:
        if n not in registry:
            print(f"note: {kind} {n!r} does not exist (yet) and is skipped; known: {', '.join(registry)}")
    return [n for n in names if n in registry]


def _ready_backbones(asked: str) -> list[str]:
    """The named backbones (built-in, fusion presets, ``fusion:…`` recipes) that can run here."""
    names = []
    for n in (n for n in asked.split(",") if n):
        try:
            ok, why = get_spec(n).ready()
        except BackboneUnavailable as exc:
            ok, why = False, f"it does not exist (yet): {exc}"
        if ok:
            names.append(n)
        else:
            print(f"note: backbone {n!r} is skipped: {why}")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="skimage-parts,opencv-scenes,fashion-mnist")
    parser.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    parser.add_argument("--fmnist-backbones", default="efficientnet-lite1")
    parser.add_argument("--fmnist-limit", type=int, default=None,
                        help="first N test queries (default: all 10k); recorded as the set fashion-mnist-qN")
    parser.add_argument("--reranks", default="all", help="comma-separated, or all in retrieval.config.RERANKS")
    parser.add_argument("--fmnist-reranks", default=None, help="for Fashion-MNIST only (default: --reranks)")
    parser.add_argument("--whitens", default="all", help="comma-separated, or all in retrieval.config.WHITENINGS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/defaults.json"))
    parser.add_argument("--render", action="store_true", help="only re-render the markdown from --out")
    args = parser.parse_args(argv)
    if args.render:
        args.out.with_suffix(".md").write_text(render(json.loads(args.out.read_text())))
        return

    reranks = _known("re-ranking", args.reranks, config.RERANKS)
    whitens = _known("post-processing", args.whitens, config.WHITENINGS)
    placement = resolve(args.device)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"rows": [], "sets": {}}
    sets = [s for s in args.sets.split(",") if s]
    rows, infos = [], {}
    for set_name in sets:
        if set_name == "fashion-mnist":
            fm_reranks = _known("re-ranking", args.fmnist_reranks, config.RERANKS) if args.fmnist_reranks else reranks
            new, info = run_fmnist(_ready_backbones(args.fmnist_backbones), whitens, fm_reranks, args.fmnist_limit)
            set_name = fmnist_set_name(args.fmnist_limit)
        elif set_name in realsets.SETS:
            why = realsets.available(set_name)
            if why:
                print(f"note: {set_name} skipped: {why}")
                continue
            new, info = run_real_set(set_name, _ready_backbones(args.backbones), whitens, reranks, placement)
        else:
            print(f"note: unknown set {set_name!r} skipped; known: {', '.join([*realsets.SETS, 'fashion-mnist'])}")
            continue
        if new:
            rows += mark_gains(new)
            infos[set_name] = {**info, "measured": time.strftime("%Y-%m-%d %H:%M"),
                               "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    done = {r["set"] for r in rows}
    kept = [r for r in previous["rows"] if r["set"] not in done]
    result = {"command": "env -u OPENBLAS_CORETYPE flock /tmp/bench.lock python -m benchmarks.defaults",
              "baseline": BASELINE,
              "sets": {**{k: v for k, v in previous.get("sets", {}).items() if k not in done}, **infos},
              "rows": kept + rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(render(result))


# ---------------------------------------------------------------- markdown


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:+.1f} %"


def _config(r: dict) -> str:
    return f"{r['backbone']} · {r['whiten']} · {r['rerank']}"


def render(result: dict) -> str:
    rows = result["rows"]
    real = [s for s in result["sets"] if not s.startswith("fashion-mnist")]
    lines = [
        "# Defaults, measured on held-out queries",
        "",
        f"Made by `{result['command']}` (`benchmarks/defaults.py`; the real-photo sets are built by "
        "`benchmarks/realsets.py`, whose docstring gives their sources and licences). Every row is GeM p=3 and "
        "cosine. *Gain* is the relative mAP change over the defaults before issue 12 "
        f"({_config(result['baseline'])}, marked ●) on the same set in the same run; ○ marks the configuration "
        "`retrieval/config.py` has now, where it differs. LOO is leave-one-out on the gallery alone.",
        "",
        "| set | classes | gallery | queries | measured |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for s, info in result["sets"].items():
        lines.append(f"| {s} | {info['classes']} | {info['gallery']} | {info['queries']} | {info['measured']} |")
    lines += ["", "## Best per set", "", "| set | defaults before (mAP) | best configuration | mAP | gain |",
              "| --- | ---: | --- | ---: | ---: |"]
    for s in result["sets"]:
        mine = [r for r in rows if r["set"] == s]
        base = next((r for r in mine if r.get("baseline")), None)
        best = max(mine, key=lambda r: r["map"])
        lines.append(f"| {s} | {base['map']:.4f} | {_config(best)} | {best['map']:.4f} | {_pct(best['gain'])} |"
                     if base else f"| {s} | – | {_config(best)} | {best['map']:.4f} | |")
    if len(real) > 1:
        lines += ["", "## Mean gain over the real-photo sets", "",
                  "Configurations measured on every real-photo set, by their mean relative gain there (held out).",
                  "", "| configuration | " + " | ".join(real) + " | mean gain | worst gain |",
                  "| --- | " + " | ".join("---:" for _ in real) + " | ---: | ---: |"]
        by_config: dict[tuple, dict] = {}
        for r in rows:
            if r["set"] in real and r.get("gain") is not None:
                by_config.setdefault((r["backbone"], r["whiten"], r["rerank"]), {})[r["set"]] = r
        table = [(k, v) for k, v in by_config.items() if len(v) == len(real)]
        table.sort(key=lambda kv: -np.mean([kv[1][s]["gain"] for s in real]))
        for (b, w, rr), per in table:
            gains = [per[s]["gain"] for s in real]
            cells = " | ".join(f"{per[s]['map']:.4f} ({_pct(per[s]['gain'])})" for s in real)
            lines.append(f"| {b} · {w} · {rr} | {cells} | {_pct(float(np.mean(gains)))} | {_pct(min(gains))} |")
    for s in result["sets"]:
        mine = sorted((r for r in rows if r["set"] == s), key=lambda r: -r["map"])
        has_loo = any("loo_map" in r for r in mine)
        info = result["sets"][s]
        lines += ["", f"## {s}", "", f"{info['queries']} held-out queries against {info['gallery']} gallery images, "
                  f"{info['classes']} classes; {info['machine']}.", "",
                  "| | backbone | post-proc. | re-rank | mAP | gain | P@1 | P@10 | "
                  + ("LOO mAP | LOO gain | " if has_loo else "") + "ms/query | build ms | embed ms/img |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | "
                  + ("---: | ---: | " if has_loo else "") + "---: | ---: | ---: |"]
        for r in mine:
            mark = "●" if r.get("baseline") else "○" if r.get("current_default") else ""
            loo_cells = f"{r['loo_map']:.4f} | {_pct(r.get('loo_gain'))} | " if has_loo else ""
            embed = "" if r.get("embed_ms_per_image") is None else f"{r['embed_ms_per_image']:.1f}"
            lines.append(f"| {mark} | {r['backbone']} | {r['whiten']} | {r['rerank']} | {r['map']:.4f} | "
                         f"{_pct(r['gain'])} | {r['p_at_1']:.3f} | {r['p_at_10']:.3f} | {loo_cells}"
                         f"{r['ms_per_query']:.2f} | {r['build_ms']:.0f} | {embed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

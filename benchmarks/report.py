"""Render docs/benchmarks.md and its plots from the committed JSON results.

Each benchmark writes its own JSON (with the command that made it); this
script only turns them into the page and the figures, so re-running one
benchmark and then this script updates the page.

    python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load(name: str) -> dict | None:
    path = DOCS / name
    return json.loads(path.read_text()) if path.exists() else None


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def throughput_section(ix: dict) -> list[str]:
    """Per row (photo set per config, Fashion-MNIST): seed, model alone, decode, end to end per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ix["rows"]
    runtimes = list(next(iter(rows.values()))["end_to_end"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(runtimes)
    for j, runtime in enumerate(runtimes):
        values = [row["end_to_end"][runtime]["img_per_s"] for row in rows.values()]
        bars = ax.bar([i + j * width for i in range(len(rows))], values, width, label=runtime)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([i + width * (len(runtimes) - 1) / 2 for i in range(len(rows))], list(rows), fontsize=8)
    ax.set_ylabel("images / second, files → SQLite")
    ax.set_title(f"Indexing end to end per runtime ({ix['machine']['cores']} cores)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "throughput.png", dpi=110)
    plt.close(fig)
    ps = ix["photoset"]
    lines = [
        "## 1. Indexing throughput",
        "",
        f"`{ix['command']}` on {ix['machine']['cpu']} ({ix['machine']['cores']} cores). The photo set "
        f"(`benchmarks/photoset.py`): {ps['files']} files in {ps['classes']} labelled folders, "
        f"{', '.join(f'{n} {k}' for k, n in ps['per_format'].items())}; by size "
        f"{', '.join(f'{n} {k}' for k, n in ps['megapixels'].items())} (median {ps['megapixels_min_median_max'][1]} MP, "
        f"largest {ps['megapixels_min_median_max'][2]} MP); {sum(n for o, n in ps['exif_orientation'].items() if o != '1')} "
        f"EXIF-rotated; {ps['bytes_total'] / 1e6:.0f} MB. Fashion-MNIST PNGs are the second workload. "
        "Model alone: pre-decoded, pre-processed batches of 32. End to end: `Studio.index` from files to SQLite "
        "rows with a warm model; CPU is process CPU time / wall / cores; stage shares are how long the decode "
        "threads (summed), the model and the SQLite writer worked, over the wall time.",
        "",
        "![throughput](throughput.png)",
        "",
    ]
    for name, row in rows.items():
        model = row["model_img_per_s"]
        lines += [f"### {name} — `{row['config']}`, {row['images']} files", "",
                  "| path | img/s |", "| --- | ---: |",
                  f"| seed: one file at a time, decode + `model.predict` | {row['seed_img_per_s']} |"]
        lines += [f"| model alone: {k} | {v} |" for k, v in model.items()]
        lines += [f"| decode alone (read + sha256 + decode), {k} | {v} |" for k, v in row["decode_img_per_s"].items()]
        for runtime, e in row["end_to_end"].items():
            busy = ", ".join(f"{k} {v:.0%}" for k, v in e["stage_busy_share"].items())
            lines.append(f"| **end to end, `--runtime {runtime}`** ({e['runtime']}; CPU {e['cpu_utilisation']:.0%}; "
                         f"busy: {busy}) | **{e['img_per_s']}** |")
        lines += ["", "| ratio | measured |", "| --- | ---: |"]
        lines += [f"| {k.replace('_', ' ')} | {v} × |" for k, v in row["ratios"].items()]
        lines.append("")
    photos_lite0 = next((r for n, r in rows.items() if n.startswith("photos") and "lite0" in n), None)
    photos_default = next((r for n, r in rows.items() if n.startswith("photos") and "default" in n), None)
    if photos_lite0 and photos_default:
        a = photos_lite0["ratios"]["auto_end_to_end_over_keras_model_alone"]
        b = photos_lite0["ratios"]["auto_end_to_end_over_seed"]
        c = photos_default["ratios"]["auto_end_to_end_over_keras_end_to_end"]
        lines += ["| target (photo set, one run) | measured | |", "| --- | ---: | --- |",
                  f"| lite0/GAP end to end ≥ 2.0 × the Keras model alone | {a} × | {_mark(a >= 2.0)} |",
                  f"| lite0/GAP end to end ≥ 15 × the seed's loop | {b} × | {_mark(b >= 15)} |",
                  f"| default end to end ≥ 2.5 × `--runtime keras` end to end | {c} × | {_mark(c >= 2.5)} |", ""]
    if ix.get("sweep"):
        lines += ["Batch size × decode threads, default config, `auto`, end to end (img/s):", "",
                  "| setting | img/s |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in ix["sweep"].items()]
        lines.append("")
    return lines


def search_section(se: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = se["rows"]
    n = [r["n"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.loglog(n, [r["ours_ms"] for r in rows], "o-", label="ours (numpy)")
    a1.loglog(n, [r["faiss_ms"] for r in rows], "s--", label="faiss IndexFlatIP")
    a1.set_xlabel("gallery size N")
    a1.set_ylabel("single-query latency, ms")
    a1.legend()
    a1.grid(True, which="both", alpha=0.3)
    a2.loglog(n, [r["ours_batch_qps"] for r in rows], "o-", label="ours (numpy)")
    a2.loglog(n, [r["faiss_batch_qps"] for r in rows], "s--", label="faiss IndexFlatIP")
    a2.set_xlabel("gallery size N")
    a2.set_ylabel(f"queries/s, batch of {se['batch']}")
    a2.legend()
    a2.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Exact top-{se['k']} search, d={se['dim']}, {se['threads']} threads")
    fig.tight_layout()
    fig.savefig(DOCS / "search_latency.png", dpi=110)
    plt.close(fig)
    lines = [
        "## 2. Search latency and scale",
        "",
        f"`{se['command']}` — synthetic unit vectors, k={se['k']}, {se['threads']} threads for both, single-query "
        f"median of {se['repeats']} queries, batch of {se['batch']} (median of 3). BLAS: {', '.join(se['blas'])}.",
        "",
        "![search latency](search_latency.png)",
        "",
        "| N | ours ms | faiss ms | ratio (target ≤ 1.2) | ours q/s (batch) | faiss q/s (batch) | ratio (target ≥ 1) | top-10 agreement |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['ours_ms']:.2f} | {r['faiss_ms']:.2f} | {r['latency_ratio']:.2f} ({_mark(r['latency_ratio'] <= 1.2)}) "
                     f"| {r['ours_batch_qps']:.0f} | {r['faiss_batch_qps']:.0f} | {r['batch_ratio']:.2f} ({_mark(r['batch_ratio'] >= 0.95)}) "
                     f"| {r['agreement_at_10']:.2f} |")
    unset = _load("search_openblas_unset.json")
    if unset:
        lines += ["", "The same run with `OPENBLAS_CORETYPE`/`OPENBLAS_L2_SIZE` unset "
                  "(`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.search --out docs/search_openblas_unset.json`): numpy then picks its AVX-512 kernels "
                  "while faiss's older bundled OpenBLAS misdetects this CPU and falls back to a generic one "
                  f"(BLAS: {', '.join(unset['blas'])}), so this table flatters us and the one above is the fair one.", "",
                  "| N | single-query ratio | batch ratio |", "| ---: | ---: | ---: |"]
        lines += [f"| {r['n']:,} | {r['latency_ratio']:.2f} | {r['batch_ratio']:.2f} |" for r in unset["rows"]]
    fp16 = [r for r in rows if "fp16_ms" in r]
    if fp16:
        lines += ["", "float16 storage, scored with numpy: " + "; ".join(
            f"N={r['n']:,}: {r['fp16_ms']:.0f} ms/query (vs {r['ours_ms']:.1f} ms in float32), recall@10 {r['fp16_recall_at_10']:.3f}"
            for r in fp16) + ". numpy has no half-precision BLAS on the CPU, so float16 halves memory but is "
            "30–40× slower; the engine stays in float32."]
    return lines + [""]


def ann_section(an: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for r in an["results"]:
        xs = [p["speedup"] for p in r["points"]]
        ys = [p["recall_at_10"] for p in r["points"]]
        ax.plot(xs, ys, "o-", label=f"N = {r['n']:,}")
        for p in r["points"]:
            ax.annotate(f"nprobe {p['nprobe']}", (p["speedup"], p["recall_at_10"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    ax.axhline(0.95, color="grey", ls=":", lw=1)
    ax.axvline(20, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up per query over exact search")
    ax.set_ylabel("recall@10 against exact")
    ax.set_title("IVF index: recall against speed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "ann_recall_speed.png", dpi=110)
    plt.close(fig)
    lines = ["### Approximate index", "",
             f"`{an['command']}` — clustered synthetic vectors (d={an['dim']}, {an['per_cluster']} per cluster, "
             f"low-rank as CNN descriptors are), {an['queries']} queries, recall@{an['k']} against exact search on the "
             "same queries; latency is the whole approximate path (IVF candidates, then exact re-scoring).", "",
             "![recall against speed](ann_recall_speed.png)", "",
             "| N | lists | build s | exact ms | nprobe | ms | speed-up | recall@10 |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in an["results"]:
        for p in r["points"]:
            lines.append(f"| {r['n']:,} | {r['nlist']} | {r['build_s']} | {r['exact_ms']} | {p['nprobe']} | {p['ms']} | "
                         f"{p['speedup']}× | {p['recall_at_10']} |")
    big = [r for r in an["results"] if r["n"] >= 1_000_000]
    if big:
        ok = [p for p in big[0]["points"] if p["recall_at_10"] >= 0.95 and p["speedup"] >= 20]
        lines += ["", f"Target at 1M (recall@10 ≥ 0.95 and ≥ 20× faster than exact): {_mark(bool(ok))}"
                  + (f" at nprobe {ok[0]['nprobe']}." if ok else ".")]
    real = _load("ann_real.json")
    if real:
        lines += ["", f"On real descriptors (`{real['command']}`): the {real['n']:,} Fashion-MNIST training images "
                  f"(lite1, GeM) as the gallery, {real['queries']} test images as queries, {real['nlist']} lists, "
                  f"built in {real['build_s']} s; exact search {real['exact_ms']} ms per query.", "",
                  "| nprobe | ms | speed-up | recall@10 |", "| ---: | ---: | ---: | ---: |"]
        for p in real["points"]:
            mark = " (default)" if p["default"] else ""
            lines.append(f"| {p['nprobe']}{mark} | {p['ms']} | {p['speedup']}× | {p['recall_at_10']} |")
    return lines + [""]


def store_section(st: dict) -> list[str]:
    return [
        "## 3. Store",
        "",
        f"`{st['command']}` — {st['n']:,} vectors of {st['dim']} float32.",
        "",
        "| measure | value | target |",
        "| --- | ---: | --- |",
        f"| insert (one transaction per 1000) | {st['insert_per_s']:,} vectors/s | |",
        f"| load into the search matrix, fresh connection (median of {st['repeats']}) | {st['load_cold_s_median']} s | < 1 s: {_mark(st['load_cold_s_median'] < 1)} |",
        f"| load again (in-memory cache, generation check) | {st['load_warm_ms']} ms | |",
        f"| database bytes per image | {st['db_bytes_per_image']:,} | |",
        *([f"| resident memory of a process with the gallery loaded and searched | {st['rss_mb_loaded']:,} MB | ≤ 1.5 GB: "
           f"{_mark(st['rss_mb_loaded'] <= 1536)} |"] if "rss_mb_loaded" in st else []),
        "",
    ]


def startup_section(su: dict) -> list[str]:
    runs = {k: v for k, v in su.items() if isinstance(v, dict)}
    names = list(runs)

    def row(label: str, fmt) -> str:
        return f"| {label} | " + " | ".join(fmt(runs[n]) for n in names) + " |"

    return [
        "## 4. Start-up and query latency (the app)",
        "",
        f"`{su['command']}` — process start to the page answering, and to the first answered `/search` through "
        "gradio_client; then latency of further searches on the demo gallery (default configuration).",
        "",
        "| | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        row("runtime", lambda r: r.get("runtime", "")),
        row("page serving", lambda r: f"{r['page_s']} s"),
        row("first answered query (from start)", lambda r: f"{r['first_query_s']} s"),
        row("first answered query after the page is up", lambda r: f"{r.get('first_query_after_page_s', '')} s"),
        row("query embedding p50 / p95", lambda r: f"{r.get('embed_ms_p50', '')} / {r.get('embed_ms_p95', '')} ms"),
        row("query, server time p50 / p95", lambda r: f"{r['server_ms_p50']} / {r['server_ms_p95']} ms"),
        row("query, client round trip p50 / p95", lambda r: f"{r['round_trip_ms_p50']} / {r['round_trip_ms_p95']} ms"),
        "",
    ]


def main() -> None:
    out = ["# Benchmarks", "",
           "All figures on this project's 2-core, no-GPU machines, each against a baseline measured in the same run. "
           "Regenerate the page with `python -m benchmarks.report` after re-running any benchmark "
           "(`pip install -r benchmarks/requirements.txt` first).", ""]
    for name, section in (("indexing.json", throughput_section), ("search.json", search_section),
                          ("ann.json", ann_section), ("store.json", store_section), ("startup.json", startup_section)):
        data = _load(name)
        if data:
            out += section(data)
    out += ["## 5. Retrieval quality", ""] + quality_section()
    out += ["", "## 6. Beyond one machine", "", "Each has its own page, with the command that made it: "
            "[distributed.md](distributed.md) (Ray extraction against in-process indexing on real photos) and "
            "[milvus_scale.md](milvus_scale.md) (Milvus Lite against faiss IVF and exact search at 100k and 1M).", ""]
    (DOCS / "benchmarks.md").write_text("\n".join(out))
    print(f"wrote {DOCS / 'benchmarks.md'}")


def quality_section() -> list[str]:
    """The headline rows of the full Fashion-MNIST table; the whole table is linked."""
    data = _load("fashion_full.json")
    lines = ["Queries: the 10,000 test images; gallery: the 60,000 training images "
             f"(`{data['command']}`; every row in [fashion_full.md](fashion_full.md)). "
             "The leave-one-out table on 2,000 images that first chose the defaults is [quality.md](quality.md)."
             if data else "See [quality.md](quality.md) (`python -m benchmarks.quality`).", ""]
    if not data:
        return lines
    lines += ["| backbone | pooling | configuration | mAP | P@1 | P@10 | R@10 |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    from .fashion_full import describe

    for r in data["rows"]:
        if r["options"].get("limit"):
            continue
        if not r["options"] or r["options"] == {"whiten": "center"} or r["options"] == {"whiten": "center", "rerank": "qe"}:
            lines.append(f"| {r['backbone']} | {r['pooling']} | {describe(r['options'])} | {r['map']:.4f} | "
                         f"{r['p_at_1']:.4f} | {r['p_at_10']:.4f} | {r['r_at_10']:.4f} |")
    return lines + [""]


if __name__ == "__main__":
    main()

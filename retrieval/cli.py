"""``python -m retrieval``: a thin command line over the service layer.

Why thin: every command is one ``Studio`` call plus printing, so the CLI, the
app and the Python API cannot drift apart. Errors a user can fix are one line
on stderr and exit status 2; bad images inside a folder are reported and
skipped without failing the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config as C
from .pooling import POOLINGS
from .rerank import describe as describe_reranks
from .runtime import RUNTIMES

EXIT_USAGE = 2


DB_HELP = "SQLite file (default: the app's data folder, see $RETRIEVAL_DATA_DIR)"


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--collection", default="default", help="gallery name (default: default)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=C.DEFAULT_BACKBONE, help=f"backbone (default: {C.DEFAULT_BACKBONE}); see 'models'; "
                   "or a fusion recipe, e.g. 'fusion:lite0+lite1*2+lite2;flip;scales=1,1.414;logits=0.5' (docs/fusion.md)")
    p.add_argument("--pooling", default=C.DEFAULT_POOLING, choices=POOLINGS, help=f"default: {C.DEFAULT_POOLING}")
    p.add_argument("--gem-p", type=float, default=C.DEFAULT_GEM_P, help="GeM exponent (default: 3)")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's own)")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or a local Keras weights file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                   help="where CNNs run: auto (a GPU if one works, else the CPU), cpu or gpu (default: auto)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs CNNs: auto (the fastest that matched Keras on the reference photos here; "
                        "see 'runtimes'), keras, or a named OpenVINO precision (default: auto)")


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default=C.DEFAULT_METRIC, choices=C.METRICS, help=f"default: {C.DEFAULT_METRIC}")
    p.add_argument("--rerank", default=C.DEFAULT_RERANK, choices=C.RERANKS,
                   help=f"re-ranking after the first search: {describe_reranks()} (default: {C.DEFAULT_RERANK})")
    p.add_argument("--whiten", default=C.DEFAULT_WHITEN, choices=C.WHITENINGS,
                   help=f"post-processing learned on the collection, e.g. center (subtract its mean) or pca "
                        f"(PCA-whitening with shrinkage); default: {C.DEFAULT_WHITEN}")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_index(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default="auto", choices=C.INDEXES,
                   help="exact search, the approximate IVF index, or auto (IVF from 50,000 images on)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval", description="Content-based image retrieval with CNN features.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list backbones, their dimension, and whether they work offline")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--db", help="also list the models trained with 'adapt' in this database")

    p = sub.add_parser("runtimes", help="check every runtime against Keras on the reference photos: speed, "
                       "parity, and which one auto uses")
    p.add_argument("--model", default=C.DEFAULT_BACKBONE, help=f"backbone (default: {C.DEFAULT_BACKBONE})")
    p.add_argument("--pooling", default=C.DEFAULT_POOLING, choices=POOLINGS, help=f"default: {C.DEFAULT_POOLING}")
    p.add_argument("--gem-p", type=float, default=C.DEFAULT_GEM_P, help="GeM exponent (default: 3)")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's own)")
    p.add_argument("--db", help="a database whose trained models may be checked too")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("index", help="add folders (recursively), image files or zip archives to a collection")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a folder (labels from first-level subfolders), an image, or a zip (labels from its folders)")
    _add_db(p)
    _add_model(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per model call and per transaction (default: 32)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores, 2..8)")
    p.add_argument("--labels", help="CSV of filename,label (default: first-level subfolder names)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("search", help="rank a collection against a query image")
    p.add_argument("image", help="the query: an image file")
    _add_db(p)
    _add_model(p)
    _add_search(p)
    _add_index(p)
    p.add_argument("-k", type=int, default=10, help="number of results (default: 10)")

    p = sub.add_parser("evaluate", help="mAP, P@k, R@k, nDCG over labelled images: leave-one-out, or held-out "
                       "queries with --queries")
    _add_db(p)
    _add_model(p)
    _add_search(p)
    p.add_argument("--queries", metavar="FOLDER|ZIP|COLLECTION",
                   help="held-out queries: a folder or zip with one subfolder per label, or another collection; "
                        "they ask the whole gallery, and any that is also a gallery member is left out and counted. "
                        "The honest protocol for re-rankings that learn from the gallery (default: leave-one-out, "
                        "every labelled member asks the others)")

    p = sub.add_parser("remove", help="remove an image by path, name or sha256")
    p.add_argument("target", metavar="PATH_OR_HASH", help="the image's indexed path, its name in the collection, "
                   "or its sha256")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--collection", default=None, help="only from this collection (default: from every collection)")

    p = sub.add_parser("adapt", help="train a model for a labelled collection; it becomes a new backbone")
    _add_db(p)
    _add_model(p)
    p.add_argument("--method", default="head", choices=("head", "finetune", "scratch"),
                   help="head: projection on cached embeddings (fast); finetune: top blocks of the CNN; "
                        "scratch: the seed's small CNN (default: head)")
    p.add_argument("--epochs", type=int, default=None, help="at most this many (early stopping); default 30 for "
                   "the head, 5 for image models")
    p.add_argument("--test-fraction", type=float, default=0.3, help="labelled images held out for the figures")
    p.add_argument("--name", help="name of the new model (default: made up from method and backbone)")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser("explain", help="heatmaps of what makes two images similar")
    p.add_argument("query", help="an image file")
    p.add_argument("result", help="an image file, or a member of the collection (name, path or sha256)")
    _add_db(p)
    _add_model(p)
    p.add_argument("--whiten", default=C.DEFAULT_WHITEN, choices=C.WHITENINGS,
                   help=f"post-processing the heatmaps account for (default: {C.DEFAULT_WHITEN})")
    p.add_argument("--out", required=True, help="PNG to write: query and result side by side, overlaid")
    p.add_argument("--json", action="store_true", help="machine-readable summary")

    p = sub.add_parser("delete-model", help="delete a model trained with 'adapt', and its vectors")
    p.add_argument("name", help="the model's name, as 'models --db DB' lists it")
    p.add_argument("--db", help=DB_HELP)

    p = sub.add_parser("collections", help="list collections")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("drop", help="delete a collection, as the app's Reset does: its images that no other "
                       "collection holds, their uploaded files, the models trained on it and its index files")
    p.add_argument("collection", metavar="COLLECTION", help="the collection to delete (see 'collections')")
    p.add_argument("--db", help=DB_HELP)
    return parser


def _extractor(args) -> C.ExtractorConfig:
    return C.ExtractorConfig(args.model, args.pooling, args.gem_p, args.input_size, args.weights)


def _search_config(args, k: int = 10) -> C.SearchConfig:
    return C.SearchConfig(args.metric, k, args.rerank, args.whiten, getattr(args, "index", "auto"))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _studio(args, must_exist: bool = True):
    from .service import Studio
    from .settings import default_db

    db = Path(args.db) if getattr(args, "db", None) else default_db()
    if must_exist and not db.is_file():
        raise FileNotFoundError(f"no database at {db}: run 'python -m retrieval index FOLDER --db {db}' first")
    return Studio(db, device=getattr(args, "device", "auto"), batch_size=getattr(args, "batch_size", 32) or 32,
                  workers=getattr(args, "workers", None), runtime=getattr(args, "runtime", "auto"))


def cmd_models(args) -> int:
    if args.db:  # the built-in backbones and the models trained in this database
        models = _studio(args).models()
    else:  # the built-in ones: listed by a Studio on a throwaway database, so both lists read the same
        import tempfile

        from .service import Studio

        with tempfile.TemporaryDirectory(prefix="retrieval-models-") as tmp:
            studio = Studio(Path(tmp) / "models.sqlite", device="cpu")
            try:
                models = studio.models()
            finally:
                studio.close()
    if args.json:
        _print_json(models)
        return 0
    for m in models:
        mark = "ready" if m["ready"] else "not ready"
        print(f"{m['name']:<20} {m['family']:<12} dim {m['dim']:<5} input {m['input_size']:<4} {mark}: {m['status']}")
        for key, entry in m.get("runtimes", {}).items():
            print(f"{'':<20} runs {key}: {entry['runtime']} — {entry['note']}")
    return 0


def cmd_runtimes(args) -> int:
    import tempfile

    from .service import Studio

    cfg = C.ExtractorConfig(args.model, args.pooling, args.gem_p, args.input_size)
    with tempfile.TemporaryDirectory(prefix="retrieval-runtimes-") as tmp:
        studio = _studio(args) if args.db else Studio(Path(tmp) / "runtimes.sqlite", device="cpu")
        try:
            rows = studio.runtime_trials(cfg)
        finally:
            studio.close()
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(f"{row['runtime']:<14} {row['status']}")
    return 0


def cmd_index(args) -> int:
    paths = [Path(p) for p in args.paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
    folders = [p for p in paths if p.is_dir()]
    files = [p for p in paths if not p.is_dir()]
    studio = _studio(args, must_exist=False)
    bar = None

    def progress(done: int, total: int, message: str) -> None:
        nonlocal bar
        if args.quiet or args.json:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="img", desc="indexing", file=sys.stderr)
        bar.n = done
        bar.set_postfix_str(message, refresh=True)

    cfg = _extractor(args)
    report = None
    for folder in folders:
        part = studio.index(folder, args.collection, cfg, args.labels, progress)
        report = part if report is None else report.merge(part)
    if files:  # copied into the data folder by content hash, like the app's uploads
        part = studio.upload([(p, p.name, None) for p in files], args.collection, cfg, progress)
        report = part if report is None else report.merge(part)
    if bar is not None:
        bar.close()
    if args.json:
        _print_json(report.to_json())
        return 0
    print(f"{len(report.added)} added, {len(report.duplicates)} duplicates, {report.unchanged} already indexed, "
          f"{len(report.skipped)} skipped  ({report.computed} embeddings computed, {report.reused} reused, "
          f"{report.seconds:.1f} s, {report.images_per_second:.1f} img/s on {report.device}, {report.runtime or 'no model run'})")
    for name, original in report.duplicates:
        print(f"  duplicate: {name} (same content as {original})")
    for skip in report.skipped:
        print(f"  skipped: {skip.name}: {skip.reason}")
    return 0


def cmd_search(args) -> int:
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"no such image: {image}")
    studio = _studio(args)
    result = studio.search(image, args.collection, _extractor(args), _search_config(args, args.k))
    if args.json:
        _print_json(result.to_json())
        return 0
    for hit in result.hits:
        print(f"{hit.rank:>3}  {hit.score:9.4f}  {hit.label or '-':<16} {hit.path or hit.name}")
    t = result.timings
    print(f"decode {t['decode_ms']:.1f} ms, embed {t['embed_ms']:.1f} ms, search {t['search_ms']:.1f} ms on {result.device}, {result.runtime}")
    return 0


def cmd_evaluate(args) -> int:
    studio = _studio(args)
    report = studio.evaluate(args.collection, _extractor(args), _search_config(args), queries=args.queries)
    if args.json:
        _print_json(report.to_json())
        return 0
    held = report.config.get("queries")
    if held:
        print(f"held-out: {report.queries} of {held['offered']} query images from {held['source']}, none of them a "
              f"gallery member ({held['computed']} embeddings computed, {held['reused']} reused)")
        for note in held["notes"]:
            print(f"  {note}")
        for skip in held["unreadable"]:
            print(f"  skipped: {skip['name']}: {skip['reason']}")
    else:
        print(f"leave-one-out: every labelled image of {args.collection} asks the others")
    print(f"{report.queries} queries, {studio.resolve(_extractor(args)).label}, metric {args.metric}, rerank {args.rerank}"
          f", post-processing {args.whiten}")
    print(f"mAP {report.map:.4f}  P@1 {report.p_at[1]:.4f}  P@5 {report.p_at[5]:.4f}  P@10 {report.p_at[10]:.4f}  "
          f"R@10 {report.r_at[10]:.4f}  nDCG@10 {report.ndcg_at_10:.4f}  ({report.seconds:.2f} s)")
    for label, ap in report.per_class_ap.items():
        print(f"  AP {label:<20} {ap:.4f}")
    return 0


def cmd_remove(args) -> int:
    studio = _studio(args)
    removed = studio.remove(args.target, args.collection)
    if not removed:
        print(f"nothing matched {args.target}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)}: {', '.join(removed)}")
    return 0


def cmd_collections(args) -> int:
    studio = _studio(args)
    rows = studio.collections()
    if args.json:
        _print_json([c.__dict__ for c in rows])
        return 0
    for c in rows:
        print(f"{c.name:<24} {c.images:>7} images  {c.labelled:>7} labelled  {c.labels:>4} labels")
    return 0


def cmd_adapt(args) -> int:
    from .adapt import AdaptConfig

    studio = _studio(args)
    epochs = args.epochs or (30 if args.method == "head" else 5)
    acfg = AdaptConfig(method=args.method, epochs=epochs, test_fraction=args.test_fraction)

    def on_epoch(epoch: int, planned: int, logs: dict) -> None:
        if not args.json:
            print(f"epoch {epoch}/{planned}: loss {logs.get('loss', 0):.4f}  val_loss {logs.get('val_loss', 0):.4f}  "
                  f"val_accuracy {logs.get('val_accuracy', 0):.4f}", file=sys.stderr, flush=True)

    report = studio.adapt(args.collection, acfg, _extractor(args), on_epoch=on_epoch, name=args.name)
    if args.json:
        _print_json(report.to_json())
        return 0
    print(f"{report.name}: {report.method} on {report.train_images} images ({report.validation_images} for "
          f"validation), {report.test_queries} held-out queries, {report.seconds:.1f} s")
    print(f"mAP {report.map_before:.4f} -> {report.map_after:.4f}   P@1 {report.p_at_1_before:.4f} -> "
          f"{report.p_at_1_after:.4f}")
    print(f"use it: --model {report.name}")
    return 0


def cmd_explain(args) -> int:
    from PIL import Image

    if not Path(args.query).is_file():
        raise FileNotFoundError(f"no such image: {args.query}")
    studio = _studio(args)
    scfg = C.SearchConfig(whiten=args.whiten, rerank="none")
    explanation, left, right = studio.explain(args.query, args.result, args.collection, _extractor(args), scfg)
    h = max(left.shape[0], right.shape[0])
    canvas = Image.new("RGB", (left.shape[1] + right.shape[1] + 8, h), "white")
    canvas.paste(Image.fromarray(left), (0, 0))
    canvas.paste(Image.fromarray(right), (left.shape[1] + 8, 0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    summary = {"score": explanation.score, "pooling": explanation.pooling, "out": str(out),
               "query_map_sum": float(explanation.query_map.sum()), "result_map_sum": float(explanation.result_map.sum())}
    if args.json:
        _print_json(summary)
    else:
        print(f"cosine {explanation.score:.4f} (before re-ranking); heatmaps written to {out}")
    return 0


def cmd_drop(args) -> int:
    studio = _studio(args)
    info = next((c for c in studio.collections() if c.name == args.collection), None)
    if info is None or not studio.drop_collection(args.collection):
        raise FileNotFoundError(f"no collection named {args.collection!r} ('python -m retrieval collections' lists them)")
    print(f"dropped {args.collection} ({info.images} images; files and models no other collection uses went with it)")
    return 0


def cmd_delete_model(args) -> int:
    studio = _studio(args)
    if not studio.delete_adapted(args.name):
        raise FileNotFoundError(f"no adapted model named {args.name!r}")
    print(f"deleted {args.name} and its vectors")
    return 0


COMMANDS = {"models": cmd_models, "runtimes": cmd_runtimes, "adapt": cmd_adapt, "explain": cmd_explain, "delete-model": cmd_delete_model, "index": cmd_index, "search": cmd_search, "evaluate": cmd_evaluate,
            "remove": cmd_remove, "collections": cmd_collections, "drop": cmd_drop}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backbones import BackboneUnavailable
    from .device import DeviceError
    from .service import ServiceError
    from .store import StoreError

    try:
        return COMMANDS[args.command](args)
    except (FileNotFoundError, ServiceError, StoreError, BackboneUnavailable, DeviceError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `... --json | head`: the reader left, not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

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

from . import cli_models, cli_scale
from . import config as C
from .metadata import DEFAULT_TEXT_MODE, DEFAULT_TEXT_TARGET, DEFAULT_TEXT_WEIGHT, TEXT_MODES, TEXT_TARGETS
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
    p.add_argument("--pooling", default=C.DEFAULT_POOLING, choices=POOLINGS,
                   help=f"how the last feature map becomes one vector (default: {C.DEFAULT_POOLING})")
    p.add_argument("--gem-p", type=float, default=C.DEFAULT_GEM_P, help="GeM exponent (default: 3)")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's own)")
    p.add_argument("--weights", default="imagenet", help="'imagenet' or a local Keras weights file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                   help="where CNNs run: auto (a GPU if one works, else the CPU), cpu or gpu (default: auto)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs CNNs: auto (the fastest that matched Keras on the reference photos here; "
                        "see 'runtimes'), keras, or a named OpenVINO precision (default: auto)")


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default=C.DEFAULT_METRIC, choices=C.METRICS,
                   help=f"distance between vectors that ranks the gallery (default: {C.DEFAULT_METRIC})")
    p.add_argument("--rerank", default=None, choices=C.RERANKS,
                   help=f"re-ranking after the first search: {describe_reranks()} (default: {C.DEFAULT_RERANK}; "
                        f"qe for a collection served from Milvus)")
    p.add_argument("--whiten", default=None, choices=C.WHITENINGS,
                   help=f"post-processing learned on the collection, e.g. center (subtract its mean) or pca "
                        f"(PCA-whitening with shrinkage); default: {C.DEFAULT_WHITEN} (none for a collection "
                        f"served from Milvus)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_index(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default="auto", choices=C.INDEXES,
                   help="exact search, the approximate IVF index, milvus (the collection's Milvus, see 'publish'), "
                        "or auto (Milvus if the collection was published, else IVF from 50,000 images on)")


def version() -> str:
    """The installed distribution's version when this very copy is the installed one, else ``__version__``.

    Both come from ``retrieval.__version__`` (pyproject.toml reads it at build
    time); the check keeps a checkout from reporting an older install's number.
    """
    from importlib import metadata

    from . import __version__

    try:
        dist = metadata.distribution("retrieval-studio")
    except metadata.PackageNotFoundError:
        return __version__
    installed = Path(str(dist.locate_file("retrieval/__init__.py"))).resolve()
    return dist.version if installed == Path(__file__).resolve().with_name("__init__.py") else __version__


def build_parser() -> argparse.ArgumentParser:
    prog = "retrieval" if Path(sys.argv[0]).name == "retrieval" else "python -m retrieval"  # the console command, or -m
    parser = argparse.ArgumentParser(prog=prog, description="Content-based image retrieval with CNN features.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list backbones, their dimension, and whether they work offline")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--db", help="also list the models trained with 'adapt' in, or added to, this database")

    p = sub.add_parser("runtimes", help="check every runtime against Keras on the reference photos: speed, "
                       "parity, and which one auto uses")
    p.add_argument("--model", default=C.DEFAULT_BACKBONE, help=f"backbone (default: {C.DEFAULT_BACKBONE})")
    p.add_argument("--pooling", default=C.DEFAULT_POOLING, choices=POOLINGS,
                   help=f"how the last feature map becomes one vector (default: {C.DEFAULT_POOLING})")
    p.add_argument("--gem-p", type=float, default=C.DEFAULT_GEM_P, help="GeM exponent (default: 3)")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's own)")
    p.add_argument("--db", help="a database whose trained models may be checked too")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("index", help="add folders (recursively), image files or zip archives to a collection")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a folder (labels from first-level subfolders), an image, a zip (labels from its folders), "
                        "or a manifest.parquet listing files (a 'path' column; optional name, label, sha256)")
    _add_db(p)
    _add_model(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per model call and per transaction (default: 32)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: cores, 2..8)")
    p.add_argument("--labels", help="CSV of filename,label (default: first-level subfolder names)")
    p.add_argument("--metadata", metavar="CSV", help="captions and tags, a name,caption,tags CSV matched like "
                   "--labels (default: the folder's own metadata.csv, if any; a zip's metadata.csv at its root)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    cli_scale.add_index_options(p)

    p = sub.add_parser("search", help="rank a collection against a query image, words (captions and tags), or both")
    p.add_argument("image", nargs="?", help="the query: an image file (leave out to search by --text alone)")
    _add_db(p)
    _add_model(p)
    _add_search(p)
    _add_index(p)
    p.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    p.add_argument("--text", help="words: alone, ranked by an image-text backbone's text tower (--model clip-vit-b32, "
                   "siglip-b16-224) or by captions and tags (BM25, no model runs), see --text-target; with an image, "
                   "captions and tags filter or blend (--text-mode)")
    p.add_argument("--text-target", default=DEFAULT_TEXT_TARGET, choices=TEXT_TARGETS,
                   help="what words alone rank by: model (the backbone's text tower), metadata (captions and tags) or "
                        f"auto (the text tower when the backbone has one); default: {DEFAULT_TEXT_TARGET}")
    p.add_argument("--text-mode", default=DEFAULT_TEXT_MODE, choices=TEXT_MODES,
                   help="with an image: filter (only images whose text matches, ranked by the image) or fuse "
                        f"(blend both scores, see --text-weight); default: {DEFAULT_TEXT_MODE}")
    p.add_argument("--text-weight", type=float, default=DEFAULT_TEXT_WEIGHT,
                   help=f"fuse: share of the text score, 0 (image only) to 1 (text only); default: {DEFAULT_TEXT_WEIGHT}")

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
    p.add_argument("--metadata", action="store_true",
                   help="add a 'metadata only' row: each labelled image's own caption and tags ask the others' "
                        "(BM25), scored the same way; --json then prints a list of both reports")
    p.add_argument("--export", metavar="FOLDER",
                   help="also write the table as evaluation-STAMP.csv and every report in full as .json into FOLDER "
                        "(the same files as the app's Evaluate tab exports)")

    p = sub.add_parser("metadata", help="captions and tags of a collection's images: import a CSV, show, set")
    msub = p.add_subparsers(dest="action", required=True, help="import, show or set")
    m = msub.add_parser("import", help="read a name,caption,tags CSV (header optional; tags separated by ';', "
                        "or by ',' inside a quoted field); names match as --labels does")
    m.add_argument("csv", metavar="CSV", help="the CSV file (UTF-8)")
    _add_db(m)
    m.add_argument("--json", action="store_true", help="machine-readable report")
    m = msub.add_parser("show", help="list the images that have a caption or tags")
    m.add_argument("key", nargs="?", metavar="NAME|PATH|SHA256", help="only this image (default: every one)")
    _add_db(m)
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m = msub.add_parser("set", help="set one image's caption and/or tags")
    m.add_argument("key", metavar="NAME|PATH|SHA256", help="the image: its name in the collection, path or sha256")
    m.add_argument("--caption", help="the new caption ('' clears it; default: keep)")
    m.add_argument("--tags", help="the new tags, separated by ';' ('' clears them; default: keep)")
    _add_db(m)

    cli_scale.add_publish(sub, _add_db, _add_model)

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

    cli_models.add_parsers(sub, DB_HELP)

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


def _search_config(args, k: int = 10, studio=None) -> C.SearchConfig:
    """The options given; those left out are the defaults, or with ``studio`` the collection's
    own (a collection served from Milvus ranks without what needs the whole gallery)."""
    chosen = {"metric": args.metric, "k": k, "rerank": args.rerank, "whiten": args.whiten,
              "index": getattr(args, "index", "auto")}
    if studio is not None:
        return studio.search_defaults(args.collection, **chosen)
    return C.SearchConfig(**{key: value for key, value in chosen.items() if value is not None})


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
    width = max((len(m["name"]) for m in models), default=20)
    for m in models:
        mark = "ready" if m["ready"] else "not ready"
        print(f"{m['name']:<{width}} {m['family']:<12} dim {m['dim']:<5} input {m['input_size']:<4} {mark}: {m['status']}")
        for key, entry in m.get("runtimes", {}).items():
            print(f"{'':<{width}} runs {key}: {entry['runtime']} — {entry['note']}")
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
    folders = [p for p in paths if p.is_dir() or p.suffix == ".parquet"]  # a manifest lists a folder's files
    files = [p for p in paths if p not in folders]
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
        part = studio.index(folder, args.collection, cfg, args.labels, progress, metadata_csv=args.metadata,
                            engine=args.engine, ray=cli_scale.ray_options(args), shards=args.shards)
        report = part if report is None else report.merge(part)
    if files:  # copied into the data folder by content hash, like the app's uploads
        part = studio.upload([(p, p.name, None) for p in files], args.collection, cfg, progress)
        report = part if report is None else report.merge(part)
    if bar is not None:
        bar.close()
    published = None
    if args.milvus_uri or args.index == "milvus":
        if args.milvus_uri is None and studio.served_by(args.collection) is None:
            raise ValueError("--index milvus needs --milvus-uri URI the first time")
        published = studio.publish(args.collection, cfg, to=args.milvus_uri)
    if args.json:
        _print_json({**report.to_json(), **({"published": published.to_json()} if published else {})})
        return 0
    print(f"{len(report.added)} added, {len(report.duplicates)} duplicates, {report.unchanged} already indexed, "
          f"{len(report.skipped)} skipped  ({report.computed} embeddings computed, {report.reused} reused, "
          f"{report.seconds:.1f} s, {report.images_per_second:.1f} img/s on {report.device}, {report.runtime or 'no model run'})")
    for name, original in report.duplicates:
        print(f"  duplicate: {name} (same content as {original})")
    for skip in report.skipped:
        print(f"  skipped: {skip.name}: {skip.reason}")
    for line in cli_scale.describe_run(report):
        print(line)
    _print_metadata(report.metadata)
    if published is not None:
        cli_scale.print_published(published, False)
    return 0


def _print_metadata(imports) -> None:
    for m in imports:
        print(f"captions and tags: {m.applied} images from {m.source} ({m.rows} rows, {len(m.unknown)} naming no "
              f"image, {len(m.bad)} refused)" if not m.error else f"captions and tags: none read from {m.source}")
        for note in m.notes():
            print(f"  {note}")


def cmd_search(args) -> int:
    if args.image is None and args.text is None:
        raise ValueError("give a query image, --text WORDS, or both")
    image = Path(args.image) if args.image is not None else None
    if image is not None and not image.is_file():
        raise FileNotFoundError(f"no such image: {image}")
    studio = _studio(args)
    if image is None:
        result = studio.search_words(args.text, args.collection, _extractor(args), _search_config(args, args.k, studio),
                                     args.text_target)
    elif args.text is not None:
        result = studio.search_combined(image, args.text, args.collection, _extractor(args),
                                        _search_config(args, args.k), args.text_mode, args.text_weight)
    else:
        result = studio.search(image, args.collection, _extractor(args), _search_config(args, args.k, studio))
    if args.json:
        _print_json(result.to_json())
        return 0
    for hit in result.hits:
        print(f"{hit.rank:>3}  {hit.score:9.4f}  {hit.label or '-':<16} {_shown(hit.path) or hit.name}")
    if result.text is not None and result.text["mode"] == "model":
        print(f"text: {result.text['query']!r} embedded by the text tower of {result.text['model']}")
    elif result.text is not None:
        print(f"text: {', '.join(result.text['terms'])} ({result.text['mode']}); {result.text['matched']} images match")
        if image is None:
            return 0
    t = result.timings
    decode = f"decode {t['decode_ms']:.1f} ms, " if "decode_ms" in t else ""
    print(f"{decode}embed {t['embed_ms']:.1f} ms, search {t['search_ms']:.1f} ms on {result.device}, {result.runtime}")
    if "served_by" in result.search:
        print(f"served by {result.search['served_by']}: {int(t.get('candidates', 0))} candidates in "
              f"{t.get('milvus_ms', 0):.1f} ms, re-scored ({result.search['metric']}, {result.search['rerank']}) "
              f"in {t.get('rescore_ms', 0):.1f} ms")
    return 0


def _shown(path: str | None) -> str | None:
    """A stored path as the user would type it: relative to the current folder when inside it (like git)."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def cmd_evaluate(args) -> int:
    studio = _studio(args)
    report = studio.evaluate(args.collection, _extractor(args), _search_config(args), queries=args.queries)
    text = studio.evaluate_metadata(args.collection, queries=args.queries) if args.metadata else None
    if args.export:
        from .service.exports import evaluation_row, write_evaluation
        from .service.textsearch import LABEL

        reports = [report] + ([text] if text is not None else [])
        tags = [studio.resolve(_extractor(args)).label] + ([LABEL] if text is not None else [])
        files = write_evaluation(Path(args.export), [evaluation_row(r, t) for r, t in zip(reports, tags)], reports,
                                 args.collection)
        print(f"exported {files[0]} and {files[1]}", file=sys.stderr)
    if args.json:
        _print_json(report.to_json() if text is None else [report.to_json(), text.to_json()])
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
    _print_figures(report)
    if text is not None:
        print(f"{text.queries} queries, {text.config['label']}: each described labelled image's caption and tags ask")
        if text.config.get("metadata", {}).get("no_text"):
            print(f"  {len(text.config['metadata']['no_text'])} labelled images have no caption or tags and did not ask")
        for note in (text.config.get("queries") or {}).get("notes", []):
            print(f"  {note}")
        _print_figures(text)
    return 0


def _print_figures(report) -> None:
    print(f"mAP {report.map:.4f}  P@1 {report.p_at[1]:.4f}  P@5 {report.p_at[5]:.4f}  P@10 {report.p_at[10]:.4f}  "
          f"R@10 {report.r_at[10]:.4f}  nDCG@10 {report.ndcg_at_10:.4f}  ({report.seconds:.2f} s)")
    for label, ap in report.per_class_ap.items():
        print(f"  AP {label:<20} {ap:.4f}")


def cmd_metadata(args) -> int:
    studio = _studio(args)
    if args.action == "import":
        report = studio.import_metadata(args.csv, args.collection)
        if args.json:
            _print_json(report.to_json())
        else:
            _print_metadata([report])
        return 0
    if args.action == "set":
        if args.caption is None and args.tags is None:
            raise ValueError("give --caption, --tags or both")
        studio.set_metadata(args.collection, args.key, args.caption, args.tags)
        args.json = False
    described = studio.metadata(args.collection, args.key) if args.key else studio.metadata(args.collection)
    rows = [described] if args.key else list(described.values())
    rows = [r for r in rows if r is not None]
    if args.json:
        _print_json([{"name": r.name, "sha256": r.sha256, "caption": r.caption, "tags": list(r.tags)} for r in rows])
        return 0
    for r in rows:
        print(f"{r.name}\t{r.caption}\t{'; '.join(r.tags)}")
    if not rows:
        print("no caption or tags" + (f" for {args.key}" if args.key else f" in {args.collection}"))
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
    served = {c.name: studio.served_by(c.name) for c in rows}
    if args.json:
        _print_json([{**c.__dict__, "served_by": served[c.name]} for c in rows])
        return 0
    from .milvus import describe

    for c in rows:
        where = f"  served by {describe(served[c.name]['uri'])}" if served[c.name] else ""
        print(f"{c.name:<24} {c.images:>7} images  {c.labelled:>7} labelled  {c.labels:>4} labels{where}")
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


def cmd_publish(args) -> int:
    studio = _studio(args)
    if args.to is None and studio.served_by(args.collection) is None:
        raise ValueError(f"the collection {args.collection!r} was never published: give --to URI")
    cli_scale.print_published(studio.publish(args.collection, _extractor(args), to=args.to, shards=args.shards),
                              args.json)
    return 0


def cmd_unpublish(args) -> int:
    done = _studio(args).unpublish(args.collection, args.drop)
    print(f"{args.collection}: searched in process from now on" + (" (its Milvus collections dropped)" if args.drop
                                                                   else "") if done else
          f"{args.collection}: was not published; nothing to do")
    return 0


COMMANDS = {"publish": cmd_publish, "unpublish": cmd_unpublish, "models": cmd_models, "runtimes": cmd_runtimes, "adapt": cmd_adapt, "explain": cmd_explain, "delete-model": cmd_delete_model, "index": cmd_index, "search": cmd_search, "evaluate": cmd_evaluate,
            "remove": cmd_remove, "collections": cmd_collections, "drop": cmd_drop, "metadata": cmd_metadata,
            **cli_models.COMMANDS}


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

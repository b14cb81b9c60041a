"""``Studio``: the documented facade the CLI, the app and Python users share.

Why a facade over parts: each responsibility (models, indexing, searching,
galleries and sessions, training, insight) is a small class of its own in
this package; ``Studio`` wires them to one store and passes each call on,
turning collection names into held identities on the way. Every call that
names a collection counts as use of it (idle cleanup spares it).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..adapt import AdaptConfig, BatchCallback, EpochCallback
from ..backbones import Backbone
from ..config import ExtractorConfig, SearchConfig
from ..distributed import AUTO_THRESHOLD, RayOptions, cluster_address
from ..evaluation import EvalReport
from ..extract import default_workers
from ..files import SourceFile
from ..metadata import DEFAULT_TEXT_MODE, DEFAULT_TEXT_WEIGHT
from ..milvus import INSTALL
from ..pooling import l2_normalize
from ..settings import Limits, default_db
from ..store import CollectionInfo, Gallery, Member, Metadata, Store
from .blobs import Blobs
from .bulk import ENGINES, BulkIndexer, ray_available
from .caches import Caches
from .captions import Captions, read_csv_file
from .evaluating import Evaluator
from .galleries import Galleries
from .indexing import Indexer, Progress
from .insight import Insight
from .jobs import Job
from .models import Models
from .publishing import Published
from .reports import AdaptReport, Comparison, IndexReport, MetadataImport, SearchResult, ServiceError, Session
from .searching import Searcher
from .textsearch import TextSearch
from .training import Trainer


class Studio:
    """One store, its models, its galleries and the caches built on them.

    >>> studio = Studio("gallery.sqlite")
    >>> studio.index("photos/", collection="holiday")
    >>> studio.search("query.jpg", collection="holiday").hits[0].name
    """

    def __init__(self, db: str | Path | None = None, device: str = "auto", batch_size: int = 32,
                 workers: int | None = None, limits: Limits = Limits(), runtime: str = "auto"):
        self.store = Store(db or default_db())
        self.device, self.batch_size, self.limits, self.runtime = device, batch_size, limits, runtime
        self.workers = workers or default_workers()
        self.caches = Caches()
        self._models = Models(self.store, self.caches, device, batch_size, runtime)
        self._indexer = Indexer(self.store, self._models, limits, batch_size, self.workers)
        self._searcher = Searcher(self.store, self._models, self._indexer, self.caches, limits)
        if self.store.migrated:
            self._searcher.forget_all_indexes()
        self._blobs = Blobs(self.blob_root, self.store.referenced)
        self._captions = Captions(self.store)
        self._galleries = Galleries(self.store, self._blobs, self._indexer, self._models, limits,
                                    forget=self._searcher.forget, captions=self._captions)
        self._bulk = BulkIndexer(self.store, self._models, self._indexer, self.workers)
        self._evaluator = Evaluator(self._searcher, self._galleries, self._blobs, batch_size, self.workers)
        self._text = TextSearch(self._searcher, self._evaluator)
        self._trainer = Trainer(self._models, self._searcher, self._indexer)
        self._insight = Insight(self._models, self._searcher, self.caches)

    def close(self) -> None:
        self._searcher.publisher.close()
        self.store.close()

    @property
    def blob_root(self) -> Path:
        """Uploaded images live here, named by content hash, beside the database."""
        return self.store.path.parent / "images"

    # -- models -------------------------------------------------------------
    def models(self) -> list[dict]:
        """Every backbone this Studio can use: built-in ones, and those trained in or added to its database."""
        return self._models.listing()

    def runtime_trials(self, cfg: ExtractorConfig = ExtractorConfig(), device: str | None = None) -> list[dict]:
        """Each runtime against Keras for ``cfg`` on the reference photos: speed, parity, and auto's pick."""
        return self._models.runtime_trials(cfg, device)

    def resolve(self, cfg: ExtractorConfig) -> ExtractorConfig:
        """``cfg`` with what its backbone implies filled in (input size, pooling for fixed models)."""
        return self._models.resolve(cfg)

    def placement(self, device: str | None = None):
        return self._models.placement(device)

    def backbone(self, cfg: ExtractorConfig, device: str | None = None, runtime: str | None = None) -> Backbone:
        """The loaded network for ``cfg``, run through ``runtime`` (default: the Studio's, ``auto``).

        ``backbone(cfg).runtime`` names what runs it; ``.runtime_note`` says why.
        """
        return self._models.backbone(cfg, device, runtime)

    def embed_pixels(self, cfg: ExtractorConfig, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(self.backbone(cfg).embed(pixels))

    # -- indexing -------------------------------------------------------------
    def index(self, folder: str | Path, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
              labels_csv: str | Path | None = None, progress: Progress | None = None,
              metadata_csv: str | Path | None = None, engine: str = "in-process", ray: RayOptions | None = None,
              shards: str | None = None) -> IndexReport:
        """Index a folder recursively (or a manifest ``.parquet`` of paths); labels from first-level
        subfolders or a CSV.

        Captions and tags come from ``metadata_csv``, else from the folder's
        own ``metadata.csv`` when it has one (``report.metadata`` says what
        was applied); that file is never taken for an image.

        ``engine``: ``in-process``, ``ray`` (``ray`` options say where; the
        vectors are also kept as Parquet shards under ``shards``, by default
        beside the database), or ``auto`` (Ray only for a cluster, given in
        ``ray.address`` or $RAY_ADDRESS, and from ``distributed.AUTO_THRESHOLD``
        files on; a lone machine always indexes in process).
        """
        source = Path(folder)
        manifest = source.suffix == ".parquet" and source.is_file()
        if not source.is_dir() and not manifest:  # before the collection is created: a typo makes no empty gallery
            raise ServiceError(f"not a folder or a manifest (.parquet): {source}")
        if metadata_csv is not None and not Path(metadata_csv).is_file():
            raise ServiceError(f"no metadata CSV at {metadata_csv}")
        if engine not in ENGINES:
            raise ServiceError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
        if engine == "ray" and not ray_available():
            raise ServiceError(f"the ray engine needs Ray: {INSTALL}")
        ref = self._galleries.ref(collection, create=True)
        if engine == "ray":
            report = self._bulk.index(source, ref, cfg, ray or RayOptions(), shards, labels_csv, progress)
        else:
            files, skipped, _ = self._bulk.sources(source, labels_csv)
            cluster = cluster_address(ray)
            if engine == "auto" and len(files) >= AUTO_THRESHOLD and cluster and ray_available():
                options = dataclasses.replace(ray or RayOptions(), address=cluster)
                report = self._bulk.index(source, ref, cfg, options, shards, labels_csv, progress)
            else:
                report = self._indexer.add(files, ref, cfg, progress)
                report.skipped = skipped + report.skipped
        if source.is_dir():
            report.metadata = self._captions.folder(ref, source, metadata_csv)
        elif metadata_csv is not None:
            report.metadata = [self._captions.import_csv(ref, read_csv_file(metadata_csv), str(metadata_csv))]
        return report

    def add_files(self, sources: Sequence[SourceFile], collection: str = "default",
                  cfg: ExtractorConfig = ExtractorConfig(), progress: Progress | None = None) -> IndexReport:
        return self._indexer.add(sources, self._galleries.ref(collection, create=True), cfg, progress)

    def upload(self, uploads: Sequence[tuple[Path, str, str | None]], collection: str,
               cfg: ExtractorConfig = ExtractorConfig(), progress: Progress | None = None,
               create: bool = True) -> IndexReport:
        """Uploaded images and zips ((temporary path, name, label) each): stored by hash, then indexed.

        ``create=False``: the collection must exist (the app's sessions use it).
        """
        return self._galleries.upload(uploads, collection, cfg, progress, create)

    def ensure_embeddings(self, collection: str, cfg: ExtractorConfig, progress: Progress | None = None) -> int:
        return self._indexer.ensure(self._galleries.ref(collection), cfg, progress)

    # -- search ---------------------------------------------------------------
    def gallery(self, collection: str, cfg: ExtractorConfig, progress: Progress | None = None) -> tuple[int, int, Gallery]:
        """(collection id, config id, the complete gallery for ``cfg``)."""
        ref = self._galleries.ref(collection)
        config_id, gallery = self._searcher.gallery(ref, cfg, progress)
        return ref.id, config_id, gallery

    def ranker(self, collection: str, cfg: ExtractorConfig, scfg: SearchConfig):
        return self._searcher.ranker(self._galleries.ref(collection), cfg, scfg)

    def ann_path(self, cid: int, config_id: int) -> Path:
        return self._searcher.ann_path(cid, config_id)

    def embed_query(self, image, cfg: ExtractorConfig, device: str | None = None, runtime: str | None = None):
        return self._searcher.embed_query(image, cfg, device, runtime)

    def search(self, image, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
               scfg: SearchConfig = SearchConfig(), device: str | None = None,
               progress: Progress | None = None, runtime: str | None = None) -> SearchResult:
        """Rank the collection against an image (path, bytes, PIL image or RGB array), or against
        words (``TextQuery``) with an image-text backbone such as CLIP or SigLIP."""
        return self._searcher.search(image, self._galleries.ref(collection), cfg, scfg, device, progress, runtime)

    # -- Milvus-served galleries (the ``scale`` extra) ----------------------------
    def publish(self, collection: str, cfg: ExtractorConfig = ExtractorConfig(), to: str | None = None,
                shards: str | Path | None = None, progress: Progress | None = None) -> Published:
        """Load the gallery's vectors into Milvus and serve its searches from there from now on.

        ``to``: a Milvus Lite file (``*.db``), a Lite server or a cluster URI
        (``http://host:19530``); stored with the gallery, so later searches
        (``index="auto"``) go to Milvus and later adds and removes reach it.
        Without ``to``, the gallery's stored URI. ``shards``: Parquet shards
        from ``index --engine ray`` to read the vectors from instead of SQLite.
        """
        ref = self._galleries.ref(collection)
        if to is not None:
            self._searcher.publisher.attach(ref, to)
        return self._searcher.publisher.index(ref, cfg, progress, shards)[1]

    def unpublish(self, collection: str, drop: bool = False) -> bool:
        """Search the gallery in process again; ``drop`` also deletes its Milvus collections."""
        return self._searcher.publisher.detach(self._galleries.ref(collection), drop)

    def served_by(self, collection: str) -> dict | None:
        """{kind, uri, name} of the outside index that serves the gallery, or None (in process)."""
        return self._searcher.publisher.setting(self._galleries.ref(collection))

    def search_defaults(self, collection: str, **chosen) -> SearchConfig:
        """The default search for this gallery, with ``chosen`` fields: a Milvus-served
        gallery ranks without what needs the whole gallery (``SearchConfig.for_milvus``)."""
        chosen = {k: v for k, v in chosen.items() if v is not None}
        if self._searcher.served_by_milvus(self._galleries.ref(collection), SearchConfig(index=chosen.get("index", "auto"))):
            return SearchConfig.for_milvus(**chosen)
        return SearchConfig(**chosen)

    def search_text(self, text: str, collection: str = "default", k: int = 10) -> SearchResult:
        """Rank the collection's captions and tags against words (BM25); no model runs.

        The words are OR-ed plain terms (FTS5 syntax in them is just text);
        members without a caption or tags never appear. ``result.text`` says
        which words were searched and how many members matched.
        """
        return self._text.search_text(self._galleries.ref(collection), text, k)

    def search_words(self, text: str, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
                     scfg: SearchConfig = SearchConfig(), target: str = "auto", device: str | None = None,
                     runtime: str | None = None) -> SearchResult:
        """Words alone: ranked by the backbone's text tower (CLIP, SigLIP), or by captions and tags.

        ``target``: "model", "metadata" or "auto" (the text tower when the
        backbone has one). ``result.text["mode"]`` says which ran: "model" or
        "text" (captions and tags).
        """
        return self._text.words(self._galleries.ref(collection), text, cfg, scfg, target, device, runtime)

    def search_combined(self, image, text: str, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
                        scfg: SearchConfig = SearchConfig(), text_mode: str = DEFAULT_TEXT_MODE,
                        text_weight: float = DEFAULT_TEXT_WEIGHT, device: str | None = None,
                        progress: Progress | None = None, runtime: str | None = None) -> SearchResult:
        """An image query narrowed or blended by words (``metadata.TEXT_MODES``).

        ``filter``: only members whose caption or tags match a word, ranked
        by the image (scores as ``search`` gives them). ``fuse``: every
        member by ``(1 - text_weight) * image + text_weight * text``, the
        image keys min-max scaled over the gallery and BM25 divided by the
        best match (no match: 0), so both lie in [0, 1].
        """
        return self._text.combined(image, self._galleries.ref(collection), cfg, scfg, text, text_mode, text_weight,
                                   device, progress, runtime)

    def compare(self, image, collection: str, a: tuple[ExtractorConfig, SearchConfig],
                b: tuple[ExtractorConfig, SearchConfig], devices: tuple[str | None, str | None] = (None, None),
                progress: Progress | None = None,
                runtimes: tuple[str | None, str | None] = (None, None), b_query=None) -> Comparison:
        """Two configurations, one query: both result lists and how they agree.

        ``b_query``: another query for B, e.g. ``TextQuery("…")`` with an
        image-text backbone, to set words against A's image query.
        """
        return self._searcher.compare(image, self._galleries.ref(collection), a, b, devices, progress, runtimes,
                                      b_query)

    def evaluate(self, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
                 scfg: SearchConfig = SearchConfig(), queries: str | Path | None = None,
                 progress: Progress | None = None) -> EvalReport:
        """Figures for the collection's labelled images; ``report.config["protocol"]`` says how.

        Without ``queries``: leave-one-out, every labelled member asks the
        others. With ``queries`` (a folder or zip of one subfolder per label,
        or another collection's name): held-out, those images ask the whole
        gallery, and any that is also a member is left out and counted
        (``report.config["queries"]``). Held-out is the honest protocol for a
        re-ranking that learns from the gallery.
        """
        return self._evaluator.evaluate(self._galleries.ref(collection), cfg, scfg, queries, progress)

    def evaluate_metadata(self, collection: str = "default", queries: str | Path | None = None) -> EvalReport:
        """The "metadata only" row: text retrieval scored like ``evaluate`` scores a backbone.

        Each labelled member with a caption or tags asks with them (BM25 over
        the others' metadata, leave-one-out); members without text stay in
        the gallery as answers text cannot find, and are listed in
        ``report.config["metadata"]["no_text"]``. With ``queries``, held-out
        queries that carry captions ask instead; without any, ``ServiceError``.
        """
        return self._text.evaluate(self._galleries.ref(collection), queries)

    # -- insight ----------------------------------------------------------------
    def explain(self, query, result, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
                scfg: SearchConfig = SearchConfig(), display: int = 384):
        """Heatmaps of what makes two images alike; ``result`` may be a member's name, path or sha256."""
        return self._insight.explain(query, result, self._galleries.ref(collection), cfg, scfg, display)

    def embedding_map(self, collection: str, cfg: ExtractorConfig, scfg: SearchConfig, query=None):
        """The collection in 2-D (PCA), plus the query and its top k."""
        return self._insight.embedding_map(self._galleries.ref(collection), cfg, scfg, query)

    # -- trained models -----------------------------------------------------------
    def adapt(self, collection: str, acfg: AdaptConfig = AdaptConfig(), base: ExtractorConfig = ExtractorConfig(),
              scfg: SearchConfig = SearchConfig(rerank="none"), on_epoch: EpochCallback | None = None,
              cancel: threading.Event | None = None, name: str | None = None,
              on_batch: BatchCallback | None = None) -> AdaptReport:
        """Train a model for a labelled collection and register it as a new backbone."""
        return self._trainer.adapt(self._galleries.ref(collection), acfg, base, scfg, on_epoch, cancel, name, on_batch)

    def adapt_job(self, collection: str, acfg: AdaptConfig = AdaptConfig(),
                  base: ExtractorConfig = ExtractorConfig()) -> Job:
        """``adapt`` as a ``Job`` (not started): one record per epoch in ``job.history``, the batch in
        ``job.snapshot()``, ``job.cancel()`` between batches. What the app's Adapt tab runs."""
        def work(job: Job) -> AdaptReport:
            def on_batch(epoch: int, batch: int, steps: int) -> None:
                job.note(batch, steps, f"epoch {epoch} of at most {acfg.epochs}, batch {batch}/{steps}")

            return self.adapt(collection, acfg, base, on_epoch=lambda e, _n, logs: job.history.append(
                {"epoch": e, **logs}), cancel=job.cancel_event, on_batch=on_batch)

        return Job(work, name="training")

    def adapted_models(self) -> list[dict]:
        return self._models.trained()

    def delete_adapted(self, name: str) -> bool:
        return self._models.delete_trained(name)

    # -- models from the user's own files -------------------------------------------------
    def add_model(self, name: str, file: str | Path, layer: str | None = None, input_size: int | None = None,
                  preprocess: str = "none", custom_objects: Sequence[str] = (), replace: bool = False) -> dict:
        """Register a ``.keras`` file, a SavedModel folder or an ``.onnx`` file as the backbone ``name``.

        The file is copied into the data folder by content hash; ``layer``
        cuts the model there (or picks one of several outputs);
        ``preprocess`` is a name of ``user_options.PREPROCESS`` or
        ``scale=S,mean=a/b/c,std=d/e/f``; ``custom_objects`` are
        ``module:Attr`` names imported to load it (none by default: safe
        mode). Returns the registered model (dim, input size, output kind).
        """
        from ..backbones.user_options import UserModelOptions

        options = UserModelOptions(layer, input_size, preprocess, tuple(custom_objects))
        return self._models.add_user(name, Path(file), options, replace)

    def remove_model(self, name: str) -> bool:
        """A model added from a file, every vector made with it, and its copy (unless another name shares it)."""
        return self._models.delete_user(name)

    def user_models(self) -> list[dict]:
        return self._models.user_models()

    # -- galleries and sessions -------------------------------------------------------
    def members(self, collection: str, limit: int | None = None) -> list[Member]:
        """The collection's members in the order they were added; ``limit``: the first that many only."""
        return self.store.members(self._galleries.ref(collection).id, limit)

    def count(self, collection: str) -> int:
        return self.store.count_members(self._galleries.ref(collection).id)

    def resolve_member(self, collection: str, key: str) -> Member | None:
        """A member of the collection by name, stored path or sha256."""
        return self.store.member_by_key(self._galleries.ref(collection).id, key)

    # -- captions and tags ---------------------------------------------------------------
    def import_metadata(self, csv_path: str | Path, collection: str = "default") -> MetadataImport:
        """Captions and tags from a ``name,caption,tags`` CSV (see ``retrieval.metadata``).

        Rows name members as ``--labels`` does; a bad row or one naming no
        member is counted in the report; an unreadable file raises
        ``ServiceError`` and changes nothing.
        """
        ref = self._galleries.ref(collection)
        return self._captions.import_csv(ref, read_csv_file(csv_path), str(csv_path))

    def set_metadata(self, collection: str, key: str, caption: str | None = None,
                     tags: str | Sequence[str] | None = None) -> Metadata | None:
        """One member's caption and/or tags (``key``: name, path or sha256); None keeps, "" clears.

        Tags are a list, or one string separated by ``;`` (or by ``,`` when
        it holds no ``;``). Returns what the member now has (None: nothing).
        """
        ref = self._galleries.ref(collection)
        member = self.resolve_member(collection, key)
        if member is None:
            raise ServiceError(f"no image {key!r} in the gallery {collection!r}")
        self._captions.set(ref, member.image_id, self._captions.read(ref).get(member.sha256), caption, tags)
        return self._captions.read(ref).get(member.sha256)

    def metadata(self, collection: str, key: str | None = None) -> dict[str, Metadata] | Metadata | None:
        """Captions and tags: every described member (sha256 -> ``Metadata``), or one member's (or None)."""
        ref = self._galleries.ref(collection)
        described = self._captions.read(ref)
        if key is None:
            return described
        member = self.resolve_member(collection, key)
        if member is None:
            raise ServiceError(f"no image {key!r} in the gallery {collection!r}")
        return described.get(member.sha256)

    def collections(self) -> list[CollectionInfo]:
        return self.store.collections()

    def fork(self, source: str, target: str) -> str:
        """Copy-on-write: ``target`` starts with ``source``'s images, no vectors copied."""
        return self._galleries.fork(source, target)

    def remove(self, path_or_hash: str, collection: str | None = None) -> list[str]:
        """Remove members by path, name or sha256 (from one collection, or from all)."""
        return self._galleries.remove(path_or_hash, collection)

    def drop_collection(self, name: str) -> bool:
        """A collection, the models trained on it, and the files and vectors no other collection holds."""
        return self._galleries.drop(name)

    def cleanup(self, prefix: str, max_idle_s: float) -> list[str]:
        """Drop collections named ``prefix...`` unused for longer than ``max_idle_s``."""
        return self._galleries.cleanup(prefix, max_idle_s)

    def session(self, owner: str, current: str | None, template: str, prefix: str = "session-",
                writable: bool = False) -> Session:
        """The gallery a browser tab (``owner``) works on; see ``Galleries.session``."""
        return self._galleries.session(owner, current, template, prefix, writable)

"""``Studio``: the documented facade the CLI, the app and Python users share.

Why a facade over parts: each responsibility (models, indexing, searching,
galleries and sessions, training, insight) is a small class of its own in
this package; ``Studio`` wires them to one store and passes each call on,
turning collection names into held identities on the way. Every call that
names a collection counts as use of it (idle cleanup spares it).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..adapt import AdaptConfig, BatchCallback, EpochCallback
from ..backbones import Backbone
from ..config import ExtractorConfig, SearchConfig
from ..evaluation import EvalReport
from ..extract import default_workers
from ..files import SourceFile
from ..pooling import l2_normalize
from ..settings import Limits, default_db
from ..store import CollectionInfo, Gallery, Member, Store
from .blobs import Blobs
from .caches import Caches
from .evaluating import Evaluator
from .galleries import Galleries
from .indexing import Indexer, Progress
from .insight import Insight
from .models import Models
from .reports import AdaptReport, Comparison, IndexReport, SearchResult, ServiceError, Session
from .searching import Searcher
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
        self._galleries = Galleries(self.store, self._blobs, self._indexer, self._models, limits,
                                    forget=self._searcher.forget)
        self._evaluator = Evaluator(self._searcher, self._galleries, self._blobs, batch_size, self.workers)
        self._trainer = Trainer(self._models, self._searcher, self._indexer)
        self._insight = Insight(self._models, self._searcher, self.caches)

    def close(self) -> None:
        self.store.close()

    @property
    def blob_root(self) -> Path:
        """Uploaded images live here, named by content hash, beside the database."""
        return self.store.path.parent / "images"

    # -- models -------------------------------------------------------------
    def models(self) -> list[dict]:
        """Every backbone this Studio can use: built-in ones and those trained in its database."""
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
              labels_csv: str | Path | None = None, progress: Progress | None = None) -> IndexReport:
        """Index a folder recursively; labels from first-level subfolders or a CSV."""
        folder = Path(folder)
        if not folder.is_dir():  # before the collection is created: a typo makes no empty gallery
            raise ServiceError(f"not a folder: {folder}")
        ref = self._galleries.ref(collection, create=True)
        return self._indexer.folder(folder, ref, cfg, labels_csv, progress)

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
        """Rank the collection against an image (path, bytes, PIL image or RGB array)."""
        return self._searcher.search(image, self._galleries.ref(collection), cfg, scfg, device, progress, runtime)

    def compare(self, image, collection: str, a: tuple[ExtractorConfig, SearchConfig],
                b: tuple[ExtractorConfig, SearchConfig], devices: tuple[str | None, str | None] = (None, None),
                progress: Progress | None = None,
                runtimes: tuple[str | None, str | None] = (None, None)) -> Comparison:
        """Two configurations, one query: both result lists and how they agree."""
        return self._searcher.compare(image, self._galleries.ref(collection), a, b, devices, progress, runtimes)

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

    def adapted_models(self) -> list[dict]:
        return self._models.trained()

    def delete_adapted(self, name: str) -> bool:
        return self._models.delete_trained(name)

    # -- galleries and sessions -------------------------------------------------------
    def members(self, collection: str) -> list[Member]:
        return self.store.members(self._galleries.ref(collection).id)

    def resolve_member(self, collection: str, key: str) -> Member | None:
        """A member of the collection by name, stored path or sha256."""
        return next((m for m in self.members(collection) if key in (m.name, m.path, m.sha256)), None)

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

"""The service layer: index, search, evaluate, compare, list models, remove.

Why one layer: the CLI and the Gradio app are thin shells over these calls,
so they can never disagree about what "index this folder" or "search with
these settings" means. A ``Studio`` owns one store and keeps loaded models
and prepared galleries in memory, so a second search costs milliseconds.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .adapt import AdaptConfig, BatchCallback, EpochCallback
from .backbones import REGISTRY, Backbone, get_spec
from .backbones.adapted import HeadBackbone, spec_for
from .config import ExtractorConfig, SearchConfig
from .decode import DecodeError, decode
from .evaluation import Agreement, EvalReport, agreement, exact_duplicate_groups, leave_one_out
from .extract import Prepared, default_workers, embed_batches, ordered_map, prepare
from .files import SourceFile, Skipped, read_labels_csv, scan_folder
from .pooling import l2_normalize
from .ranking import Ranker, build_ranker, database_augmentation
from .settings import Limits, default_db
from .store import Gallery, NewMember, Store
from .whitening import Whitening, fit_whitening
from .whitening import fit as fit_postprocess

Progress = Callable[[int, int, str], None]


class ServiceError(RuntimeError):
    """A request that cannot be served; the message is for the user."""


@dataclass
class IndexReport:
    collection: str
    config: str
    added: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (name, same content as)
    unchanged: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    computed: int = 0  # embeddings the model produced
    reused: int = 0  # embeddings found in the cache
    seconds: float = 0.0
    device: str = ""
    limit: str | None = None  # the whole-upload cap that was hit, if any

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0

    def merge(self, other: "IndexReport") -> "IndexReport":
        """One report for a command that took a folder and some files or zips."""
        self.added += other.added
        self.duplicates += other.duplicates
        self.skipped += other.skipped
        self.unchanged += other.unchanged
        self.computed += other.computed
        self.reused += other.reused
        self.seconds += other.seconds
        self.device = self.device or other.device
        self.limit = self.limit or other.limit
        return self

    def to_json(self) -> dict:
        out = asdict(self)
        out["duplicates"] = [{"name": n, "duplicate_of": d} for n, d in self.duplicates]
        out["skipped"] = [{"name": s.name, "reason": s.reason} for s in self.skipped]
        out["images_per_second"] = self.images_per_second
        return out


@dataclass
class AdaptReport:
    name: str  # the new backbone's name
    method: str
    collection: str
    map_before: float
    map_after: float
    p_at_1_before: float
    p_at_1_after: float
    train_images: int
    validation_images: int
    test_queries: int
    seconds: float
    training: dict
    settings: dict
    base: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Hit:
    rank: int
    name: str
    path: str | None
    label: str | None
    score: float
    sha256: str


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float]  # milliseconds per stage
    device: str
    config: str
    search: dict

    def to_json(self) -> dict:
        return {"results": [asdict(h) for h in self.hits], "timings": self.timings, "device": self.device,
                "config": self.config, "search": self.search}


@dataclass
class Comparison:
    a: SearchResult
    b: SearchResult
    agreement: Agreement

    def to_json(self) -> dict:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "agreement": self.agreement.to_json()}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


class Studio:
    """One store, its loaded models and prepared galleries."""

    def __init__(self, db: str | Path | None = None, device: str = "auto", batch_size: int = 32,
                 workers: int | None = None, limits: Limits = Limits()):
        self.store = Store(db or default_db())
        self.device = device
        self.batch_size = batch_size
        self.workers = workers or default_workers()
        self.limits = limits
        self._backbones: dict[tuple, Backbone] = {}
        self._rankers: OrderedDict[tuple, Ranker] = OrderedDict()
        self._anns: dict[tuple[int, int], object] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.RLock()
        self._placements: dict[str, object] = {}
        self._maps: dict = {}
        for row in self.store.adapted():
            self._register(row)

    def close(self) -> None:
        self.store.close()

    # -- models -------------------------------------------------------------
    @staticmethod
    def models() -> list[dict]:
        out = []
        for spec in REGISTRY.values():
            ready, why = spec.ready()
            out.append({"name": spec.name, "family": spec.family, "dim": spec.dim, "input_size": spec.input_size,
                        "ready": ready, "status": why, "licence": spec.licence, "source": spec.source})
        return out

    def placement(self, device: str | None = None):
        """``auto``/``cpu``/``gpu`` -> a placement, or ``DeviceError`` saying why not."""
        device = device or self.device
        if device not in self._placements:
            from .device import resolve

            self._placements[device] = resolve(device)
        return self._placements[device]

    def backbone(self, cfg: ExtractorConfig, device: str | None = None) -> Backbone:
        """Load a backbone once per process and device; poolings share one network."""
        cfg = cfg.resolved()
        spec = get_spec(cfg.backbone)
        placement = self.placement(device) if spec.family in ("cnn", "adapted") else None
        key = (cfg.backbone, cfg.weights, cfg.input_size, getattr(placement, "kind", "cpu"))
        with self._lock:
            base = self._backbones.get(key)
            if base is None:
                weights = None if cfg.weights in ("imagenet", "none") else cfg.weights
                base = spec.build(cfg.pooling, cfg.gem_p, placement, input_size=cfg.input_size, weights=weights,
                                  batch_size=self.batch_size)
                self._backbones[key] = base
        return base.with_pooling(cfg.pooling, cfg.gem_p)

    def embed_pixels(self, cfg: ExtractorConfig, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(self.backbone(cfg).embed(pixels))

    # -- indexing -------------------------------------------------------------
    def index(self, folder: str | Path, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
              labels_csv: str | Path | None = None, progress: Progress | None = None) -> IndexReport:
        """Index a folder recursively; labels from first-level subfolders or a CSV."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ServiceError(f"not a folder: {folder}")
        sources, skipped = scan_folder(folder, self.limits)
        if labels_csv is not None:
            labels = read_labels_csv(labels_csv)
            sources = [SourceFile(s.path, s.name, labels.get(s.name, labels.get(Path(s.name).name, s.label)))
                       for s in sources]
        report = self.add_files(sources, collection, cfg, progress)
        report.skipped = skipped + report.skipped
        return report

    def add_files(self, sources: Sequence[SourceFile], collection: str = "default",
                  cfg: ExtractorConfig = ExtractorConfig(), progress: Progress | None = None) -> IndexReport:
        """Add files to a collection, computing only the embeddings not cached.

        Each batch of files is written in one transaction: a crash loses at
        most the batch in flight, and running again resumes from there.
        """
        cfg = cfg.resolved()
        started = time.perf_counter()
        spec = get_spec(cfg.backbone)
        store = self.store
        cid = store.collection_id(collection, create=True)
        config_id = store.config_id(cfg, spec.dim)
        members = store.member_hashes(cid)
        embedded = store.embedded_hashes(config_id)
        report = IndexReport(collection, cfg.key, device="")

        def embed(pixels: np.ndarray) -> np.ndarray:
            # The model loads on the first batch that needs it: re-indexing
            # a folder whose vectors are all cached never loads it at all.
            backbone = self.backbone(cfg)
            report.device = backbone.device
            return backbone.embed(pixels)
        seen: dict[str, str] = {}
        done = 0
        total = len(sources)
        if progress:
            progress(0, total, "indexing")

        def needs_pixels(digest: str) -> bool:
            return digest not in embedded

        def work(source: SourceFile) -> Prepared:
            return prepare(source, cfg.input_size, needs_pixels, self.limits)

        stream = ordered_map(work, sources, self.workers, prefetch=2 * self.batch_size)
        for batch, vectors in embed_batches(stream, embed, self.batch_size):
            rows: list[NewMember] = []
            for i, item in enumerate(batch):
                name = item.source.name
                if item.error is not None:
                    report.skipped.append(Skipped(name, item.error))
                    continue
                digest = item.sha256
                if digest in seen:
                    report.duplicates.append((name, seen[digest]))
                    continue
                seen[digest] = name
                if digest in members:
                    if members[digest] != name:
                        report.duplicates.append((name, members[digest]))
                        continue
                    report.unchanged += 1
                else:
                    report.added.append(name)
                vector = vectors.get(i)
                if vector is not None:
                    vector = l2_normalize(vector)
                    report.computed += 1
                    embedded.add(digest)
                else:
                    report.reused += 1
                known = store.image(digest) if item.pixels is None else None
                width = item.width or (known["width"] if known else 0)
                height = item.height or (known["height"] if known else 0)
                rows.append(NewMember(digest, name, str(Path(item.source.path).resolve()), item.source.label,
                                      width, height, item.nbytes, vector))
            store.write_batch(cid, config_id, rows)
            done += len(batch)
            if progress:
                progress(done, total, f"{len(report.added)} added, {len(report.skipped)} skipped")
        report.seconds = time.perf_counter() - started
        report.device = report.device or "none (all embeddings cached)"
        return report

    def ensure_embeddings(self, collection: str, cfg: ExtractorConfig, progress: Progress | None = None) -> int:
        """Compute this configuration's vectors for members that lack them.

        Switching a collection to another backbone or pooling reads the
        members' files again; images whose files are gone are reported by
        the count they leave missing.
        """
        cfg = cfg.resolved()
        cid = self._collection(collection)
        backbone = self.backbone(cfg)
        config_id = self.store.config_id(cfg, backbone.dim)
        if isinstance(backbone, HeadBackbone):  # from the base model's cached vectors: no image is read
            missing = self.store.missing_embeddings(cid, config_id)
            if not missing:
                return 0
            _, _, base = self.gallery(collection, self._base_config(cfg.backbone))
            row_of = {m.image_id: i for i, m in enumerate(base.members)}
            have = [m.image_id for m in missing if m.image_id in row_of]
            if have:
                vectors = backbone.project(base.vectors[[row_of[i] for i in have]])
                self.store.add_embeddings(config_id, dict(zip(have, vectors)))
            return len(have)
        missing = [m for m in self.store.missing_embeddings(cid, config_id) if m.path and Path(m.path).is_file()]
        if not missing:
            return 0
        sources = [SourceFile(Path(m.path), m.name, m.label) for m in missing]
        ids = {m.sha256: m.image_id for m in missing}

        def work(source: SourceFile) -> Prepared:
            return prepare(source, backbone.input_size, lambda digest: digest in ids, self.limits)

        done = 0
        stream = ordered_map(work, sources, self.workers, prefetch=2 * self.batch_size)
        for batch, vectors in embed_batches(stream, backbone.embed, self.batch_size):
            self.store.add_embeddings(config_id, {ids[batch[i].sha256]: l2_normalize(v) for i, v in vectors.items()})
            done += len(vectors)
            if progress:
                progress(done, len(sources), f"embedding with {cfg.label}")
        return done

    # -- search ------------------------------------------------------------
    def _collection(self, name: str) -> int:
        cid = self.store.collection_id(name)
        if cid is None:
            known = ", ".join(c.name for c in self.store.collections()) or "none yet"
            raise ServiceError(f"no collection named {name!r} (collections: {known})")
        return cid

    def gallery(self, collection: str, cfg: ExtractorConfig) -> tuple[int, int, Gallery]:
        cfg = cfg.resolved()
        cid = self._collection(collection)
        config_id = self.store.find_config(cfg)
        if config_id is None or not self.store.gallery(cid, config_id).members:
            self.ensure_embeddings(collection, cfg)
            config_id = self.store.config_id(cfg, self.backbone(cfg).dim)
        gallery = self.store.gallery(cid, config_id)
        if not gallery.members:
            raise ServiceError(f"collection {collection!r} has no images with {cfg.label} embeddings")
        return cid, config_id, gallery

    def _transform(self, cid: int, config_id: int, kind: str, generation: int, fit: Callable[[], Whitening]) -> Whitening:
        arrays = self.store.load_transform(cid, config_id, kind, generation)
        if arrays is not None:
            return Whitening.from_arrays(arrays)
        learned = fit()
        self.store.save_transform(cid, config_id, kind, generation, learned.to_arrays())
        return learned

    def ranker(self, collection: str, cfg: ExtractorConfig, scfg: SearchConfig) -> tuple[Ranker, Gallery]:
        """A prepared ranker, reused until the collection changes."""
        cid, config_id, gallery = self.gallery(collection, cfg)
        from .ann import AUTO_THRESHOLD

        use_ann = scfg.index == "ivf" or (scfg.index == "auto" and len(gallery.members) >= AUTO_THRESHOLD)
        key = (cid, config_id, gallery.generation, scfg.metric, scfg.rerank, scfg.whiten, use_ann)
        with self._lock:
            cached = self._rankers.get(key)
            if cached is not None:
                self._rankers.move_to_end(key)
                return cached, gallery
        vectors = gallery.vectors
        whitening = None
        if scfg.whiten != "none":
            whitening = self._transform(cid, config_id, scfg.whiten, gallery.generation,
                                        lambda: fit_postprocess(scfg.whiten, vectors))
        space = whitening.apply(vectors) if whitening is not None else vectors
        mahalanobis = None
        if scfg.metric == "mahalanobis":
            kind = f"mahalanobis+{scfg.whiten}"
            mahalanobis = self._transform(cid, config_id, kind, gallery.generation, lambda: fit_whitening(space))
        dba = database_augmentation(space) if scfg.rerank == "dba" else None
        ann, ids = (self._ann_index(cid, config_id, gallery), gallery.ids) if use_ann else (None, None)
        ranker = Ranker(vectors, scfg.metric, scfg.rerank, whitening, mahalanobis, dba, ann, ids)
        with self._lock:
            self._rankers[key] = ranker
            while len(self._rankers) > 8:
                self._rankers.popitem(last=False)
        return ranker, gallery

    def ann_path(self, cid: int, config_id: int) -> Path:
        """The approximate index lives beside the database, one file per gallery and configuration."""
        return self.store.path.parent / f"{self.store.path.stem}.ann" / f"{cid}-{config_id}.faiss"

    def _ann_index(self, cid: int, config_id: int, gallery: Gallery):
        """Load or build the IVF index, bring it up to date with the gallery, save if changed."""
        from .ann import AnnIndex

        path = self.ann_path(cid, config_id)
        with self._lock:
            ann = self._anns.get((cid, config_id))
            if ann is None and path.exists():
                ann = AnnIndex.load(path)
            if ann is None:
                ann = AnnIndex.build(gallery.ids, gallery.vectors)
                changed = True
            else:
                changed = any(ann.sync(gallery.ids, gallery.vectors))
            if changed:
                ann.save(path)
            self._anns[(cid, config_id)] = ann
            return ann

    def embed_query(self, image, cfg: ExtractorConfig, device: str | None = None) -> tuple[np.ndarray, dict[str, float], str]:
        """A path, bytes, a PIL image or an RGB array -> its L2-normalised vector."""
        cfg = cfg.resolved()
        backbone = self.backbone(cfg, device)
        start = time.perf_counter()
        try:
            if isinstance(image, np.ndarray) or hasattr(image, "convert"):
                from PIL import Image

                from .decode import to_rgb

                pil = image if hasattr(image, "convert") else Image.fromarray(np.asarray(image))
                pixels = np.asarray(to_rgb(pil).resize((backbone.input_size,) * 2, Image.BILINEAR), np.uint8)
            else:
                pixels = decode(image if isinstance(image, bytes) else Path(image), backbone.input_size, self.limits).pixels
        except DecodeError as exc:
            raise ServiceError(f"cannot use the query image: {exc}") from None
        decode_ms = _ms(start)
        start = time.perf_counter()
        vector = l2_normalize(backbone.embed(pixels[None]))[0]
        return vector, {"decode_ms": decode_ms, "embed_ms": _ms(start)}, backbone.device

    def search(self, image, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
               scfg: SearchConfig = SearchConfig(), device: str | None = None) -> SearchResult:
        started = time.perf_counter()
        cfg = cfg.resolved()
        ranker, gallery = self.ranker(collection, cfg, scfg)
        vector, timings, device = self.embed_query(image, cfg, device)
        return self._search_vector(vector, ranker, gallery, cfg, scfg, timings, device, started)

    def _search_vector(self, vector, ranker, gallery, cfg, scfg, timings, device, started) -> SearchResult:
        start = time.perf_counter()
        ranking = ranker.search(vector[None], scfg.k)
        timings = {**timings, "search_ms": _ms(start), "total_ms": _ms(started)}
        hits = []
        for rank, (row, score) in enumerate(zip(ranking.indices[0], ranking.scores[0]), start=1):
            m = gallery.members[row]
            hits.append(Hit(rank, m.name, m.path, m.label, float(score), m.sha256))
        return SearchResult(hits, timings, device, cfg.key, asdict(scfg))

    def compare(self, image, collection: str, a: tuple[ExtractorConfig, SearchConfig],
                b: tuple[ExtractorConfig, SearchConfig], devices: tuple[str | None, str | None] = (None, None)) -> Comparison:
        """Two configurations, one query: both result lists and how they agree."""
        results, orders = [], []
        for (cfg, scfg), device in zip((a, b), devices):
            started = time.perf_counter()
            cfg = cfg.resolved()
            ranker, gallery = self.ranker(collection, cfg, scfg)
            vector, timings, device = self.embed_query(image, cfg, device)
            results.append(self._search_vector(vector, ranker, gallery, cfg, scfg, timings, device, started))
            orders.append((gallery, ranker.full_order(vector[None])[0]))
        # Align both orders on image identity: the two galleries may differ
        # in rows if one configuration lacks some embeddings.
        (ga, oa), (gb, ob) = orders
        common = [m.sha256 for m in ga.members if m.sha256 in {x.sha256 for x in gb.members}]
        pos = {sha: i for i, sha in enumerate(common)}
        ra = np.array([pos[ga.members[r].sha256] for r in oa if ga.members[r].sha256 in pos])
        rb = np.array([pos[gb.members[r].sha256] for r in ob if gb.members[r].sha256 in pos])
        k = min(a[1].k, b[1].k)
        return Comparison(results[0], results[1], agreement(ra[None], rb[None], k))

    # -- evaluation ---------------------------------------------------------
    def evaluate(self, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
                 scfg: SearchConfig = SearchConfig()) -> EvalReport:
        """Leave-one-out over the collection's labelled images."""
        cfg = cfg.resolved()
        ranker, gallery = self.ranker(collection, cfg, scfg)
        labels = gallery.labels
        if not any(label is not None for label in labels):
            raise ServiceError(
                f"collection {collection!r} has no labels: index a folder with one subfolder per label, "
                "or pass --labels with a filename,label CSV")
        started = time.perf_counter()
        vectors = gallery.vectors
        report = leave_one_out(labels, lambda rows, ex: ranker.full_order(vectors[rows], ex),
                               exact_duplicate_groups(vectors))
        report.seconds = time.perf_counter() - started
        report.config = {"extractor": asdict(cfg), "key": cfg.key, "search": asdict(scfg), "collection": collection}
        return report

    # -- explanations ---------------------------------------------------------------
    def _image(self, image, size: int | None) -> np.ndarray:
        """A path, bytes, a PIL image or an array -> RGB pixels (squashed to ``size`` if given)."""
        from PIL import Image

        from .decode import to_rgb

        try:
            if isinstance(image, np.ndarray) or hasattr(image, "convert"):
                pil = to_rgb(image if hasattr(image, "convert") else Image.fromarray(np.asarray(image)))
                return np.asarray(pil.resize((size, size), Image.BILINEAR) if size else pil, np.uint8)
            return decode(image if isinstance(image, bytes) else Path(image), size, self.limits).pixels
        except DecodeError as exc:
            raise ServiceError(f"cannot use the image: {exc}") from None

    def resolve_member(self, collection: str, key: str):
        """A member of the collection by name, stored path or sha256."""
        for m in self.store.members(self._collection(collection)):
            if key in (m.name, m.path, m.sha256):
                return m
        return None

    def explain(self, query, result, collection: str = "default", cfg: ExtractorConfig = ExtractorConfig(),
                scfg: SearchConfig = SearchConfig(), display: int = 384):
        """Heatmaps of what drives the similarity of two images (see ``explain.py``).

        ``result`` is a member (name, path or sha256) or any image. Returns the
        explanation and the two images overlaid, at most ``display`` pixels a side.
        """
        from .explain import contributions, overlay

        cfg = cfg.resolved()
        if get_spec(cfg.backbone).family == "adapted":
            cfg = self._base_config(cfg.backbone)  # a trained head is non-linear: explain its base CNN
        backbone = self.backbone(cfg)
        if not hasattr(backbone, "feature_maps"):
            raise ServiceError(f"{cfg.backbone} has no feature map to explain; choose a CNN backbone")
        if isinstance(result, str) and not Path(result).is_file():
            member = self.resolve_member(collection, result)
            if member is None or not member.path:
                raise ServiceError(f"no image {result!r} in collection {collection!r}")
            result = member.path
        whitening = self.ranker(collection, cfg, scfg)[0].whitening if scfg.whiten != "none" else None
        maps = backbone.feature_maps(np.stack([self._image(query, backbone.input_size),
                                               self._image(result, backbone.input_size)]))
        explanation = contributions(maps[0], maps[1], cfg.pooling, cfg.gem_p or 3.0, whitening)
        scale = max(float(np.abs(explanation.query_map).max()), float(np.abs(explanation.result_map).max()), 1e-12)
        images = []
        for image in (query, result):
            pixels = self._image(image, None)
            h, w = pixels.shape[:2]
            if max(h, w) > display:
                from PIL import Image

                f = display / max(h, w)
                pixels = np.asarray(Image.fromarray(pixels).resize((max(1, round(w * f)), max(1, round(h * f)))))
            images.append(overlay(pixels, explanation.query_map if not images else explanation.result_map,
                                  scale=scale))
        return explanation, images[0], images[1]

    def embedding_map(self, collection: str, cfg: ExtractorConfig, scfg: SearchConfig, query=None):
        """2-D PCA of the collection's (post-processed) vectors, plus the query and its top k.

        Returns (coordinates (N, 2), members, query point or None, top-k rows).
        The projection is cached per gallery generation.
        """
        from .explain import pca_2d

        ranker, gallery = self.ranker(collection, cfg, scfg)
        # what the projected space depends on (an object id could be reused after the ranker is dropped)
        key = (collection, cfg.resolved().key, scfg.whiten, scfg.rerank, gallery.generation)
        with self._lock:
            cached = self._maps.get(key)
        if cached is None:
            cached = pca_2d(ranker.space)
            with self._lock:
                self._maps = {key: cached}  # one at a time: maps are cheap to redo
        coords, mean, axes = cached
        point, rows = None, np.zeros(0, np.int64)
        if query is not None:
            vector, _, _ = self.embed_query(query, cfg)
            q = ranker.whitening.apply(vector[None]) if ranker.whitening is not None else vector[None]
            point = ((q - mean) @ axes)[0]
            rows = ranker.search(vector[None], scfg.k).indices[0]
        return coords, gallery.members, point, rows

    # -- adapted models ----------------------------------------------------------
    def _register(self, row: dict) -> None:
        name = row["name"]

        def base_backbone(base: dict) -> Backbone:
            return self.backbone(ExtractorConfig(**base))

        def params() -> bytes:
            return self.store.adapted(name, with_params=True)[0]["params"]

        REGISTRY[name] = spec_for(row, base_backbone, params)

    def _base_config(self, name: str) -> ExtractorConfig:
        rows = self.store.adapted(name)
        if not rows:
            raise ServiceError(f"no adapted model named {name!r}")
        return ExtractorConfig(**json.loads(rows[0]["base"]))

    def adapted_models(self) -> list[dict]:
        """Trained models with their settings and before/after figures."""
        return [{**r, "settings": json.loads(r["settings"]), "figures": json.loads(r["figures"]),
                 "base": json.loads(r["base"])} for r in self.store.adapted()]

    def _pixels(self, members, size: int) -> np.ndarray:
        """Decode members' files at ``size`` (for the image-training methods)."""
        def work(m):
            try:
                return decode(m.path, size, self.limits).pixels
            except DecodeError as exc:
                raise ServiceError(f"cannot read {m.name} for training: {exc}") from None

        return np.stack(list(ordered_map(work, members, self.workers, prefetch=4 * self.workers)))

    def adapt(self, collection: str, acfg: AdaptConfig = AdaptConfig(), base: ExtractorConfig = ExtractorConfig(),
              scfg: SearchConfig = SearchConfig(rerank="none"), on_epoch: EpochCallback | None = None,
              cancel: threading.Event | None = None, name: str | None = None,
              on_batch: BatchCallback | None = None) -> AdaptReport:
        """Train a model for a labelled collection and register it as a new backbone.

        The labelled images are split by image (stratified): ``test_fraction``
        are held out, never seen in training or validation, and are both the
        queries and the gallery of the leave-one-out figures before and
        after, computed with the same search settings.
        """
        from . import adapt as A

        started = time.perf_counter()
        base = base.resolved()
        if name is not None and name in REGISTRY:
            raise ServiceError(f"a model named {name!r} exists already")
        if get_spec(base.backbone).family != "cnn":
            raise ServiceError("adapt starts from a CNN backbone (a pretrained one, or any for 'scratch')")
        _, _, gallery = self.gallery(collection, base)
        labels = gallery.labels
        rest, held = A.split_by_image(labels, acfg.test_fraction, acfg.seed)
        fit_rows, val_rows = (rest[i] for i in A.split_by_image([labels[r] for r in rest], acfg.val_fraction, acfg.seed))
        classes = sorted({labels[r] for r in fit_rows})
        if len(classes) < 2 or len(held) < 2 or len(val_rows) < 1:
            raise ServiceError(f"collection {collection!r} needs at least 2 labels with 3 or more images each to "
                               "train and to measure the result on images kept out of training")
        code = {c: i for i, c in enumerate(classes)}
        # validation and test rows whose label training never saw cannot be learned; they stay as test queries
        val_rows = np.array([r for r in val_rows if labels[r] in code], np.int64)
        y = np.array([code.get(labels[r], -1) for r in range(len(labels))], np.int64)
        test_labels = [labels[r] for r in held]

        def figures(vectors: np.ndarray) -> EvalReport:
            ranker = build_ranker(vectors, scfg.metric, scfg.rerank, scfg.whiten)
            return leave_one_out(test_labels, lambda rows, ex: ranker.full_order(vectors[rows], ex),
                                 exact_duplicate_groups(vectors))

        before = figures(gallery.vectors[held])
        tmp_dir = self.store.path.parent / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if acfg.method == "head":
            weights, log = A.train_head(gallery.vectors[fit_rows], y[fit_rows], len(classes), acfg,
                                        val=(gallery.vectors[val_rows], y[val_rows]), on_epoch=on_epoch, cancel=cancel,
                                        on_batch=on_batch)
            after_vectors = A.apply_head(weights, gallery.vectors[held])
            params, input_size, dim = A.pack(weights), base.input_size, acfg.dim
        else:
            keras = A._keras()
            size = acfg.scratch_size if acfg.method == "scratch" else base.input_size
            if acfg.method == "scratch":
                embedder = A.build_scratch(keras, acfg)
            else:
                embedder = A.build_finetune(keras, self.backbone(base).feature_model, acfg, base.pooling, base.gem_p or 3.0)
            members = gallery.members
            train_px = self._pixels([members[r] for r in fit_rows], size)
            val_px = self._pixels([members[r] for r in val_rows], size)
            log = A.train_images(embedder, train_px, y[fit_rows], len(classes), acfg, (val_px, y[val_rows]),
                                 on_epoch, cancel, on_batch)
            test_px = self._pixels([members[r] for r in held], size)
            after_vectors = np.asarray(embedder.predict(test_px.astype(np.float32), batch_size=64, verbose=0))
            params, input_size, dim = A.save_weights(embedder, tmp_dir), size, acfg.dim if acfg.method == "finetune" else 512
        after = figures(after_vectors)
        name = name or f"{acfg.method}-{base.backbone.replace('efficientnet-', '')}-{secrets.token_hex(3)}"
        report = AdaptReport(name, acfg.method, collection, before.map, after.map, before.p_at[1], after.p_at[1],
                             len(fit_rows), len(val_rows), before.queries, time.perf_counter() - started, log.to_json(),
                             acfg.to_json(), base.key)
        row = {"name": name, "method": acfg.method, "base": json.dumps(asdict(base)), "collection": collection,
               "input_size": int(input_size), "dim": int(dim), "params": params,
               "settings": json.dumps(acfg.to_json()), "figures": json.dumps(report.to_json())}
        self.store.save_adapted(row)
        self._register(row)
        self.ensure_embeddings(collection, ExtractorConfig(backbone=name))  # ready for search and compare at once
        return report

    def delete_adapted(self, name: str) -> bool:
        rows = self.store.adapted(name)
        if not rows:
            return False
        key = ExtractorConfig(backbone=name).resolved().key
        with self._lock:
            self._backbones = {k: v for k, v in self._backbones.items() if k[0] != name}
            self._rankers.clear()
            REGISTRY.pop(name, None)
        return self.store.delete_adapted(name, key)

    # -- uploads and galleries ------------------------------------------------
    @property
    def blob_root(self) -> Path:
        """Uploaded images live here, named by content hash, beside the database."""
        return self.store.path.parent / "images"

    def upload(self, uploads: Sequence[tuple[Path, str, str | None]], collection: str,
               cfg: ExtractorConfig = ExtractorConfig(), progress: Progress | None = None) -> IndexReport:
        """Add uploaded images and zips: store blobs by hash, then index them.

        Blobs of files that turn out not to be images are deleted again, so
        a rejected upload leaves nothing behind.
        """
        from .uploads import intake

        taken = intake(list(uploads), self.blob_root, self.limits)
        report = self.add_files(taken.sources, collection, cfg, progress)
        report.skipped = taken.skipped + report.skipped
        stored = {src.name for src in taken.sources}
        if report.duplicates or any(s.name in stored for s in report.skipped):
            self._remove_orphan_blobs()  # blobs of refused or duplicate files
        report.limit = taken.limit_hit
        return report

    def members(self, collection: str):
        return self.store.members(self._collection(collection))

    def fork(self, source: str, target: str) -> str:
        """Copy-on-write: ``target`` starts with ``source``'s images, no vectors copied."""
        if self.store.collection_id(target) is None:
            self.store.copy_collection(source, target)
        return target

    def touch(self, collection: str) -> None:
        """Mark a collection as in use; writes at most once a minute per collection,
        so a stream of searches does not become a stream of write transactions."""
        now = time.monotonic()
        if now - self._touched.get(collection, -1e9) < 60:
            return
        cid = self.store.collection_id(collection)
        if cid is not None:
            self.store.touch(cid)
            self._touched[collection] = now

    def cleanup(self, prefix: str, max_idle_s: float) -> list[str]:
        """Drop collections named ``prefix...`` idle for longer than ``max_idle_s``.

        Images no other collection holds go too, with their uploaded blobs.
        """
        from datetime import datetime, timedelta, timezone

        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=max_idle_s)).isoformat(timespec="seconds")
        dropped = []
        for name in self.store.idle_collections(prefix, cutoff):
            self.drop_collection(name)
            dropped.append(name)
        return dropped

    def _remove_orphan_blobs(self) -> None:
        if not self.blob_root.is_dir():
            return
        in_use = self.store.member_paths()
        for blob in self.blob_root.glob("*/*"):
            if str(blob.resolve()) not in in_use and not blob.name.startswith("."):
                blob.unlink(missing_ok=True)

    # -- housekeeping -------------------------------------------------------
    def remove(self, path_or_hash: str, collection: str | None = None) -> list[str]:
        cid = self._collection(collection) if collection is not None else None
        removed = self.store.remove(path_or_hash, cid)
        if removed:
            self._remove_orphan_blobs()
        return removed

    def collections(self):
        return self.store.collections()

    def drop_collection(self, name: str) -> bool:
        cid = self.store.collection_id(name)
        for row in self.store.adapted():
            if row["collection"] == name:  # a model trained on a gallery goes with it
                self.delete_adapted(row["name"])
        dropped = self.store.drop_collection(name)
        if dropped:
            self._remove_orphan_blobs()
            for key in [k for k in self._anns if k[0] == cid]:
                del self._anns[key]
            for path in self.ann_path(cid, 0).parent.glob(f"{cid}-*.faiss"):
                path.unlink(missing_ok=True)
        return dropped

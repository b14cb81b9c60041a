"""Searching: a complete gallery -> a prepared ranker (exact or IVF) -> hits and comparisons.

Why the gallery is completed here: a gallery served for a configuration
must hold every current member with a readable file, whatever backbone
indexed it first. Missing vectors are computed the first time a generation
of the collection is served, so uploading with one backbone and then
searching with another finds the new images; after that, the generation
keys every cache and a search costs milliseconds.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..ann import AUTO_THRESHOLD
from ..backbones import Backbone
from ..config import ExtractorConfig, SearchConfig
from ..decode import DecodeError, to_pixels
from ..evaluation import agreement
from ..milvus import describe
from ..pooling import l2_normalize
from ..ranking import Ranker, build_ranker
from ..settings import Limits
from ..store import Gallery, Store
from ..whitening import Whitening
from .caches import Caches
from .indexing import Indexer, Progress
from .models import Models
from .publishing import Publisher
from .reports import CollectionRef, Comparison, Hit, SearchResult, ServiceError, TextQuery


def _text_info(query, cfg: ExtractorConfig) -> dict | None:
    """What a words query ranked by, for the result line ("the text tower of clip-vit-b32")."""
    if not isinstance(query, TextQuery):
        return None
    return {"query": query.text, "mode": "model", "model": cfg.backbone, "terms": [], "weight": None, "matched": None}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


class Searcher:
    def __init__(self, store: Store, models: Models, indexer: Indexer, caches: Caches, limits: Limits):
        self.store, self.models, self.indexer, self.caches, self.limits = store, models, indexer, caches, limits
        self.publisher = Publisher(store, models, indexer)  # galleries served from Milvus
        self._ann_lock = threading.Lock()  # an IVF index is synced and saved by one thread at a time

    # -- galleries and rankers ---------------------------------------------------
    def gallery(self, ref: CollectionRef, cfg: ExtractorConfig, progress: Progress | None = None) -> tuple[int, Gallery]:
        """(config id, the collection's complete gallery for ``cfg``)."""
        cfg = self.models.resolve(cfg)
        config_id = self.store.config_id(cfg, self.models.spec(cfg.backbone).dim)
        generation = self.store.generation(ref.id)
        if generation < 0:
            raise ServiceError(f"the gallery {ref.name!r} no longer exists")
        gallery = self.caches.galleries.get((ref.id, config_id, generation))
        if gallery is None:
            self.indexer.ensure(ref, cfg, progress)
            complete_at = self.store.generation(ref.id)
            gallery = self.store.gallery(ref.id, config_id)
            if gallery.generation == complete_at:  # nothing changed meanwhile: complete, so cacheable
                self.caches.galleries.put((ref.id, config_id, gallery.generation), gallery)
        if not gallery.members:
            if not self.store.members(ref.id):
                raise ServiceError(f"the gallery {ref.name!r} has no images yet: add some first")
            raise ServiceError(f"no image of the gallery {ref.name!r} could be read for {cfg.label}")
        return config_id, gallery

    def ranker(self, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig,
               progress: Progress | None = None) -> tuple[Ranker, Gallery]:
        """A prepared ranker, reused until the collection changes."""
        config_id, gallery = self.gallery(ref, cfg, progress)
        use_ann = scfg.index == "ivf" or (scfg.index == "auto" and len(gallery.members) >= AUTO_THRESHOLD)
        key = (ref.id, config_id, gallery.generation, scfg.metric, scfg.rerank, scfg.whiten, use_ann)
        ranker = self.caches.rankers.get(key)
        if ranker is None:
            def fitted(kind: str, fit) -> Whitening:
                arrays = self.store.load_transform(ref.id, config_id, kind, gallery.generation)
                if arrays is not None:
                    return Whitening.from_arrays(arrays)
                learned = fit()
                self.store.save_transform(ref.id, config_id, kind, gallery.generation, learned.to_arrays())
                return learned

            ann = self._ann_index(ref.id, config_id, gallery) if use_ann else None
            # A graph re-ranker's state (kNN graph, encodings) depends on the gallery and its
            # post-processing only: rankers for other metrics or indexes share it. It is built
            # lazily, on the first query that needs it, and again for each new generation.
            graph_key = (ref.id, config_id, gallery.generation, scfg.whiten, scfg.rerank)
            ranker = build_ranker(gallery.vectors, scfg.metric, scfg.rerank, scfg.whiten, fitted=fitted, ann=ann,
                                  ids=gallery.ids if use_ann else None, graph=self.caches.graphs.get(graph_key))
            if ranker.graph is not None:
                self.caches.graphs.put(graph_key, ranker.graph)
            self.caches.rankers.put(key, ranker)
        return ranker, gallery

    # -- the approximate index ------------------------------------------------------
    @property
    def ann_folder(self) -> Path:
        return self.store.path.parent / f"{self.store.path.stem}.ann"

    def ann_path(self, cid: int, config_id: int) -> Path:
        """The approximate index lives beside the database, one file per gallery and configuration."""
        return self.ann_folder / f"{cid}-{config_id}.faiss"

    def _ann_index(self, cid: int, config_id: int, gallery: Gallery):
        """Load or build the IVF index, bring it up to date with the gallery, save if changed.

        It is keyed by image ids, which are never reused, so syncing by id
        sets is exact: an id it holds is the picture it was built from.
        """
        from ..ann import AnnIndex

        with self._ann_lock:
            return self._sync_ann(cid, config_id, gallery, AnnIndex)

    def _sync_ann(self, cid: int, config_id: int, gallery: Gallery, AnnIndex):
        path = self.ann_path(cid, config_id)
        ann = self.caches.anns.get((cid, config_id))
        if ann is None and path.exists():
            ann = AnnIndex.load(path)
        if ann is None:
            ann = AnnIndex.build(gallery.ids, gallery.vectors)
            changed = True
        else:
            changed = any(ann.sync(gallery.ids, gallery.vectors))
        if changed:
            ann.save(path)
        self.caches.anns.put((cid, config_id), ann)
        return ann

    def forget(self, cid: int, outside: dict | None = None) -> None:
        """A dropped collection: its caches and index files go (and its Milvus collections, ``outside``)."""
        self.caches.forget_collection(cid)
        self.publisher.forget(cid, outside)
        for path in self.ann_folder.glob(f"{cid}-*.faiss"):
            path.unlink(missing_ok=True)

    def forget_all_indexes(self) -> None:
        """Index files keyed by ids from before ids were never reused (see ``Store``)."""
        shutil.rmtree(self.ann_folder, ignore_errors=True)

    # -- queries ------------------------------------------------------------------
    def embed_query(self, image, cfg: ExtractorConfig, device: str | None = None,
                    runtime: str | None = None) -> tuple[np.ndarray, dict[str, float], Backbone]:
        """A path, bytes, a PIL image, an RGB array or a ``TextQuery`` -> its L2-normalised vector (and what made it)."""
        if isinstance(image, TextQuery):
            return self._embed_text(image, cfg, device, runtime)
        backbone = self.models.backbone(cfg, device, runtime)
        start = time.perf_counter()
        try:
            pixels = to_pixels(image, backbone.input_size, self.limits)
        except DecodeError as exc:
            raise ServiceError(f"cannot use the query image: {exc}") from None
        decode_ms = _ms(start)
        start = time.perf_counter()
        vector = l2_normalize(backbone.embed(pixels[None]))[0]
        return vector, {"decode_ms": decode_ms, "embed_ms": _ms(start)}, backbone

    def _embed_text(self, query: TextQuery, cfg: ExtractorConfig, device: str | None, runtime: str | None):
        """Words -> the text tower's L2-normalised vector."""
        text = self._checked_words(query, cfg)
        backbone = self.models.backbone(cfg, device, runtime)
        if not callable(getattr(backbone, "text_embed", None)):
            raise ServiceError(f"{cfg.backbone} has no text tower")
        start = time.perf_counter()
        vector = l2_normalize(backbone.text_embed([text]))[0]
        return vector, {"embed_ms": _ms(start)}, backbone

    def _checked_words(self, query: TextQuery, cfg: ExtractorConfig) -> str:
        """The words, or a one-line refusal before any model loads or any gallery is indexed."""
        from ..backbones import text_models

        text = " ".join(str(query.text or "").split())
        if not text:
            raise ServiceError("the text is empty: type some words")
        if self.models.spec(cfg.backbone).name not in text_models():
            raise ServiceError(f"{cfg.backbone} has no text tower, so words cannot rank its vectors: choose an "
                               f"image-text backbone ({', '.join(text_models())}), or search the captions and tags")
        return text

    def for_query(self, image, cfg: ExtractorConfig, scfg: SearchConfig) -> SearchConfig:
        """How a query of this kind ranks: words are never centred or whitened on the images' statistics.

        Centring and PCA-whitening are learned on image vectors; applied to a
        text vector they would move it by the images' mean, which says nothing
        about the words. Re-ranking stays: it works on the gallery's side.
        Words for a backbone without a text tower are refused here, first.
        """
        if not isinstance(image, TextQuery):
            return scfg
        from .. import distances

        self._checked_words(image, cfg)

        if distances.METRICS[scfg.metric].whitened:
            raise ServiceError(f"the {scfg.metric} metric is learned on the images' vectors; rank words with cosine "
                               "or euclidean")
        return replace(scfg, whiten="none")

    def search(self, image, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig, device: str | None = None,
               progress: Progress | None = None, runtime: str | None = None) -> SearchResult:
        cfg = self.models.resolve(cfg)
        scfg = self.for_query(image, cfg, scfg)
        if self.served_by_milvus(ref, scfg):
            return self._search_milvus(image, ref, cfg, scfg, device, runtime, progress)
        return self._search(image, ref, cfg, scfg, device, runtime, progress)[0]

    def served_by_milvus(self, ref: CollectionRef, scfg: SearchConfig) -> bool:
        """``milvus`` asks for it; ``auto`` takes it when the gallery was published to Milvus."""
        return scfg.index == "milvus" or (scfg.index == "auto" and self.store.vector_index(ref.id) is not None)

    def _search_milvus(self, image, ref, cfg, scfg, device, runtime, progress) -> SearchResult:
        started = time.perf_counter()
        vector, timings, backbone = self.embed_query(image, cfg, device, runtime)
        start = time.perf_counter()
        ids, scores, found = self.publisher.search(vector, ref, cfg, scfg, progress)
        members = self.store.members_by_id(ref.id, ids.tolist())
        hits = []
        for image_id, score in zip(ids.tolist(), scores.tolist()):
            m = members.get(image_id)
            if m is not None:  # removed since the sync: never shown
                hits.append(Hit(len(hits) + 1, m.name, m.path, m.label, float(score), m.sha256))
        timings = {**timings, "search_ms": _ms(start), **found, "total_ms": _ms(started)}
        where = self.store.vector_index(ref.id)
        search = {**asdict(scfg), "served_by": describe(where["uri"]) if where else "milvus"}
        return SearchResult(hits, timings, backbone.device, cfg.key, search, backbone.runtime, _text_info(image, cfg))

    def _search(self, image, ref, cfg, scfg, device, runtime, progress) -> tuple[SearchResult, Gallery, Ranker, np.ndarray]:
        started = time.perf_counter()
        ranker, gallery = self.ranker(ref, cfg, scfg, progress)
        vector, timings, backbone = self.embed_query(image, cfg, device, runtime)
        start = time.perf_counter()
        ranking = ranker.search(vector[None], scfg.k)
        timings = {**timings, "search_ms": _ms(start), **ranking.timings, "total_ms": _ms(started)}
        hits = []
        for rank, (row, score) in enumerate(zip(ranking.indices[0], ranking.scores[0]), start=1):
            m = gallery.members[row]
            hits.append(Hit(rank, m.name, m.path, m.label, float(score), m.sha256))
        result = SearchResult(hits, timings, backbone.device, cfg.key, asdict(scfg), backbone.runtime,
                              _text_info(image, cfg))
        return result, gallery, ranker, vector

    def compare(self, image, ref: CollectionRef, a: tuple[ExtractorConfig, SearchConfig],
                b: tuple[ExtractorConfig, SearchConfig], devices: tuple[str | None, str | None] = (None, None),
                progress: Progress | None = None,
                runtimes: tuple[str | None, str | None] = (None, None), b_query=None) -> Comparison:
        """Two configurations, one query (or ``b_query`` for B, e.g. words against A's image): both lists and how they agree."""
        queries = (image, image if b_query is None else b_query)
        for query, (cfg, scfg) in zip(queries, (a, b)):
            if self.served_by_milvus(ref, self.for_query(query, self.models.resolve(cfg), scfg)):
                raise ServiceError("Compare ranks the whole gallery, which a Milvus-served gallery never loads: "
                                   "compare with index 'exact'")
        results, orders = [], []
        for query, (cfg, scfg), device, runtime in zip(queries, (a, b), devices, runtimes):
            cfg = self.models.resolve(cfg)
            result, gallery, ranker, vector = self._search(query, ref, cfg, self.for_query(query, cfg, scfg), device,
                                                           runtime, progress)
            results.append(result)
            orders.append((gallery, ranker.full_order(vector[None])[0]))
        # Align both orders on image identity: the two galleries may differ
        # in rows if one configuration could not read some files.
        (ga, oa), (gb, ob) = orders
        in_b = {m.sha256 for m in gb.members}
        pos = {sha: i for i, sha in enumerate(m.sha256 for m in ga.members if m.sha256 in in_b)}
        ra = np.array([pos[ga.members[r].sha256] for r in oa if ga.members[r].sha256 in pos])
        rb = np.array([pos[gb.members[r].sha256] for r in ob if gb.members[r].sha256 in pos])
        return Comparison(results[0], results[1], agreement(ra[None], rb[None], min(a[1].k, b[1].k)))

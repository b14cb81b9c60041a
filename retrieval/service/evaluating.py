"""Evaluating: a labelled gallery -> figures, by leave-one-out or with held-out queries.

Why apart from searching: an evaluation decides which images may ask and
what counts as an answer, which is where a protocol turns dishonest. A
re-ranker that learns from the gallery (query expansion, diffusion) has
seen a leave-one-out query among the rows it learned from, so the honest
protocol for those is queries that were never gallery members. This module
holds both protocols, and every report says which one made its figures.

Held-out queries come from a folder or a zip of one subfolder per label, or
from another collection. Their vectors are kept by content in the store
(``Store.save_query_vectors``), not as a collection: a second run costs no
model time and nobody's gallery list grows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import ExtractorConfig, SearchConfig
from ..evaluation import EvalReport, exact_duplicate_groups, leave_one_out, query_gallery
from ..extract import Prepared, embed_batches, ordered_map, prepare
from ..files import Skipped, SourceFile, scan_folder
from ..pooling import l2_normalize
from ..store import Gallery
from ..uploads import intake
from .blobs import Blobs
from .galleries import Galleries
from .indexing import Progress
from .reports import CollectionRef, ServiceError
from .searching import Searcher


@dataclass(frozen=True)
class QuerySource:
    """Where held-out queries come from, as the caller named it."""

    kind: str  # "folder", "zip" or "collection"
    name: str  # the path or the collection's name, for messages and reports
    ref: CollectionRef | None = None  # for a collection


@dataclass
class HeldOut:
    """What became of every offered query: the figures' denominator, accounted for."""

    source: str
    kind: str
    offered: int = 0  # image files (or members) offered as queries, readable or not
    scored: int = 0
    in_gallery: list[str] = field(default_factory=list)  # a gallery member's content or descriptor: left out
    unlabelled: list[str] = field(default_factory=list)
    unknown_label: list[str] = field(default_factory=list)  # a label the gallery lacks: nothing to find
    unknown_labels: list[str] = field(default_factory=list)  # which labels those were
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (name, same content as): asked once
    unreadable: list[Skipped] = field(default_factory=list)
    computed: int = 0  # vectors the model produced in this run
    reused: int = 0  # vectors already stored (an earlier run, or a member of any collection)

    def refuses(self, name: str, digest: str, label: str | None, known: set, in_gallery: bool,
                asked: dict[str, str]) -> bool:
        """Record why a query cannot ask (a gallery member, no label, a label the gallery lacks, a repeat);
        False when it may. One set of rules for the CNN rows and the metadata row."""
        if in_gallery:
            self.in_gallery.append(name)
        elif label is None:
            self.unlabelled.append(name)
        elif label not in known:
            self.unknown_label.append(name)
            if label not in self.unknown_labels:
                self.unknown_labels.append(label)
        elif digest in asked:
            self.duplicates.append((name, asked[digest]))
        else:
            return False
        return True

    def notes(self) -> list[str]:
        """One line per reason a query was not scored; the same words in the CLI, the app and JSON."""
        def n(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        out = []
        if self.in_gallery:
            out.append(n(len(self.in_gallery), "query image is also in the gallery and was left out",
                         "query images are also in the gallery and were left out"))
        if self.unlabelled:
            out.append(n(len(self.unlabelled), "query image has no label (not in a subfolder) and was skipped",
                         "query images have no label (not in a subfolder) and were skipped"))
        if self.unknown_label:
            shown = ", ".join(self.unknown_labels[:3]) + (", …" if len(self.unknown_labels) > 3 else "")
            out.append(n(len(self.unknown_label), f"query image has a label the gallery lacks ({shown}) and was skipped",
                         f"query images have {'a label' if len(self.unknown_labels) == 1 else 'labels'} the gallery "
                         f"lacks ({shown}) and were skipped"))
        if self.duplicates:
            out.append(n(len(self.duplicates), "query image repeats another one's content and was asked once",
                         "query images repeat another one's content and were asked once"))
        if self.unreadable:
            out.append(n(len(self.unreadable), "query file could not be read and was skipped",
                         "query files could not be read and were skipped"))
        return out

    def to_json(self) -> dict:
        out = asdict(self)
        out["duplicates"] = [{"name": a, "duplicate_of": b} for a, b in self.duplicates]
        out["unreadable"] = [{"name": s.name, "reason": s.reason} for s in self.unreadable]
        out["notes"] = self.notes()
        return out


@dataclass
class _Queries:
    names: list[str]
    hashes: list[str]
    labels: list[str | None]
    vectors: np.ndarray  # (n, D), row-aligned with the lists


class Evaluator:
    def __init__(self, searcher: Searcher, galleries: Galleries, blobs: Blobs, batch_size: int, workers: int):
        self.searcher, self.galleries, self.blobs = searcher, galleries, blobs
        self.store, self.models, self.limits = searcher.store, searcher.models, searcher.limits
        self.batch_size, self.workers = batch_size, workers

    def evaluate(self, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig, queries: str | Path | None = None,
                 progress: Progress | None = None) -> EvalReport:
        if queries is None:
            return self.leave_one_out(ref, cfg, scfg, progress)
        return self.held_out(ref, self.source(queries), cfg, scfg, progress)

    def source(self, queries: str | Path) -> QuerySource:
        """A folder, a zip, or a collection's name; a ``Path`` is always a file-system path.

        A string that names both a collection and a folder is refused rather
        than guessed: the two would give different figures.
        """
        text = str(queries)
        path = Path(queries).expanduser()
        collection = not isinstance(queries, Path) and self.galleries.exists(text)
        on_disk = path.is_dir() or path.is_file()
        if collection and on_disk:
            other = f" (./{text})" if not path.is_absolute() else ""
            raise ServiceError(f"{text!r} is both a collection and a path: write the path another way{other}")
        if collection:
            return QuerySource("collection", text, self.galleries.ref(text))
        if path.is_dir():
            return QuerySource("folder", str(path))
        if path.is_file():
            if path.suffix.lower() != ".zip":
                raise ServiceError(f"held-out queries must be a folder, a zip or a collection, not {path.name!r}")
            return QuerySource("zip", str(path))
        raise ServiceError(f"no folder, zip or collection named {text!r} for the held-out queries")

    # -- the protocols -----------------------------------------------------------
    def leave_one_out(self, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig,
                      progress: Progress | None = None) -> EvalReport:
        """Every labelled member queries all the others: for one gallery with no separate queries."""
        cfg = self.models.resolve(cfg)
        ranker, gallery = self.searcher.ranker(ref, cfg, scfg, progress)
        self._labelled(ref, gallery)
        started = time.perf_counter()
        vectors = gallery.vectors
        report = leave_one_out(gallery.labels, lambda rows, ex: ranker.full_order(vectors[rows], ex),
                               exact_duplicate_groups(vectors))
        report.seconds = time.perf_counter() - started
        report.config = {"extractor": asdict(cfg), "key": cfg.key, "search": asdict(scfg), "collection": ref.name,
                         "protocol": "leave-one-out"}
        return report

    def held_out(self, ref: CollectionRef, source: QuerySource, cfg: ExtractorConfig, scfg: SearchConfig,
                 progress: Progress | None = None) -> EvalReport:
        """Queries that are never gallery members against the whole gallery.

        A query whose content is a member of the gallery, or whose
        descriptor equals a member's (the same pixels in other bytes), is
        left out and counted: it would find itself and flatter the figures.
        Nothing is excluded from the ranking, since no query is in it.
        """
        if source.ref is not None and source.ref.id == ref.id:
            raise ServiceError(f"the queries are the gallery {ref.name!r} itself: evaluate without held-out "
                               "queries for leave-one-out")
        cfg = self.models.resolve(cfg)
        ranker, gallery = self.searcher.ranker(ref, cfg, scfg, progress)
        self._labelled(ref, gallery)
        held = HeldOut(source.name, source.kind)
        queries = self._queries(source, cfg, held, progress)
        keep = self._admit(ref, gallery, queries, held)
        if not keep:
            raise ServiceError(f"none of the {held.offered} held-out query images can be scored"
                               + (": " + "; ".join(held.notes()) if held.notes() else ""))
        labels = [queries.labels[i] for i in keep]
        vectors = queries.vectors[keep]
        started = time.perf_counter()
        report = query_gallery(labels, gallery.labels, lambda rows: ranker.keys(vectors[rows]))
        report.seconds = time.perf_counter() - started
        held.scored = report.queries
        report.config = {"extractor": asdict(cfg), "key": cfg.key, "search": asdict(scfg), "collection": ref.name,
                         "protocol": "held-out", "queries": held.to_json()}
        return report

    @staticmethod
    def _labelled(ref: CollectionRef, gallery: Gallery) -> None:
        if not any(label is not None for label in gallery.labels):
            raise ServiceError(
                f"the gallery {ref.name!r} has no labels: index a folder with one subfolder per label, "
                "or pass --labels with a filename,label CSV")

    def _admit(self, ref: CollectionRef, gallery: Gallery, queries: _Queries, held: HeldOut) -> list[int]:
        """The rows of ``queries`` that may ask; every other one is counted with its reason."""
        members = set(self.store.member_hashes(ref.id)) | {m.sha256 for m in gallery.members}
        rows_by_hash: dict[int, list[int]] = {}  # hashes, not the rows' bytes: a large gallery's would fill memory
        for row, vector in enumerate(gallery.vectors):
            rows_by_hash.setdefault(hash(vector.tobytes()), []).append(row)

        def same_descriptor(vector: np.ndarray) -> bool:
            rows = rows_by_hash.get(hash(np.ascontiguousarray(vector, np.float32).tobytes()), [])
            return any(np.array_equal(gallery.vectors[row], vector) for row in rows)

        labels = {label for label in gallery.labels if label is not None}
        asked: dict[str, str] = {}  # content -> the name it was asked under
        keep = []
        for i, (name, digest, label) in enumerate(zip(queries.names, queries.hashes, queries.labels)):
            member = digest in members or same_descriptor(queries.vectors[i])
            if not held.refuses(name, digest, label, labels, member, asked):
                asked[digest] = name
                keep.append(i)
        return keep

    # -- the query vectors -------------------------------------------------------
    def _queries(self, source: QuerySource, cfg: ExtractorConfig, held: HeldOut,
                 progress: Progress | None) -> _Queries:
        if source.kind == "collection":
            return self._from_collection(source.ref, cfg, held, progress)
        if source.kind == "folder":
            sources, skipped = scan_folder(source.name, self.limits)
            held.unreadable += skipped
            return self._embed(sources, cfg, held, progress)
        # A zip goes the way of the app's uploads (the same caps and refusals),
        # into the data folder's blobs for as long as this run needs them:
        # the lease deletes every one that no member holds when it ends.
        with self.blobs.lease() as lease:
            taken = intake([(Path(source.name), Path(source.name).name, None)], lease.store, self.limits)
            held.unreadable += taken.skipped
            return self._embed(taken.sources, cfg, held, progress)

    def _from_collection(self, ref: CollectionRef, cfg: ExtractorConfig, held: HeldOut,
                         progress: Progress | None) -> _Queries:
        """A collection's complete gallery is its query set; members without a vector are unreadable."""
        _, gallery = self.searcher.gallery(ref, cfg, progress)
        have = {m.image_id for m in gallery.members}
        missing = [m for m in self.store.members(ref.id) if m.image_id not in have]
        held.offered = len(gallery.members) + len(missing)
        held.unreadable += [Skipped(m.name, "its file is gone or unreadable for this model") for m in missing]
        held.reused = len(gallery.members)
        return _Queries([m.name for m in gallery.members], [m.sha256 for m in gallery.members], gallery.labels,
                        gallery.vectors)

    def _embed(self, sources: list[SourceFile], cfg: ExtractorConfig, held: HeldOut,
               progress: Progress | None) -> _Queries:
        """Files -> vectors through the indexing pipeline, decoding only what no stored vector covers.

        New vectors are saved batch by batch, so an interrupted run resumes
        where it stopped and a finished one is never paid for again.
        """
        store = self.store
        config_id = store.config_id(cfg, self.models.spec(cfg.backbone).dim)
        stored: dict[str, np.ndarray] = {}

        def needs_pixels(digest: str) -> bool:
            stored.update(store.vectors_by_content(config_id, [digest]))
            return digest not in stored

        def work(source: SourceFile) -> Prepared:
            return prepare(source, cfg.input_size, needs_pixels, self.limits)

        def embed(pixels: np.ndarray) -> np.ndarray:
            return self.models.backbone(cfg).embed(pixels)  # loaded on the first batch that needs it

        held.offered = len(held.unreadable) + len(sources)
        names, hashes, labels, vectors = [], [], [], []
        done = 0
        if progress:
            progress(0, len(sources), "held-out queries")
        stream = ordered_map(work, sources, self.workers, prefetch=2 * self.batch_size)
        for batch, computed in embed_batches(stream, embed, self.batch_size):
            new = {batch[i].sha256: l2_normalize(v) for i, v in computed.items()}
            store.save_query_vectors(config_id, new)
            held.computed += len(new)
            for item in batch:
                if item.error is not None:
                    held.unreadable.append(Skipped(item.source.name, item.error))
                    continue
                vector = new.get(item.sha256)
                if vector is None:
                    vector = stored[item.sha256]
                    held.reused += 1
                names.append(item.source.name)
                hashes.append(item.sha256)
                labels.append(item.source.label)
                vectors.append(vector)
            done += len(batch)
            if progress:
                progress(done, len(sources), f"held-out queries: {held.computed} embedded")
        dim = self.models.spec(cfg.backbone).dim
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
        return _Queries(names, hashes, labels, matrix)

"""Search by text metadata: BM25 over captions and tags, alone or combined with an image query.

Why its own module: it is the second kind of image retrieval, ranked by the
words people wrote rather than by pixels, and it is measured the same way
(``evaluate`` returns the same ``EvalReport`` as the CNN rows), so the two
can be compared on one gallery. A user's text becomes a safe FTS5 query in
``metadata.match_expression``; scores are put on one scale in
``metadata.fuse``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import ExtractorConfig, SearchConfig
from ..evaluation import EvalReport, leave_one_out, query_gallery
from ..files import SourceFile, match_key, scan_folder
from ..metadata import (
    SIDECAR,
    TEXT_TARGETS,
    MetadataError,
    check_mode,
    check_weight,
    document,
    fuse,
    fused_order,
    match_expression,
    parse_csv,
    query_terms,
)
from ..store import Member, StoreError
from ..uploads import intake
from .evaluating import Evaluator, HeldOut
from .indexing import Progress
from .reports import CollectionRef, Hit, SearchResult, ServiceError, TextQuery
from .searching import Searcher

LABEL = "metadata (captions + tags, BM25)"  # how an evaluation row of text retrieval is named


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


class TextSearch:
    def __init__(self, searcher: Searcher, evaluator: Evaluator):
        self.searcher, self.evaluator = searcher, evaluator
        self.store = searcher.store

    def scores(self, ref: CollectionRef, text: str | None) -> tuple[list[str], dict[int, float]]:
        """(the words searched for, image id -> BM25 score of every member that matches any of them)."""
        terms = query_terms(text)
        expression = match_expression(terms)
        if expression is None:
            return terms, {}
        try:
            return terms, self.store.text_scores(ref.id, expression)
        except StoreError as exc:
            raise ServiceError(str(exc)) from None

    def search_text(self, ref: CollectionRef, text: str, k: int = 10) -> SearchResult:
        started = time.perf_counter()
        members = self.store.members(ref.id)
        if not members:
            raise ServiceError(f"the gallery {ref.name!r} has no images yet: add some first")
        terms, scores = self.scores(ref, text)
        if not terms:
            raise ServiceError("the text has no words to search for")
        position = {m.image_id: i for i, m in enumerate(members)}
        ranked = sorted(scores, key=lambda iid: (-scores[iid], position[iid]))[:max(1, k)]
        hits = [Hit(rank, members[position[iid]].name, members[position[iid]].path, members[position[iid]].label,
                    scores[iid], members[position[iid]].sha256) for rank, iid in enumerate(ranked, start=1)]
        elapsed = _ms(started)
        text_info = {"query": text, "terms": terms, "mode": "text", "weight": 1.0, "matched": len(scores),
                     "described": len(self.store.metadata(ref.id))}
        return SearchResult(hits, {"search_ms": elapsed, "total_ms": elapsed}, "none (text search)", "metadata",
                            {"k": k, "ranking": "bm25"}, "", text_info)

    def words(self, ref: CollectionRef, text: str, cfg: ExtractorConfig, scfg: SearchConfig, target: str = "auto",
              device: str | None = None, runtime: str | None = None) -> SearchResult:
        """Words alone, ranked by the backbone's text tower or by the captions and tags (``TEXT_TARGETS``).

        ``auto`` takes the text tower when the backbone has one (CLIP, SigLIP):
        it finds images nobody described. The result's ``text["mode"]`` says
        which ran ("model" or "text"), so every caller can tell the user.
        """
        if target not in TEXT_TARGETS:
            raise ServiceError(f"unknown text target {target!r}: choose one of {', '.join(TEXT_TARGETS)}")
        if target == "model" or (target == "auto" and self.has_text_tower(cfg.backbone)):
            return self.searcher.search(TextQuery(text), ref, cfg, scfg, device, runtime=runtime)
        return self.search_text(ref, text, scfg.k)

    def has_text_tower(self, backbone: str) -> bool:
        """Whether words can rank this backbone's vectors, known from its spec (nothing is loaded)."""
        from ..backbones import BackboneUnavailable, text_models

        try:
            return self.searcher.models.spec(backbone).name in text_models()
        except BackboneUnavailable:
            return False

    def combined(self, image, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig, text: str, mode: str,
                 weight: float, device: str | None = None, progress: Progress | None = None,
                 runtime: str | None = None) -> SearchResult:
        """An image query with words: ``filter`` keeps the images whose text matches, ranked by the image;
        ``fuse`` ranks every image by ``(1 - weight) * image + weight * text`` (see ``metadata.fuse``)."""
        check_mode(mode)
        weight = check_weight(weight)
        if self.searcher.served_by_milvus(ref, scfg):
            raise ServiceError("an image with words ranks the whole gallery, which a Milvus-served gallery never "
                               "loads: search by the image or by the words alone, or with index 'exact'")
        started = time.perf_counter()
        cfg = self.searcher.models.resolve(cfg)
        ranker, gallery = self.searcher.ranker(ref, cfg, scfg, progress)
        vector, timings, backbone = self.searcher.embed_query(image, cfg, device, runtime)
        start = time.perf_counter()
        keys = np.asarray(ranker.keys(vector[None])[0], np.float64)
        search_ms = _ms(start)
        start = time.perf_counter()
        terms, scores = self.scores(ref, text)
        if not terms:
            raise ServiceError("the text has no words to search for")
        text_scores = np.array([scores.get(m.image_id, 0.0) for m in gallery.members], np.float64)
        matched = np.array([m.image_id in scores for m in gallery.members], bool)
        if mode == "filter":
            rows = np.flatnonzero(matched)
            order = rows[np.lexsort((rows, -keys[rows]))]
            own = ranker.metric.higher_is_better or ranker.graph is not None
            shown = keys if own else -keys  # the metric's own value, as a plain image search shows it
        else:
            order = fused_order(keys, text_scores, weight)
            shown = fuse(keys, text_scores, weight)
        order = order[:scfg.k]
        hits = [Hit(rank, gallery.members[row].name, gallery.members[row].path, gallery.members[row].label,
                    float(shown[row]), gallery.members[row].sha256) for rank, row in enumerate(order, start=1)]
        timings = {**timings, "search_ms": search_ms, "text_ms": _ms(start), "total_ms": _ms(started)}
        text_info = {"query": text, "terms": terms, "mode": mode, "weight": weight if mode == "fuse" else None,
                     "matched": int(matched.sum())}
        return SearchResult(hits, timings, backbone.device, cfg.key, asdict(scfg), backbone.runtime, text_info)

    # -- evaluation: the "metadata only" row ---------------------------------------
    def evaluate(self, ref: CollectionRef, queries: str | Path | None = None) -> EvalReport:
        """Each labelled query's own caption and tags ask the gallery's metadata (BM25).

        Leave-one-out over the members that have text; members without text
        stay in the gallery as answers text retrieval cannot find. Equal
        scores are ordered with the wrong answers first, so ties never flatter.
        With ``queries``, held-out queries that carry captions (another
        collection's, or a folder's or zip's ``metadata.csv``) ask instead.
        """
        members = self.store.members(ref.id)
        if not members:
            raise ServiceError(f"the gallery {ref.name!r} has no images yet: add some first")
        if not any(m.label is not None for m in members):
            raise ServiceError(f"the gallery {ref.name!r} has no labels: index a folder with one subfolder per "
                               "label, or pass --labels with a filename,label CSV")
        texts = {m.image_id: document(m.caption, m.tags) for m in self.store.metadata(ref.id)}
        if not texts:
            raise ServiceError(f"no image of the gallery {ref.name!r} has a caption or tags, so the metadata row is "
                               f"unavailable: import a {SIDECAR} (name,caption,tags) first")
        labels = [m.label for m in members]
        row_of = {m.image_id: i for i, m in enumerate(members)}
        label_array = np.array([l if l is not None else "\0none" for l in labels], dtype=object)
        started = time.perf_counter()

        def keys_for(text: str) -> np.ndarray:
            keys = np.zeros(len(members))
            for iid, score in self.scores(ref, text)[1].items():
                if iid in row_of:
                    keys[row_of[iid]] = score
            return keys

        config = {"extractor": None, "key": "metadata", "label": LABEL, "search": {"ranking": "bm25"},
                  "collection": ref.name}
        if queries is None:
            def rank(rows: np.ndarray, exclude) -> np.ndarray:
                orders = []
                for row in rows:
                    keys = keys_for(texts[members[row].image_id])
                    wrong_first = label_array == label_array[row]  # False sorts first: irrelevant ones win ties
                    orders.append(np.lexsort((np.arange(len(members)), wrong_first, -keys)))
                return np.stack(orders)

            asking = np.array([row_of[iid] for iid in texts], np.int64)
            report = leave_one_out(labels, rank, asking=asking)
            silent = [m.name for m in members if m.label is not None and m.image_id not in texts]
            config.update(protocol="leave-one-out",
                          metadata={"described": len(texts), "members": len(members), "no_text": silent})
        else:
            report, held = self._held_out(ref, members, queries, keys_for, labels)
            config.update(protocol="held-out", queries=held)
        report.seconds = time.perf_counter() - started
        report.config = config
        return report

    def _held_out(self, ref: CollectionRef, members: list[Member], queries, keys_for, labels):
        source = self.evaluator.source(queries)
        if source.ref is not None and source.ref.id == ref.id:
            raise ServiceError(f"the queries are the gallery {ref.name!r} itself: evaluate without held-out "
                               "queries for leave-one-out")
        held = HeldOut(source.name, source.kind)
        offered = self._described_queries(source, held)
        if not any(text for _, _, _, text in offered):
            raise ServiceError(f"the held-out queries from {source.name} have no captions or tags "
                               f"(no {SIDECAR}), so the metadata row is unavailable for them")
        gallery_hashes = {m.sha256 for m in members}
        known = {label for label in labels if label is not None}
        silent, asked, q_labels, q_texts = [], {}, [], []
        for name, digest, label, text in offered:
            if held.refuses(name, digest, label, known, digest in gallery_hashes, asked):
                continue
            if not text:
                silent.append(name)
            else:
                asked[digest] = name
                q_labels.append(label)
                q_texts.append(text)
        if not q_texts:
            raise ServiceError(f"none of the {held.offered} held-out queries can ask by text"
                               + (": " + "; ".join(held.notes()) if held.notes() else ""))
        report = query_gallery(q_labels, labels, lambda rows: np.stack([keys_for(q_texts[r]) for r in rows]))
        held.scored = report.queries
        out = held.to_json()
        out["no_text"] = silent
        if silent:
            out["notes"].append(f"{len(silent)} query image{'s have' if len(silent) != 1 else ' has'} no caption "
                                "or tags and did not ask")
        return report, out

    def _described_queries(self, source, held: HeldOut) -> list[tuple[str, str, str | None, str]]:
        """(name, sha256, label, text) of every offered query; text "" when it has none."""
        if source.kind == "collection":
            qmembers = self.store.members(source.ref.id)
            texts = {m.image_id: document(m.caption, m.tags) for m in self.store.metadata(source.ref.id)}
            held.offered = len(qmembers)
            return [(m.name, m.sha256, m.label, texts.get(m.image_id, "")) for m in qmembers]
        if source.kind == "folder":
            folder = Path(source.name)
            sources, skipped = scan_folder(folder, self.searcher.limits)
            held.unreadable += skipped
            sources = [s for s in sources if s.name != SIDECAR]
            sidecar = (folder / SIDECAR).read_bytes() if (folder / SIDECAR).is_file() else None
            return self._with_text(sources, {s.name: _sha(s.path) for s in sources}, sidecar, "", held)
        with self.evaluator.blobs.lease() as lease:  # a zip: the uploads' caps and refusals
            taken = intake([(Path(source.name), Path(source.name).name, None)], lease.store, self.searcher.limits)
            held.unreadable += taken.skipped
            sidecar = next(iter(taken.sidecars.values()), None)
            return self._with_text(taken.sources, taken.hashes, sidecar, f"{Path(source.name).name}/", held)

    @staticmethod
    def _with_text(sources: list[SourceFile], hashes: dict[str, str], sidecar: bytes | None, prefix: str,
                   held: HeldOut) -> list[tuple[str, str, str | None, str]]:
        held.offered = len(held.unreadable) + len(sources)
        table = {}
        if sidecar is not None:
            try:
                table = {e.key: e for e in parse_csv(sidecar, SIDECAR).entries}
            except MetadataError as exc:
                raise ServiceError(str(exc)) from None
        out = []
        for s in sources:
            key = match_key(table, s.name.removeprefix(prefix))
            text = document(table[key].caption, table[key].tags) if key is not None else ""
            out.append((s.name, hashes[s.name], s.label, text))
        return out


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

"""Indexing: files -> decoded pixels -> vectors -> the store, computing only what is missing.

Why one class for folders, uploads and missing vectors: all three run the
same bounded pipeline (``extract``) and write through the same batch
transaction, so a crash, a dropped collection or an edited file is handled
the same way whichever door the images came in by.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..backbones.adapted import HeadBackbone
from ..config import ExtractorConfig
from ..extract import Prepared, embed_batches, ordered_map, prepare
from ..files import Skipped, SourceFile, match_key, read_labels_csv, scan_folder
from ..metadata import SIDECAR
from ..pooling import l2_normalize
from ..settings import Limits
from ..store import CollectionGone, NewMember, Store
from .models import Models
from .reports import CollectionRef, IndexReport, ServiceError

Progress = Callable[[int, int, str], None]


def _gone(ref: CollectionRef) -> ServiceError:
    return ServiceError(f"the gallery {ref.name!r} was removed while images were being added to it: "
                        "the upload stopped there and added nothing anywhere else")


class Indexer:
    def __init__(self, store: Store, models: Models, limits: Limits, batch_size: int, workers: int):
        self.store, self.models, self.limits = store, models, limits
        self.batch_size, self.workers = batch_size, workers

    def folder(self, folder: Path, ref: CollectionRef, cfg: ExtractorConfig, labels_csv=None,
               progress: Progress | None = None) -> IndexReport:
        """A folder, recursively; labels from first-level subfolders or a CSV."""
        sources, skipped = self.sources(folder, labels_csv)
        report = self.add(sources, ref, cfg, progress)
        report.skipped = skipped + report.skipped
        return report

    def sources(self, folder: Path, labels_csv=None, limits: Limits | None = None) -> tuple[list[SourceFile], list[Skipped]]:
        """The files a folder offers, labelled (the one listing rule for every engine)."""
        sources, skipped = scan_folder(folder, limits or self.limits)
        sources = [s for s in sources if s.name.lower() != SIDECAR]  # captions and tags, read by the caller
        if labels_csv is not None:
            labels = read_labels_csv(labels_csv)
            sources = [SourceFile(s.path, s.name, labels[key] if (key := match_key(labels, s.name)) is not None else s.label)
                       for s in sources]
        return sources, skipped

    def add(self, sources: Sequence[SourceFile], ref: CollectionRef, cfg: ExtractorConfig,
            progress: Progress | None = None) -> IndexReport:
        """Add files to a collection, computing only the embeddings not cached.

        Each batch of files is written in one transaction: a crash loses at
        most the batch in flight, and running again resumes from there. A
        file whose path a member already has, with other content, replaces
        that member (the photo was edited in place).
        """
        cfg = self.models.resolve(cfg)
        started = time.perf_counter()
        store = self.store
        config_id = store.config_id(cfg, self.models.spec(cfg.backbone).dim)
        members = store.member_hashes(ref.id)
        embedded = store.embedded_hashes(config_id)
        report = IndexReport(ref.name, cfg.key, device="")

        busy = {"decode": 0.0, "embed": 0.0, "write": 0.0}  # seconds each stage worked

        def embed(pixels: np.ndarray) -> np.ndarray:
            # The model loads on the first batch that needs it: re-indexing
            # a folder whose vectors are all cached never loads it at all.
            backbone = self.models.backbone(cfg)
            report.device, report.runtime = backbone.device, backbone.runtime
            start = time.perf_counter()
            out = backbone.embed(pixels)
            busy["embed"] += time.perf_counter() - start
            return out

        def work(source: SourceFile) -> Prepared:
            start = time.perf_counter()
            prepared = prepare(source, cfg.input_size, lambda digest: digest not in embedded, self.limits)
            busy["decode"] += time.perf_counter() - start  # += on a float from pool threads: close enough
            return prepared

        def write(rows: list[NewMember], found_at: dict[str, str], size: int) -> tuple[list, int]:
            start = time.perf_counter()
            try:
                stale = store.write_batch(ref.id, config_id, rows, found_at)
            except CollectionGone:
                raise _gone(ref) from None
            busy["write"] += time.perf_counter() - start
            return stale, size

        seen_names: dict[str, str] = {}
        done, total = 0, len(sources)

        def written(result: tuple[list, int]) -> None:
            nonlocal done
            stale, size = result
            report.replaced += [m.name for m in stale]
            done += size
            if progress:
                progress(done, total, f"{len(report.added)} added, {len(report.skipped)} skipped")

        if progress:
            progress(0, total, "indexing")
        stream = ordered_map(work, sources, self.workers, prefetch=2 * self.batch_size)
        # One writer thread: batch N is committed while the model runs batch
        # N+1, in order, one transaction per batch, at most one batch behind.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer") as writer:
            pending: Future | None = None
            for batch, vectors in embed_batches(stream, embed, self.batch_size):
                rows, found_at = self.rows(batch, vectors, members, embedded, seen_names, report)
                if pending is not None:
                    written(pending.result())
                pending = writer.submit(write, rows, found_at, len(batch))
            if pending is not None:
                written(pending.result())
        report.seconds = time.perf_counter() - started
        report.device = report.device or "none (all embeddings cached)"
        report.timings = {f"{stage}_s": round(seconds, 3) for stage, seconds in busy.items()}
        return report

    def rows(self, batch: list[Prepared], vectors: dict[int, np.ndarray], members: dict[str, str],
              embedded: set[str], seen_names: dict[str, str], report: IndexReport
              ) -> tuple[list[NewMember], dict[str, str]]:
        """One batch of prepared files -> the rows to write, the report updated on the way.

        Every engine (in process, or Ray through ``bulk.py``) reports through
        here, so duplicates, unchanged and skipped files read the same."""
        rows: list[NewMember] = []
        found_at: dict[str, str] = {}  # path -> the content read there now
        for i, item in enumerate(batch):
            name, digest = item.source.name, item.sha256
            path = str(Path(item.source.path).resolve())
            if digest is not None:
                found_at[path] = digest
            if item.error is not None:
                report.skipped.append(Skipped(name, item.error))
                continue
            if digest in seen_names:
                report.duplicates.append((name, seen_names[digest]))
                continue
            seen_names[digest] = name
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
            known = self.store.image(digest) if item.pixels is None else None
            width = item.width or (known["width"] if known else 0)
            height = item.height or (known["height"] if known else 0)
            rows.append(NewMember(digest, name, path, item.source.label, width, height, item.nbytes, vector))
        return rows, found_at

    def ensure(self, ref: CollectionRef, cfg: ExtractorConfig, progress: Progress | None = None) -> int:
        """Compute this configuration's vectors for members that lack them.

        Switching a collection to another backbone or pooling, or uploading
        after a backbone was used, reads the members' files again; members
        whose files are gone stay without a vector for it. Returns how many
        vectors were computed.
        """
        cfg = self.models.resolve(cfg)
        config_id = self.store.config_id(cfg, self.models.spec(cfg.backbone).dim)
        missing = self.store.missing_embeddings(ref.id, config_id)
        if not missing:
            return 0
        backbone = self.models.backbone(cfg)
        if isinstance(backbone, HeadBackbone):  # from the base model's vectors: no image is read
            base = self.models.base_config(cfg.backbone)
            self.ensure(ref, base, progress)
            base_id = self.store.config_id(self.models.resolve(base), backbone.base.dim)
            have = self.store.vectors(base_id, [m.image_id for m in missing])
            if have:
                ids = sorted(have)
                self.store.add_embeddings(config_id, dict(zip(ids, backbone.project(np.stack([have[i] for i in ids])))))
            return len(have)
        readable = [m for m in missing if m.path and Path(m.path).is_file()]
        if not readable:
            return 0
        sources = [SourceFile(Path(m.path), m.name, m.label) for m in readable]
        ids = {m.sha256: m.image_id for m in readable}

        def work(source: SourceFile) -> Prepared:
            return prepare(source, backbone.input_size, lambda digest: digest in ids, self.limits)

        done = 0
        if progress:
            progress(0, len(sources), f"embedding with {cfg.label}")
        stream = ordered_map(work, sources, self.workers, prefetch=2 * self.batch_size)
        for batch, vectors in embed_batches(stream, backbone.embed, self.batch_size):
            # a file whose content changed since it was indexed is not this member's picture
            self.store.add_embeddings(config_id, {ids[batch[i].sha256]: l2_normalize(v) for i, v in vectors.items()})
            done += len(vectors)
            if progress:
                progress(done, len(sources), f"embedding with {cfg.label}")
        return done

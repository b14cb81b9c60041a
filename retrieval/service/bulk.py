"""Bulk indexing with Ray: the driver lists and hashes, Ray embeds into shards, the driver writes SQLite.

Why this split: listing and hashing decide what needs a model at all, so
a re-run over a gallery already embedded starts no Ray and loads no model;
the workers never touch SQLite (one writer, on the driver, in batches); and
the shards (``shards.py``) are kept, so vectors a crashed or earlier run
made are read back instead of computed again. Rows go through
``Indexer.rows`` and ``Store.write_batch``, as in process, so a bad image
is skipped and reported, and duplicates and edits are handled, the same way.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import distributed, shards
from ..config import ExtractorConfig
from ..distributed import ENGINES  # noqa: F401  (re-exported for the Studio)
from ..extract import Prepared, ordered_map, prepare
from ..files import SourceFile
from ..store import CollectionGone, NewMember, Store
from .indexing import Indexer, Progress, _gone
from .models import Models
from .reports import CollectionRef, IndexReport, ServiceError

WRITE_BATCH = 512  # rows per SQLite transaction on the driver


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class BulkIndexer:
    def __init__(self, store: Store, models: Models, indexer: Indexer, workers: int):
        self.store, self.models, self.indexer, self.workers = store, models, indexer, workers

    def shards_root(self) -> Path:
        """Shards live beside the database unless ``--shards`` says where (a folder or a URI)."""
        return self.store.path.parent / f"{self.store.path.stem}.shards"

    def sources(self, source: Path, labels_csv=None) -> tuple[list[SourceFile], list, dict[str, str]]:
        """(files, skipped, sha256 a manifest already gives by name) from a folder or a manifest."""
        if source.suffix == ".parquet" and source.is_file():
            try:
                rows = shards.read_manifest(source)
            except ValueError as exc:
                raise ServiceError(str(exc)) from None
            files = [SourceFile(Path(r["path"]), r["name"] or r["path"], r["label"]) for r in rows if r["path"]]
            return files, [], {f.name: r["sha256"] for f, r in zip(files, rows) if r.get("sha256")}
        if not source.is_dir():
            raise ServiceError(f"not a folder or a manifest (.parquet): {source}")
        files, skipped = self.indexer.sources(source, labels_csv)
        return files, skipped, {}

    def index(self, source: Path, ref: CollectionRef, cfg: ExtractorConfig, options: distributed.RayOptions,
              shards_at: str | None = None, labels_csv=None, progress: Progress | None = None) -> IndexReport:
        started = time.perf_counter()
        cfg = self.models.resolve(cfg)
        spec = self.models.spec(cfg.backbone)
        if spec.family == "adapted":
            raise ServiceError(f"{cfg.backbone!r} was trained in this database, which Ray workers cannot read: "
                               "index with its base model on Ray, then search with it here (its vectors are "
                               "computed from the base model's without reading images)")
        config_id = self.store.config_id(cfg, spec.dim)
        files, skipped, given = self.sources(source, labels_csv)
        report = IndexReport(ref.name, cfg.key, device="", engine="ray")
        report.skipped += skipped
        members = self.store.member_hashes(ref.id)
        embedded = self.store.embedded_hashes(config_id)
        seen: dict[str, str] = {}
        if progress:
            progress(0, len(files), "hashing on the driver")

        def look(source: SourceFile) -> Prepared:  # read and hash; no decoding, no model
            if source.name in given:
                try:
                    return Prepared(source, given[source.name], os.stat(source.path).st_size)
                except OSError as exc:
                    return Prepared(source, error=f"cannot read file: {exc.strerror or exc}")
            return prepare(source, cfg.input_size or 0, lambda _: False, self.indexer.limits)

        looked = list(ordered_map(look, files, self.workers, prefetch=256))
        by_name = {p.source.name: p for p in looked}
        todo: dict[str, Prepared] = {}  # one file per content still to embed
        ready = []
        for p in looked:
            if p.error is None and p.sha256 not in embedded and p.sha256 not in todo:
                todo[p.sha256] = p
            elif p.error is not None or p.sha256 in embedded:
                ready.append(p)
        todo_dupes = [p for p in looked if p.error is None and p.sha256 in todo and todo[p.sha256] is not p]
        self._write(ready, {}, ref, config_id, members, embedded, seen, report)

        run: dict = {"planned": len(todo), "from_shards": 0, "embedded": 0}
        root = shards_at or str(self.shards_root())
        if todo and _exists(root):  # vectors an earlier or crashed run left: no model for those
            found = shards.known(root, cfg.key, set(todo))  # a file no model could use is not tried again
            rows = [replace(todo.pop(sha), error=error) for sha, (_, error) in found.items()]
            computed = report.computed
            self._write(rows, {i: found[p.sha256][0] for i, p in enumerate(rows) if p.error is None}, ref,
                        config_id, members, embedded, seen, report)
            report.reused += report.computed - computed  # read back, not computed by a model in this run
            report.computed = computed
            run["from_shards"] = len(rows)
        if todo:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            out = f"{root.rstrip('/')}/{_safe(ref.name)}-{config_id}-{stamp}-{secrets.token_hex(3)}"
            if progress:
                progress(len(ready), len(files), f"embedding {len(todo)} images on Ray")
            items = [{"path": str(p.source.path), "name": p.source.name, "label": p.source.label}
                     for p in todo.values()]
            try:
                run.update(distributed.extract(items, cfg, spec.dim, out, options, self.indexer.limits))
            except RuntimeError as exc:
                raise ServiceError(str(exc)) from None
            run["shards"] = out
            for batch in shards.read(out, cfg.key, batch_rows=WRITE_BATCH):
                prepared, vectors = [], {}
                for row in batch:
                    p = by_name[row.name]
                    prepared.append(Prepared(p.source, row.sha256 or p.sha256, row.nbytes or p.nbytes,
                                             width=row.width, height=row.height, error=row.error))
                    if row.vector is not None:
                        vectors[len(prepared) - 1] = row.vector
                    if row.worker:
                        run.setdefault("workers", set()).add(row.worker)
                        run.setdefault("runtimes", set()).add(row.runtime)
                run["embedded"] += len(vectors)
                self._write(prepared, vectors, ref, config_id, members, embedded, seen, report)
                if progress:
                    progress(min(len(files), len(ready) + run["embedded"]), len(files), "writing to SQLite")
        self._write(todo_dupes, {}, ref, config_id, members, embedded, seen, report)  # reported as duplicates
        if "workers" in run:
            run["workers"], run["runtimes"] = sorted(run["workers"]), sorted(run["runtimes"])
            report.runtime = ", ".join(run["runtimes"])
        report.distributed = run
        report.seconds = time.perf_counter() - started
        report.device = report.device or ("ray workers" if run["embedded"] else "none (all embeddings cached)")
        return report

    def _write(self, prepared: list[Prepared], vectors: dict[int, np.ndarray], ref: CollectionRef, config_id: int,
               members: dict, embedded: set, seen: dict, report: IndexReport) -> None:
        for start in range(0, len(prepared), WRITE_BATCH):
            part = prepared[start:start + WRITE_BATCH]
            part_vectors = {i - start: v for i, v in vectors.items() if start <= i < start + WRITE_BATCH}
            rows, found_at = self.indexer.rows(part, part_vectors, members, embedded, seen, report)
            self._commit(rows, found_at, ref, config_id, report)

    def _commit(self, rows: list[NewMember], found_at: dict, ref: CollectionRef, config_id: int,
                report: IndexReport) -> None:
        try:
            stale = self.store.write_batch(ref.id, config_id, rows, found_at)
        except CollectionGone:
            raise _gone(ref) from None
        report.replaced += [m.name for m in stale]


def _exists(where: str) -> bool:
    return "://" in where or Path(where).exists()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]


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
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import distributed, shards
from ..config import ExtractorConfig
from ..distributed import ENGINES  # noqa: F401  (re-exported for the Studio)
from ..extract import Prepared, ordered_map, prepare
from ..files import SourceFile
from ..store import CollectionGone, Store
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
        """(files, skipped, sha256 a manifest already gives by name) from a folder or a manifest.

        Paths are made absolute here: a Ray worker on another node has
        another working folder (a manifest's relative paths are relative to
        the manifest). A folder is listed without the per-upload file cap.
        """
        if source.suffix == ".parquet" and source.is_file():
            try:
                rows = [r for r in shards.read_manifest(source) if r["path"]]
            except ValueError as exc:
                raise ServiceError(str(exc)) from None
            files = [SourceFile((source.parent / r["path"]).resolve(), r["name"] or r["path"], r["label"])
                     for r in rows]
            return files, [], {f.name: r["sha256"] for f, r in zip(files, rows) if r.get("sha256")}
        if not source.is_dir():
            raise ServiceError(f"not a folder or a manifest (.parquet): {source}")
        files, skipped = self.indexer.sources(source, labels_csv, replace(self.indexer.limits, max_files=sys.maxsize))
        return [replace(f, path=Path(f.path).resolve()) for f in files], skipped, {}

    def index(self, source: Path, ref: CollectionRef, cfg: ExtractorConfig, options: distributed.RayOptions,
              shards_at: str | None = None, labels_csv=None, progress: Progress | None = None) -> IndexReport:
        """List and hash here; write what is embedded already; then what earlier shards hold; then
        embed the rest on Ray and write it from the new shards; duplicates last, as in process."""
        started = time.perf_counter()
        cfg = self.models.resolve(cfg)
        spec = self.models.spec(cfg.backbone)
        if spec.family == "adapted":
            raise ServiceError(f"{cfg.backbone!r} was trained in this database, which Ray workers cannot read: "
                               "index with its base model on Ray, then search with it here (its vectors are "
                               "computed from the base model's without reading images)")
        if spec.family == "file":
            raise ServiceError(f"{cfg.backbone!r} was added to this database from a file, which Ray workers cannot "
                               "read: index it with --engine in-process")
        config_id = self.store.config_id(cfg, spec.dim)
        files, skipped, given = self.sources(source, labels_csv)
        report = IndexReport(ref.name, cfg.key, device="", engine="ray")
        report.skipped += skipped
        state = _State(ref, config_id, self.store.member_hashes(ref.id), self.store.embedded_hashes(config_id), report)
        if progress:
            progress(0, len(files), "hashing on the driver")
        looked = list(ordered_map(lambda f: self._look(f, given, cfg), files, self.workers, prefetch=256))
        todo: dict[str, Prepared] = {}  # one file per content still to embed
        ready, dupes = [], []
        for p in looked:
            if p.error is not None or p.sha256 in state.embedded:
                ready.append(p)
            elif p.sha256 in todo:
                dupes.append(p)
            else:
                todo[p.sha256] = p
        self._write(ready, {}, state)
        run: dict = {"planned": len(todo), "from_shards": 0, "embedded": 0}
        root = shards.folder_for(shards_at or str(self.shards_root()), cfg.key)
        errors: dict[str, str] = {}  # content -> why no model could use it
        if todo and _exists(root):  # vectors (or reasons) an earlier or crashed run left: no model for those
            self._from_shards(root, cfg, todo, errors, run, state)
        if todo:
            if progress:
                progress(len(ready), len(files), f"embedding {len(todo)} images on Ray")
            self._on_ray(root, cfg, spec.dim, todo, options, errors, run, state)
        # a copy of a file no model could read is skipped for the same reason, not added without a vector
        self._write([replace(p, error=errors[p.sha256]) if p.sha256 in errors else p for p in dupes], {}, state)
        if "workers" in run:
            run["workers"], run["runtimes"] = sorted(run["workers"]), sorted(run["runtimes"])
            report.runtime = ", ".join(run["runtimes"])
        report.distributed = run
        report.seconds = time.perf_counter() - started
        report.device = report.device or ("ray workers" if run["embedded"] else "none (all embeddings cached)")
        return report

    def _look(self, source: SourceFile, given: dict[str, str], cfg: ExtractorConfig) -> Prepared:
        """Read and hash (or take a manifest's hash); no decoding, no model."""
        if source.name in given:
            try:
                return Prepared(source, given[source.name], os.stat(source.path).st_size)
            except OSError as exc:
                return Prepared(source, error=f"cannot read file: {exc.strerror or exc}")
        return prepare(source, cfg.input_size or 0, lambda _: False, self.indexer.limits)

    def _from_shards(self, root: str, cfg: ExtractorConfig, todo: dict[str, Prepared], errors: dict[str, str],
                     run: dict, state: _State) -> None:
        try:
            found = shards.known(root, cfg.key, set(todo))
        except ValueError as exc:
            raise ServiceError(str(exc)) from None
        rows = [replace(todo.pop(sha), error=error) for sha, (_, error) in found.items()]
        errors.update((p.sha256, p.error) for p in rows if p.error)
        computed = state.report.computed
        self._write(rows, {i: found[p.sha256][0] for i, p in enumerate(rows) if p.error is None}, state)
        state.report.reused += state.report.computed - computed  # read back, not computed by a model now
        state.report.computed = computed
        run["from_shards"] = len(rows)

    def _on_ray(self, root: str, cfg: ExtractorConfig, dim: int, todo: dict[str, Prepared],
                options: distributed.RayOptions, errors: dict[str, str], run: dict, state: _State) -> None:
        """Embed ``todo`` on Ray into a new shards folder, then write every row that came back.

        A file whose row never comes back (a shards folder that is local to
        each node of a cluster, say) is reported skipped, never lost quietly.
        """
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        out = f"{root}/{_safe(state.ref.name)}-{stamp}-{secrets.token_hex(3)}"
        by_name = {p.source.name: p for p in todo.values()}
        items = [{"path": str(p.source.path), "name": p.source.name, "label": p.source.label} for p in todo.values()]
        try:
            run.update(distributed.extract(items, cfg, dim, out, options, self.indexer.limits))
        except RuntimeError as exc:
            raise ServiceError(str(exc)) from None
        run["shards"] = out
        back: set[str] = set()
        rows = shards.read(out, cfg.key, batch_rows=WRITE_BATCH) if _exists(out) else iter(())
        for batch in rows:
            prepared, vectors = [], {}
            for row in batch:
                p = by_name.get(row.name)
                if p is None or row.name in back:
                    continue
                back.add(row.name)
                prepared.append(Prepared(p.source, row.sha256 or p.sha256, row.nbytes or p.nbytes,
                                         width=row.width, height=row.height, error=row.error))
                if row.vector is not None:
                    vectors[len(prepared) - 1] = row.vector
                elif row.error:
                    errors[row.sha256 or p.sha256] = row.error
                run.setdefault("workers", set()).add(row.worker)
                run.setdefault("runtimes", set()).add(row.runtime)
            run["embedded"] += len(vectors)
            self._write(prepared, vectors, state)
        lost = [p for name, p in by_name.items() if name not in back]
        if lost:
            reason = (f"no row came back from the Ray workers (the shards folder {out} must be storage every "
                      "node and the driver reach: a shared mount or a URI)")
            self._write([replace(p, error=reason) for p in lost], {}, state)
        run["lost"] = len(lost)

    def _write(self, prepared: list[Prepared], vectors: dict[int, np.ndarray], state: _State) -> None:
        """Rows through ``Indexer.rows`` (the in-process rules and report), one transaction per batch."""
        for start in range(0, len(prepared), WRITE_BATCH):
            part = prepared[start:start + WRITE_BATCH]
            part_vectors = {i - start: v for i, v in vectors.items() if start <= i < start + WRITE_BATCH}
            rows, found_at = self.indexer.rows(part, part_vectors, state.members, state.embedded, state.seen,
                                               state.report)
            try:
                stale = self.store.write_batch(state.ref.id, state.config_id, rows, found_at)
            except CollectionGone:
                raise _gone(state.ref) from None
            state.report.replaced += [m.name for m in stale]


@dataclass
class _State:
    """What one bulk run carries from phase to phase (as ``Indexer.add`` keeps it in locals)."""

    ref: CollectionRef
    config_id: int
    members: dict[str, str]  # sha256 -> member name, before this run
    embedded: set[str]  # contents with a vector for this configuration
    report: IndexReport
    seen: dict[str, str] = field(default_factory=dict)  # sha256 -> the first name it was read under


def _exists(where: str) -> bool:
    return "://" in where or Path(where).exists()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]


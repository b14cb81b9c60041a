"""The SQLite embedding store: images, configurations, vectors, collections.

Why SQLite through sqlite-utils: one file holds everything, survives crashes
(WAL, one transaction per batch), and needs no server. Vectors are float32
BLOBs; a collection's vectors for one configuration load into one contiguous
matrix, cached in memory until the collection changes.

Tables:
- ``images``: one row per distinct content (sha256), whatever its file name.
- ``configs``: extractor configurations, keyed by ``ExtractorConfig.key``.
- ``embeddings``: (config, image) -> vector. This is the cache that makes
  re-indexing, or switching back to a model used before, compute nothing.
- ``collections`` and ``members``: named galleries. A label belongs to the
  membership, not the image, because the same photo can mean different
  things in two galleries. ``generation`` counts changes, which is how
  every cache built on a collection knows it is stale.
- ``transforms``: per (collection, config) learned post-processing, such as
  PCA-whitening, stored with the generation it was learned at.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import sqlite_utils

from .config import ExtractorConfig


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says why."""


@dataclass(frozen=True)
class Member:
    image_id: int
    sha256: str
    name: str
    path: str | None
    label: str | None
    width: int
    height: int


@dataclass(frozen=True)
class NewMember:
    """One file of a batch to write: its image row, membership and vector."""

    sha256: str
    name: str
    path: str | None
    label: str | None
    width: int
    height: int
    nbytes: int
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    images: int
    labelled: int
    labels: int
    generation: int


@dataclass(frozen=True)
class Gallery:
    """A collection's vectors for one configuration, row-aligned with members."""

    members: list[Member]
    vectors: np.ndarray  # (N, D) float32, read-only
    generation: int

    @property
    def labels(self) -> list[str | None]:
        return [m.label for m in self.members]

    @property
    def ids(self) -> np.ndarray:
        """Image ids, one per row, ascending (rows are ordered by image id)."""
        return np.fromiter((m.image_id for m in self.members), dtype=np.int64, count=len(self.members))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._lock = threading.RLock()
            self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc.strerror or exc}") from None
        self._galleries: dict[tuple[int, int], Gallery] = {}

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _read(self, sql: str, params: Iterable = ()) -> list[tuple]:
        """Every statement runs under the store's lock, reads included.

        The app serves several requests at once on one connection; without
        the lock a read could see another thread's uncommitted transaction
        (same connection, no isolation), or cache a half-written gallery.
        Reads are milliseconds, so serialising them costs nothing visible.
        """
        with self._lock:
            return self.db.execute(sql, list(params)).fetchall()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _create_schema(self) -> None:
        db = self.db
        with db.atomic():
            db["images"].create(
                {"id": int, "sha256": str, "name": str, "width": int, "height": int, "bytes": int, "added": str},
                pk="id", not_null={"sha256"}, if_not_exists=True,
            )
            db["images"].create_index(["sha256"], unique=True, if_not_exists=True)
            db["configs"].create(
                {"id": int, "key": str, "backbone": str, "weights": str, "input_size": int,
                 "pooling": str, "gem_p": float, "dim": int, "created": str},
                pk="id", not_null={"key"}, if_not_exists=True,
            )
            db["configs"].create_index(["key"], unique=True, if_not_exists=True)
            db["embeddings"].create(
                {"config_id": int, "image_id": int, "dim": int, "vector": bytes},
                pk=("config_id", "image_id"),
                foreign_keys=[("config_id", "configs", "id"), ("image_id", "images", "id")],
                if_not_exists=True,
            )
            db["embeddings"].create_index(["image_id"], if_not_exists=True)
            db["collections"].create(
                {"id": int, "name": str, "created": str, "generation": int, "touched": str},
                pk="id", not_null={"name"}, defaults={"generation": 0}, if_not_exists=True,
            )
            db["collections"].create_index(["name"], unique=True, if_not_exists=True)
            db["members"].create(
                {"collection_id": int, "image_id": int, "name": str, "path": str, "label": str, "added": str},
                pk=("collection_id", "image_id"),
                foreign_keys=[("collection_id", "collections", "id"), ("image_id", "images", "id")],
                if_not_exists=True,
            )
            db["members"].create_index(["image_id"], if_not_exists=True)
            db["transforms"].create(
                {"collection_id": int, "config_id": int, "kind": str, "generation": int, "params": bytes, "created": str},
                pk=("collection_id", "config_id", "kind"),
                foreign_keys=[("collection_id", "collections", "id"), ("config_id", "configs", "id")],
                if_not_exists=True,
            )
            # Models trained here (adapt.py): weights, how they were trained, and their figures.
            db["adapted"].create(
                {"id": int, "name": str, "method": str, "base": str, "collection": str, "input_size": int, "dim": int,
                 "params": bytes, "settings": str, "figures": str, "created": str},
                pk="id", not_null={"name"}, if_not_exists=True,
            )
            db["adapted"].create_index(["name"], unique=True, if_not_exists=True)

    # -- configurations -------------------------------------------------
    def config_id(self, cfg: ExtractorConfig, dim: int) -> int:
        with self._lock:
            row = self.db.execute("SELECT id FROM configs WHERE key = ?", [cfg.key]).fetchone()
            if row:
                return row[0]
            with self.db.atomic():
                return self.db["configs"].insert(
                    {"key": cfg.key, "backbone": cfg.backbone, "weights": cfg.weights, "input_size": cfg.input_size,
                     "pooling": cfg.pooling, "gem_p": cfg.gem_p, "dim": dim, "created": _now()}
                ).last_pk

    def find_config(self, cfg: ExtractorConfig) -> int | None:
        rows = self._read("SELECT id FROM configs WHERE key = ?", [cfg.key])
        return rows[0][0] if rows else None

    # -- collections ----------------------------------------------------
    def collection_id(self, name: str, create: bool = False) -> int | None:
        with self._lock:
            row = self.db.execute("SELECT id FROM collections WHERE name = ?", [name]).fetchone()
            if row:
                return row[0]
            if not create:
                return None
            with self.db.atomic():
                return self.db["collections"].insert(
                    {"name": name, "created": _now(), "generation": 0, "touched": _now()}).last_pk

    def touch(self, collection_id: int) -> None:
        """Record use, so cleanup of idle per-session galleries spares it."""
        with self._lock, self.db.atomic():
            self.db.execute("UPDATE collections SET touched = ? WHERE id = ?", [_now(), collection_id])

    def idle_collections(self, prefix: str, older_than: str) -> list[str]:
        """Names starting with ``prefix`` untouched since ``older_than`` (ISO time)."""
        return [r[0] for r in self._read(
            "SELECT name FROM collections WHERE name LIKE ? ESCAPE '\\' AND COALESCE(touched, created) < ?",
            [prefix.replace("%", "\\%").replace("_", "\\_") + "%", older_than])]

    def copy_collection(self, source: str, target: str) -> int:
        """A new collection with the same members; no image or vector is copied."""
        with self._lock:
            src = self.collection_id(source)
            dst = self.collection_id(target, create=True)
            if src is not None:
                with self.db.atomic():
                    self.db.execute(
                        """INSERT OR IGNORE INTO members (collection_id, image_id, name, path, label, added)
                           SELECT ?, image_id, name, path, label, added FROM members WHERE collection_id = ?
                           ORDER BY rowid""", [dst, src])
                    self._bump([dst])
            return dst

    def generation(self, collection_id: int) -> int:
        rows = self._read("SELECT generation FROM collections WHERE id = ?", [collection_id])
        return rows[0][0] if rows else -1

    def _bump(self, collection_ids: Iterable[int]) -> None:
        for cid in set(collection_ids):
            self.db.execute("UPDATE collections SET generation = generation + 1 WHERE id = ?", [cid])

    def collections(self) -> list[CollectionInfo]:
        rows = self._read(
            """SELECT c.name, COUNT(m.image_id), COUNT(m.label), COUNT(DISTINCT m.label), c.generation
               FROM collections c LEFT JOIN members m ON m.collection_id = c.id
               GROUP BY c.id ORDER BY c.name""")
        return [CollectionInfo(*row) for row in rows]

    def drop_collection(self, name: str) -> bool:
        """Remove a gallery; images no other gallery holds go with it."""
        with self._lock:
            cid = self.collection_id(name)
            if cid is None:
                return False
            with self.db.atomic():
                ids = [r[0] for r in self.db.execute("SELECT image_id FROM members WHERE collection_id = ?", [cid])]
                self.db.execute("DELETE FROM members WHERE collection_id = ?", [cid])
                self.db.execute("DELETE FROM transforms WHERE collection_id = ?", [cid])
                self.db.execute("DELETE FROM collections WHERE id = ?", [cid])
                self._delete_orphans(ids)
            return True

    # -- images and membership -------------------------------------------
    def known_images(self) -> dict[str, int]:
        """sha256 -> image id for every stored image."""
        return dict(self._read("SELECT sha256, id FROM images"))

    def member_hashes(self, collection_id: int) -> dict[str, str]:
        """sha256 -> member name for a collection."""
        return dict(self._read(
            "SELECT i.sha256, m.name FROM members m JOIN images i ON i.id = m.image_id WHERE m.collection_id = ?",
            [collection_id]))

    def embedded_hashes(self, config_id: int) -> set[str]:
        return {r[0] for r in self._read(
            "SELECT i.sha256 FROM embeddings e JOIN images i ON i.id = e.image_id WHERE e.config_id = ?", [config_id])}

    def image(self, sha256: str) -> dict | None:
        rows = self._read("SELECT id, sha256, name, width, height, bytes, added FROM images WHERE sha256 = ?", [sha256])
        return dict(zip(("id", "sha256", "name", "width", "height", "bytes", "added"), rows[0])) if rows else None

    def write_batch(self, collection_id: int, config_id: int | None, batch: list[NewMember]) -> None:
        """One transaction: the batch lands whole or not at all.

        Existing images are reused by hash; an existing membership keeps its
        row but takes the new label and path (re-indexing a reorganised
        folder relabels it without recomputing anything).
        """
        if not batch:
            return
        with self._lock, self.db.atomic():
            now = _now()
            self.db["images"].insert_all(
                ({"sha256": b.sha256, "name": b.name, "width": b.width, "height": b.height, "bytes": b.nbytes, "added": now}
                 for b in batch), ignore=True)
            ids = dict(self.db.execute(
                f"SELECT sha256, id FROM images WHERE sha256 IN ({','.join('?' * len(batch))})",
                [b.sha256 for b in batch]).fetchall())
            self.db["members"].upsert_all(
                ({"collection_id": collection_id, "image_id": ids[b.sha256], "name": b.name, "path": b.path,
                  "label": b.label, "added": now} for b in batch),
                pk=("collection_id", "image_id"))
            if config_id is not None:
                rows = [{"config_id": config_id, "image_id": ids[b.sha256], "dim": int(b.vector.shape[-1]),
                         "vector": np.ascontiguousarray(b.vector, dtype=np.float32).tobytes()}
                        for b in batch if b.vector is not None]
                self.db["embeddings"].insert_all(rows, replace=True)
            self._bump([collection_id])

    def add_embeddings(self, config_id: int, vectors: dict[int, np.ndarray]) -> None:
        """Vectors for images already stored (image id -> vector), one transaction."""
        if not vectors:
            return
        with self._lock, self.db.atomic():
            self.db["embeddings"].insert_all(
                ({"config_id": config_id, "image_id": iid, "dim": int(v.shape[-1]),
                  "vector": np.ascontiguousarray(v, dtype=np.float32).tobytes()} for iid, v in vectors.items()),
                replace=True)
            placeholders = ",".join("?" * len(vectors))
            cids = [r[0] for r in self.db.execute(
                f"SELECT DISTINCT collection_id FROM members WHERE image_id IN ({placeholders})", list(vectors))]
            self._bump(cids)

    def members(self, collection_id: int) -> list[Member]:
        rows = self._read(
            """SELECT i.id, i.sha256, m.name, m.path, m.label, i.width, i.height
               FROM members m JOIN images i ON i.id = m.image_id
               WHERE m.collection_id = ? ORDER BY m.rowid""", [collection_id])
        return [Member(*row) for row in rows]

    def missing_embeddings(self, collection_id: int, config_id: int) -> list[Member]:
        rows = self._read(
            """SELECT i.id, i.sha256, m.name, m.path, m.label, i.width, i.height
               FROM members m JOIN images i ON i.id = m.image_id
               LEFT JOIN embeddings e ON e.image_id = m.image_id AND e.config_id = ?
               WHERE m.collection_id = ? AND e.image_id IS NULL ORDER BY m.rowid""",
            [config_id, collection_id])
        return [Member(*row) for row in rows]

    def remove(self, path_or_hash: str, collection_id: int | None = None) -> list[str]:
        """Remove the member(s) matching a path, a member name or a sha256.

        Returns the names removed. Images no collection holds any more are
        deleted with their embeddings, so removal frees space.
        """
        key = str(path_or_hash)
        absolute = str(Path(key).expanduser().resolve()) if not _looks_like_hash(key) else key
        where = "(m.path = ? OR m.path = ? OR m.name = ? OR i.sha256 = ?)"
        params: list = [key, absolute, key, key.lower()]
        if collection_id is not None:
            where += " AND m.collection_id = ?"
            params.append(collection_id)
        with self._lock, self.db.atomic():
            rows = self.db.execute(
                f"SELECT m.collection_id, m.image_id, m.name FROM members m JOIN images i ON i.id = m.image_id WHERE {where}",
                params).fetchall()
            for cid, iid, _ in rows:
                self.db.execute("DELETE FROM members WHERE collection_id = ? AND image_id = ?", [cid, iid])
            self._bump(r[0] for r in rows)
            self._delete_orphans([r[1] for r in rows])
        return [r[2] for r in rows]

    def _delete_orphans(self, image_ids: list[int]) -> None:
        for iid in set(image_ids):
            if self.db.execute("SELECT 1 FROM members WHERE image_id = ? LIMIT 1", [iid]).fetchone() is None:
                self.db.execute("DELETE FROM embeddings WHERE image_id = ?", [iid])
                self.db.execute("DELETE FROM images WHERE id = ?", [iid])

    def member_paths(self) -> set[str]:
        return {r[0] for r in self._read("SELECT DISTINCT path FROM members WHERE path IS NOT NULL")}

    def has_image(self, sha256: str) -> bool:
        return bool(self._read("SELECT 1 FROM images WHERE sha256 = ?", [sha256]))

    # -- loading for search -----------------------------------------------
    def gallery(self, collection_id: int, config_id: int) -> Gallery:
        """The collection's vectors as one (N, D) float32 matrix, cached.

        Only members that have an embedding for this configuration appear.
        The cache is checked against the collection's generation, one tiny
        query, so a change by any process is seen at the next search.
        """
        with self._lock:
            generation = self.generation(collection_id)
            cached = self._galleries.get((collection_id, config_id))
            if cached is not None and cached.generation == generation:
                return cached
            # Two index-ordered scans (members by their primary key, vectors by
            # theirs), both sorted by image id, instead of one three-way join
            # sorted by insertion: 100k x 1280 loads ~3x faster this way.
            rows = self.db.execute(
                """SELECT i.id, i.sha256, m.name, m.path, m.label, i.width, i.height
                   FROM members m JOIN images i ON i.id = m.image_id
                   WHERE m.collection_id = ? ORDER BY m.image_id""", [collection_id]).fetchall()
            dim_row = self.db.execute("SELECT dim FROM configs WHERE id = ?", [config_id]).fetchone()
            dim = dim_row[0] if dim_row else 0
            # Each BLOB is copied straight into its row of one preallocated
            # matrix: no per-row arrays, no intermediate joined buffer. The
            # file is memory-mapped for the scan only (it skips a read() and a
            # copy per page: 100k x 1280 in ~0.6 s instead of ~1.3 s) and
            # unmapped after, so its pages do not stay in the resident set.
            vectors = np.empty((len(rows), dim), np.float32)
            flat = memoryview(vectors).cast("B")
            row_bytes = dim * 4
            found: list[int] = []
            self.db.execute("PRAGMA mmap_size=17179869184")
            try:
                for image_id, blob in self.db.execute(
                        """SELECT image_id, vector FROM embeddings WHERE config_id = ? AND image_id IN
                           (SELECT image_id FROM members WHERE collection_id = ?) ORDER BY image_id""",
                        [config_id, collection_id]):
                    offset = len(found) * row_bytes
                    flat[offset:offset + row_bytes] = blob
                    found.append(image_id)
            finally:
                self.db.execute("PRAGMA mmap_size=0")
            if len(found) == len(rows):
                members = [Member(*r) for r in rows]
            else:  # some members lack this configuration's vector: keep those that have one
                have = set(found)
                members = [Member(*r) for r in rows if r[0] in have]
                vectors = vectors[: len(found)]
            vectors.flags.writeable = False  # shared by every search; nobody may change it
            gallery = Gallery(members, vectors, generation)
            self._galleries[(collection_id, config_id)] = gallery
            return gallery

    # -- learned transforms -------------------------------------------------
    def save_transform(self, collection_id: int, config_id: int, kind: str, generation: int, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with self._lock, self.db.atomic():
            self.db["transforms"].upsert(
                {"collection_id": collection_id, "config_id": config_id, "kind": kind, "generation": generation,
                 "params": buf.getvalue(), "created": _now()}, pk=("collection_id", "config_id", "kind"))

    def load_transform(self, collection_id: int, config_id: int, kind: str, generation: int) -> dict[str, np.ndarray] | None:
        rows = self._read(
            "SELECT generation, params FROM transforms WHERE collection_id = ? AND config_id = ? AND kind = ?",
            [collection_id, config_id, kind])
        row = rows[0] if rows else None
        if row is None or row[0] != generation:
            return None
        with np.load(io.BytesIO(row[1]), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    # -- adapted models ---------------------------------------------------------
    def save_adapted(self, row: dict) -> None:
        with self._lock, self.db.atomic():
            self.db["adapted"].insert({**row, "created": _now()})

    def adapted(self, name: str | None = None, with_params: bool = False) -> list[dict]:
        cols = "name, method, base, collection, input_size, dim, settings, figures, created"
        if with_params:
            cols += ", params"
        sql = f"SELECT {cols} FROM adapted" + (" WHERE name = ?" if name is not None else "") + " ORDER BY id"
        keys = [c.strip() for c in cols.split(",")]
        return [dict(zip(keys, row)) for row in self._read(sql, [name] if name is not None else [])]

    def delete_adapted(self, name: str, config_key: str) -> bool:
        """Remove a trained model, its configuration and every vector it made."""
        with self._lock, self.db.atomic():
            found = self.db.execute("SELECT 1 FROM adapted WHERE name = ?", [name]).fetchone() is not None
            row = self.db.execute("SELECT id FROM configs WHERE key = ?", [config_key]).fetchone()
            if row is not None:
                self.db.execute("DELETE FROM embeddings WHERE config_id = ?", [row[0]])
                self.db.execute("DELETE FROM transforms WHERE config_id = ?", [row[0]])
                self.db.execute("DELETE FROM configs WHERE id = ?", [row[0]])
            self.db.execute("DELETE FROM adapted WHERE name = ?", [name])
        self._galleries = {k: v for k, v in self._galleries.items() if row is None or k[1] != row[0]}
        return found

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"


def _looks_like_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)

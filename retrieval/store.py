"""The SQLite embedding store: images, configurations, vectors, collections.

Why SQLite through sqlite-utils: one file holds everything, survives crashes
(WAL, one transaction per batch), and needs no server. Vectors are float32
BLOBs; a collection's vectors for one configuration load into one contiguous
matrix (the service caches it, keyed by the collection's generation).

Tables:
- ``images``: one row per distinct content (sha256), whatever its file name.
- ``configs``: extractor configurations, keyed by ``ExtractorConfig.key``.
- ``embeddings``: (config, image) -> vector. This is the cache that makes
  re-indexing, or switching back to a model used before, compute nothing.
- ``collections`` and ``members``: named galleries. A label belongs to the
  membership, not the image, because the same photo can mean different
  things in two galleries. ``generation`` counts changes, which is how
  every cache built on a collection knows it is stale.

Identities are never reused: images, configurations, collections and
trained models use ``AUTOINCREMENT`` keys, so a cache keyed by
(collection id, config id, generation), an approximate index keyed by image
id, or an upload that holds a collection id can never be served, or write
into, something that merely got the same number after a drop.
- ``transforms``: per (collection, config) learned post-processing, such as
  PCA-whitening, stored with the generation it was learned at.
- ``query_vectors``: (config, sha256) -> vector for held-out query images,
  which are no gallery's members: an image row is a member's picture (one
  without members is an orphan and is deleted), so the vectors of images
  that only ever asked are kept by content here, apart from every gallery.
- ``metadata``: (collection, image) -> caption and tags, like a label a
  property of the membership; ``metadata_fts`` is its FTS5 index (BM25),
  kept in step by triggers, and a trigger on ``members`` deletes a
  membership's metadata with it, so no removal path can leave text behind.
- ``user_models``: models registered from the user's own files (``store_models``).
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils

from .config import ExtractorConfig
from .metadata import TOKENIZER
from .store_models import UserModelRows


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says why."""


class CollectionGone(StoreError):
    """The collection an operation writes to was dropped while it ran."""


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
class Metadata:
    """A member's caption and tags (a membership's, like its label)."""

    image_id: int
    sha256: str
    name: str
    caption: str
    tags: tuple[str, ...]


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


class Store(UserModelRows):
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

    # Tables whose integer keys identify something outside the database too
    # (caches, index files, operations in flight): never reused.
    _SCHEMA = {
        "images": """CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL, name TEXT,
                     width INTEGER, height INTEGER, bytes INTEGER, added TEXT)""",
        "configs": """CREATE TABLE configs (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, backbone TEXT,
                      weights TEXT, input_size INTEGER, pooling TEXT, gem_p FLOAT, dim INTEGER, created TEXT)""",
        "collections": """CREATE TABLE collections (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                          created TEXT, generation INTEGER DEFAULT 0, touched TEXT)""",
        # Models trained here (adapt.py): weights, how they were trained, and their figures.
        "adapted": """CREATE TABLE adapted (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, method TEXT,
                      base TEXT, collection TEXT, input_size INTEGER, dim INTEGER, params BLOB, settings TEXT,
                      figures TEXT, created TEXT)""",
        # A gallery served from an outside vector index (Milvus): where, and under which name.
        "vector_indexes": """CREATE TABLE vector_indexes (collection_id INTEGER PRIMARY KEY REFERENCES collections(id),
                             kind TEXT NOT NULL, uri TEXT NOT NULL, name TEXT NOT NULL, created TEXT)""",
    }

    def _create_schema(self) -> None:
        db = self.db
        migrated = self._migrate_to_autoincrement()
        with db.atomic():
            for table, ddl in self._SCHEMA.items():
                if not db[table].exists():
                    db.execute(ddl)
            db["images"].create_index(["sha256"], unique=True, if_not_exists=True)
            db["configs"].create_index(["key"], unique=True, if_not_exists=True)
            db["collections"].create_index(["name"], unique=True, if_not_exists=True)
            db["adapted"].create_index(["name"], unique=True, if_not_exists=True)
            db["embeddings"].create(
                {"config_id": int, "image_id": int, "dim": int, "vector": bytes},
                pk=("config_id", "image_id"),
                foreign_keys=[("config_id", "configs", "id"), ("image_id", "images", "id")],
                if_not_exists=True,
            )
            db["embeddings"].create_index(["image_id"], if_not_exists=True)
            db["members"].create(
                {"collection_id": int, "image_id": int, "name": str, "path": str, "label": str, "added": str},
                pk=("collection_id", "image_id"),
                foreign_keys=[("collection_id", "collections", "id"), ("image_id", "images", "id")],
                if_not_exists=True,
            )
            db["members"].create_index(["image_id"], if_not_exists=True)
            db["members"].create_index(["path"], if_not_exists=True)  # blob references, edited files
            db["transforms"].create(
                {"collection_id": int, "config_id": int, "kind": str, "generation": int, "params": bytes, "created": str},
                pk=("collection_id", "config_id", "kind"),
                foreign_keys=[("collection_id", "collections", "id"), ("config_id", "configs", "id")],
                if_not_exists=True,
            )
            db["query_vectors"].create(
                {"config_id": int, "sha256": str, "dim": int, "vector": bytes, "added": str},
                pk=("config_id", "sha256"), foreign_keys=[("config_id", "configs", "id")], if_not_exists=True,
            )
            self._create_user_models()
        self.migrated = migrated
        self.fts_error = self._create_text_index()

    _TRIGGERS = (
        """CREATE TRIGGER IF NOT EXISTS metadata_fts_insert AFTER INSERT ON metadata BEGIN
           INSERT INTO metadata_fts(rowid, caption, tags) VALUES (new.id, new.caption, new.tags); END""",
        """CREATE TRIGGER IF NOT EXISTS metadata_fts_delete AFTER DELETE ON metadata BEGIN
           DELETE FROM metadata_fts WHERE rowid = old.id; END""",
        """CREATE TRIGGER IF NOT EXISTS metadata_fts_update AFTER UPDATE ON metadata BEGIN
           DELETE FROM metadata_fts WHERE rowid = old.id;
           INSERT INTO metadata_fts(rowid, caption, tags) VALUES (new.id, new.caption, new.tags); END""",
        """CREATE TRIGGER IF NOT EXISTS members_metadata_delete AFTER DELETE ON members BEGIN
           DELETE FROM metadata WHERE collection_id = old.collection_id AND image_id = old.image_id; END""",
    )

    def _create_text_index(self) -> str | None:
        """The metadata table, its FTS5 index and the triggers; returns why text search is unavailable, or None.

        The index is rebuilt from the table when it was made with another
        tokenizer, so changing ``TOKENIZER`` needs no migration by hand. A
        Python whose SQLite lacks FTS5 still opens the store: only text
        search and metadata writes refuse, with this one line.
        """
        db = self.db
        with db.atomic():
            db["metadata"].create({"id": int, "collection_id": int, "image_id": int, "caption": str, "tags": str,
                                   "updated": str}, pk="id", not_null={"collection_id", "image_id"},
                                  if_not_exists=True)
            db["metadata"].create_index(["collection_id", "image_id"], unique=True, if_not_exists=True)
            db["metadata"].create_index(["image_id"], if_not_exists=True)
            row = db.execute("SELECT sql FROM sqlite_master WHERE name = 'metadata_fts'").fetchone()
            try:
                if row is None or f"'{TOKENIZER}'" not in row[0]:
                    if row is not None:
                        db.execute("DROP TABLE metadata_fts")
                    db.execute(f"CREATE VIRTUAL TABLE metadata_fts USING fts5(caption, tags, tokenize='{TOKENIZER}')")
                    db.execute("INSERT INTO metadata_fts(rowid, caption, tags) SELECT id, caption, tags FROM metadata")
            except sqlite3.OperationalError as exc:
                if "fts5" not in str(exc).lower():
                    raise
                return (f"this Python's SQLite ({sqlite3.sqlite_version}) has no FTS5, which search by text needs: "
                        "install pysqlite3-binary")
            for ddl in self._TRIGGERS:
                db.execute(ddl)
        return None

    def _migrate_to_autoincrement(self) -> bool:
        """Rebuild tables made before keys were AUTOINCREMENT (same rows, same ids).

        Plain INTEGER PRIMARY KEYs hand a deleted maximum id to the next row;
        AUTOINCREMENT keeps a high-water mark in ``sqlite_sequence`` that the
        copied rows set to today's maximum. Returns whether anything changed,
        so the caller can drop files keyed by the old ids.
        """
        old = [t for t in self._SCHEMA if self.db[t].exists()
               and "AUTOINCREMENT" not in (self.db[t].schema or "").upper()]
        if not old:
            return False
        self.db.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before it
        try:
            with self.db.atomic():
                for table in old:
                    columns = ", ".join(self.db[table].columns_dict)
                    # SQLite's own recipe: build the new table beside it, copy, drop, rename;
                    # references from other tables name the table, so they follow the rename.
                    ddl = self._SCHEMA[table].replace(f"CREATE TABLE {table} (", f"CREATE TABLE _new_{table} (", 1)
                    self.db.execute(ddl)
                    self.db.execute(f"INSERT INTO _new_{table} ({columns}) SELECT {columns} FROM {table}")
                    self.db.execute(f"DROP TABLE {table}")
                    self.db.execute(f"ALTER TABLE _new_{table} RENAME TO {table}")
        finally:
            self.db.execute("PRAGMA foreign_keys=ON")
        return True

    # -- configurations -------------------------------------------------
    def config_id(self, cfg: ExtractorConfig, dim: int) -> int:
        with self._lock:
            row = self.db.execute("SELECT id FROM configs WHERE key = ?", [cfg.key]).fetchone()
            if row:
                return row[0]
            with self.db.atomic():
                # a file model removed or replaced since the caller resolved it: no row for the old file
                if str(cfg.weights).startswith("sha256:") and not self.user_model_current(cfg.backbone, cfg.weights):
                    raise StoreError(f"the model {cfg.backbone!r} was removed or replaced meanwhile: try again")
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

    def idle_collections(self, prefix: str, older_than: str) -> list[tuple[int, str]]:
        """(id, name) of collections named ``prefix...`` untouched since ``older_than`` (ISO time)."""
        return [tuple(r) for r in self._read(
            "SELECT id, name FROM collections WHERE name LIKE ? ESCAPE '\\' AND COALESCE(touched, created) < ?",
            [prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%", older_than])]

    def copy_collection(self, source_id: int, target: str) -> int | None:
        """A new collection with ``source_id``'s members; no image or vector is copied.

        Returns the new id, or None when ``target`` exists already or the
        source is gone (both checked in the same transaction as the copy).
        """
        with self._lock, self.db.atomic():
            if self.db.execute("SELECT 1 FROM collections WHERE name = ?", [target]).fetchone():
                return None
            if not self.db.execute("SELECT 1 FROM collections WHERE id = ?", [source_id]).fetchone():
                return None
            dst = self.db["collections"].insert(
                {"name": target, "created": _now(), "generation": 0, "touched": _now()}).last_pk
            self.db.execute(
                """INSERT INTO members (collection_id, image_id, name, path, label, added)
                   SELECT ?, image_id, name, path, label, added FROM members WHERE collection_id = ?
                   ORDER BY rowid""", [dst, source_id])
            self.db.execute(
                """INSERT INTO metadata (collection_id, image_id, caption, tags, updated)
                   SELECT ?, image_id, caption, tags, updated FROM metadata WHERE collection_id = ? ORDER BY id""",
                [dst, source_id])
            self._bump([dst])
            return dst

    def generation(self, collection_id: int) -> int:
        rows = self._read("SELECT generation FROM collections WHERE id = ?", [collection_id])
        return rows[0][0] if rows else -1

    def _bump(self, collection_ids: Iterable[int]) -> None:
        """The one way a collection's caches learn they are stale."""
        for cid in set(collection_ids):
            self.db.execute("UPDATE collections SET generation = generation + 1 WHERE id = ?", [cid])

    def _bump_holders(self, image_ids: list[int]) -> None:
        """New vectors for shared images change every collection that holds them."""
        if image_ids:
            self._bump(r[0] for r in self.db.execute(
                f"SELECT DISTINCT collection_id FROM members WHERE image_id IN ({','.join('?' * len(image_ids))})",
                image_ids))

    def collections(self) -> list[CollectionInfo]:
        rows = self._read(
            """SELECT c.name, COUNT(m.image_id), COUNT(m.label), COUNT(DISTINCT m.label), c.generation
               FROM collections c LEFT JOIN members m ON m.collection_id = c.id
               GROUP BY c.id ORDER BY c.name""")
        return [CollectionInfo(*row) for row in rows]

    def drop_collection(self, collection_id: int, idle_before: str | None = None) -> list[Member] | None:
        """Remove a gallery; images no other gallery holds go with it.

        Returns the members it held (their files may now be unreferenced),
        or None when it was gone already, or (with ``idle_before``, an ISO
        time) when it was used since: checked in the same transaction, so
        idle cleanup never drops a gallery that just came back into use.
        """
        with self._lock, self.db.atomic():
            row = self.db.execute("SELECT COALESCE(touched, created) FROM collections WHERE id = ?",
                                  [collection_id]).fetchone()
            if row is None or (idle_before is not None and row[0] >= idle_before):
                return None
            held = self._members_where("m.collection_id = ?", [collection_id])
            self.db.execute("DELETE FROM members WHERE collection_id = ?", [collection_id])
            self.db.execute("DELETE FROM transforms WHERE collection_id = ?", [collection_id])
            self.db.execute("DELETE FROM vector_indexes WHERE collection_id = ?", [collection_id])
            self.db.execute("DELETE FROM collections WHERE id = ?", [collection_id])
            self._delete_orphans([m.image_id for m in held])
            return held

    # -- images and membership -------------------------------------------
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

    def write_batch(self, collection_id: int, config_id: int | None, batch: list[NewMember],
                    seen: dict[str, str] | None = None) -> list[Member]:
        """One transaction: the batch lands whole or not at all.

        Existing images are reused by hash; an existing membership keeps its
        row but takes the new label and path (re-indexing a reorganised
        folder relabels it without recomputing anything). ``seen`` maps each
        path read in this batch to the content found there: a member at one
        of those paths with other content is stale (the file was edited in
        place) and is removed. Returns the stale members removed.

        Raises ``CollectionGone`` if the collection was dropped meanwhile, so
        an upload never writes into a gallery it no longer belongs to.
        """
        if not batch and not seen:
            return []
        with self._lock, self.db.atomic():
            if not self.db.execute("SELECT 1 FROM collections WHERE id = ?", [collection_id]).fetchone():
                raise CollectionGone(f"collection {collection_id} was dropped")
            if config_id is not None and not self.db.execute("SELECT 1 FROM configs WHERE id = ?", [config_id]).fetchone():
                raise StoreError("the model's configuration was deleted meanwhile")
            stale = self._stale_members(collection_id, seen or {})
            now = _now()
            self.db["images"].insert_all(
                ({"sha256": b.sha256, "name": b.name, "width": b.width, "height": b.height, "bytes": b.nbytes, "added": now}
                 for b in batch), ignore=True)
            ids = dict(self.db.execute(
                f"SELECT sha256, id FROM images WHERE sha256 IN ({','.join('?' * len(batch))})",
                [b.sha256 for b in batch]).fetchall()) if batch else {}
            self.db["members"].upsert_all(
                ({"collection_id": collection_id, "image_id": ids[b.sha256], "name": b.name, "path": b.path,
                  "label": b.label, "added": now} for b in batch),
                pk=("collection_id", "image_id"))
            self.db.execute("UPDATE collections SET touched = ? WHERE id = ?", [now, collection_id])
            self._bump([collection_id])
            if config_id is not None:
                rows = [{"config_id": config_id, "image_id": ids[b.sha256], "dim": int(b.vector.shape[-1]),
                         "vector": np.ascontiguousarray(b.vector, dtype=np.float32).tobytes()}
                        for b in batch if b.vector is not None]
                self.db["embeddings"].insert_all(rows, replace=True)
                self._bump_holders([r["image_id"] for r in rows])
            return stale

    def _stale_members(self, collection_id: int, seen: dict[str, str]) -> list[Member]:
        if not seen:
            return []
        found = self._members_where(f"m.collection_id = ? AND m.path IN ({','.join('?' * len(seen))})",
                                    [collection_id, *seen])
        stale = [m for m in found if seen.get(m.path) != m.sha256]
        for m in stale:
            self.db.execute("DELETE FROM members WHERE collection_id = ? AND image_id = ?", [collection_id, m.image_id])
        self._delete_orphans([m.image_id for m in stale])
        return stale

    def add_embeddings(self, config_id: int, vectors: dict[int, np.ndarray]) -> None:
        """Vectors for images already stored (image id -> vector), one transaction.

        Images removed while their vectors were computed are skipped.
        """
        if not vectors:
            return
        with self._lock, self.db.atomic():
            alive = {r[0] for r in self.db.execute(
                f"SELECT id FROM images WHERE id IN ({','.join('?' * len(vectors))})", list(vectors))}
            if not self.db.execute("SELECT 1 FROM configs WHERE id = ?", [config_id]).fetchone():
                return  # the model was deleted meanwhile: nothing to attach the vectors to
            self.db["embeddings"].insert_all(
                ({"config_id": config_id, "image_id": iid, "dim": int(v.shape[-1]),
                  "vector": np.ascontiguousarray(v, dtype=np.float32).tobytes()} for iid, v in vectors.items() if iid in alive),
                replace=True)
            self._bump_holders(sorted(alive))

    def vectors(self, config_id: int, image_ids: list[int]) -> dict[int, np.ndarray]:
        """Stored vectors of some images for one configuration (those that have one)."""
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(image_ids), 500):
            part = image_ids[start:start + 500]
            for iid, blob in self._read(
                    f"SELECT image_id, vector FROM embeddings WHERE config_id = ? AND image_id IN ({','.join('?' * len(part))})",
                    [config_id, *part]):
                out[iid] = np.frombuffer(blob, np.float32)
        return out

    def vectors_by_content(self, config_id: int, hashes: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors by sha256: a member's (any collection) or a held-out query's.

        Whatever door an image came in by, its vector for a configuration is
        computed once: a query that is also some gallery's member, or was
        asked before, costs no model time.
        """
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            part = hashes[start:start + 500]
            marks = ",".join("?" * len(part))
            for sha, blob in self._read(
                    f"""SELECT i.sha256, e.vector FROM images i JOIN embeddings e ON e.image_id = i.id
                        WHERE e.config_id = ? AND i.sha256 IN ({marks})
                        UNION ALL SELECT sha256, vector FROM query_vectors WHERE config_id = ? AND sha256 IN ({marks})""",
                    [config_id, *part, config_id, *part]):
                out.setdefault(sha, np.frombuffer(blob, np.float32))
        return out

    def save_query_vectors(self, config_id: int, vectors: dict[str, np.ndarray]) -> None:
        """Vectors of held-out query images (sha256 -> vector), one transaction; no image row, no member."""
        if not vectors:
            return
        with self._lock, self.db.atomic():
            if not self.db.execute("SELECT 1 FROM configs WHERE id = ?", [config_id]).fetchone():
                return  # the model was deleted meanwhile
            now = _now()
            self.db["query_vectors"].insert_all(
                ({"config_id": config_id, "sha256": sha, "dim": int(v.shape[-1]),
                  "vector": np.ascontiguousarray(v, dtype=np.float32).tobytes(), "added": now}
                 for sha, v in vectors.items()), replace=True)

    def _members_where(self, where: str, params: list, limit: int = -1) -> list[Member]:
        return [Member(*row) for row in self.db.execute(
            f"""SELECT i.id, i.sha256, m.name, m.path, m.label, i.width, i.height
                FROM members m JOIN images i ON i.id = m.image_id WHERE {where} ORDER BY m.rowid LIMIT ?""",
            [*params, limit])]

    def members(self, collection_id: int, limit: int | None = None) -> list[Member]:
        with self._lock:
            return self._members_where("m.collection_id = ?", [collection_id], -1 if limit is None else int(limit))

    def member_by_key(self, collection_id: int, key: str) -> Member | None:
        """The first member (in the order added) whose name, stored path or sha256 is ``key``."""
        with self._lock:
            found = self._members_where("m.collection_id = ? AND (m.name = ? OR m.path = ? OR i.sha256 = ?)",
                                        [collection_id, key, key, key], 1)
        return found[0] if found else None

    def count_members(self, collection_id: int) -> int:
        return self._read("SELECT COUNT(*) FROM members WHERE collection_id = ?", [collection_id])[0][0]

    def missing_embeddings(self, collection_id: int, config_id: int) -> list[Member]:
        rows = self._read(
            """SELECT i.id, i.sha256, m.name, m.path, m.label, i.width, i.height
               FROM members m JOIN images i ON i.id = m.image_id
               LEFT JOIN embeddings e ON e.image_id = m.image_id AND e.config_id = ?
               WHERE m.collection_id = ? AND e.image_id IS NULL ORDER BY m.rowid""",
            [config_id, collection_id])
        return [Member(*row) for row in rows]

    def remove(self, path_or_hash: str, collection_id: int | None = None) -> list[Member]:
        """Remove the member(s) matching a path, a member name or a sha256.

        Returns the members removed. Images no collection holds any more are
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
                f"""SELECT m.collection_id, i.id, i.sha256, m.name, m.path, m.label, i.width, i.height
                    FROM members m JOIN images i ON i.id = m.image_id WHERE {where}""", params).fetchall()
            for cid, iid, *_ in rows:
                self.db.execute("DELETE FROM members WHERE collection_id = ? AND image_id = ?", [cid, iid])
            self._bump(r[0] for r in rows)
            self._delete_orphans([r[1] for r in rows])
        return [Member(*r[1:]) for r in rows]

    def _delete_orphans(self, image_ids: list[int]) -> None:
        for iid in set(image_ids):
            if self.db.execute("SELECT 1 FROM members WHERE image_id = ? LIMIT 1", [iid]).fetchone() is None:
                self.db.execute("DELETE FROM embeddings WHERE image_id = ?", [iid])
                self.db.execute("DELETE FROM images WHERE id = ?", [iid])

    def referenced(self, paths: list[str]) -> set[str]:
        """Which of these file paths some member still points to."""
        found: set[str] = set()
        for start in range(0, len(paths), 500):
            part = paths[start:start + 500]
            found |= {r[0] for r in self._read(
                f"SELECT DISTINCT path FROM members WHERE path IN ({','.join('?' * len(part))})", part)}
        return found

    # -- captions and tags --------------------------------------------------
    def _need_fts(self) -> None:
        if self.fts_error:
            raise StoreError(self.fts_error)

    def set_metadata(self, collection_id: int, values: dict[int, tuple[str, tuple[str, ...]]]) -> int:
        """Captions and tags of members (image id -> (caption, tags)), one transaction.

        An empty caption with no tags deletes the row: an image either has
        text or has none. Image ids that are not members (removed meanwhile)
        are skipped. Returns how many members were written.
        """
        self._need_fts()
        if not values:
            return 0
        with self._lock, self.db.atomic():
            if not self.db.execute("SELECT 1 FROM collections WHERE id = ?", [collection_id]).fetchone():
                raise CollectionGone(f"collection {collection_id} was dropped")
            ids = list(values)
            live = set()
            for start in range(0, len(ids), 500):
                part = ids[start:start + 500]
                live |= {r[0] for r in self.db.execute(
                    f"SELECT image_id FROM members WHERE collection_id = ? AND image_id IN ({','.join('?' * len(part))})",
                    [collection_id, *part])}
            now = _now()
            for iid in ids:
                if iid not in live:
                    continue
                caption, tags = values[iid]
                if not caption and not tags:
                    self.db.execute("DELETE FROM metadata WHERE collection_id = ? AND image_id = ?", [collection_id, iid])
                else:
                    self.db.execute(
                        """INSERT INTO metadata (collection_id, image_id, caption, tags, updated) VALUES (?, ?, ?, ?, ?)
                           ON CONFLICT(collection_id, image_id) DO UPDATE SET caption = excluded.caption,
                           tags = excluded.tags, updated = excluded.updated""",
                        [collection_id, iid, caption, "; ".join(tags), now])
            return len(live)

    def metadata(self, collection_id: int) -> list[Metadata]:
        """The members of a collection that have a caption or tags, in member order."""
        rows = self._read(
            """SELECT i.id, i.sha256, m.name, t.caption, t.tags FROM metadata t
               JOIN members m ON m.collection_id = t.collection_id AND m.image_id = t.image_id
               JOIN images i ON i.id = t.image_id WHERE t.collection_id = ? ORDER BY m.rowid""", [collection_id])
        return [Metadata(iid, sha, name, caption or "", tuple(t for t in (tags or "").split("; ") if t))
                for iid, sha, name, caption, tags in rows]

    def text_scores(self, collection_id: int, expression: str) -> dict[int, float]:
        """image id -> BM25 score (higher is better) of the members whose text matches an FTS5 expression.

        FTS5's ``bm25()`` is lower-is-better, so it is negated. Its term
        statistics cover every collection's metadata in this database.
        """
        self._need_fts()
        try:
            rows = self._read(
                """SELECT t.image_id, -bm25(metadata_fts) FROM metadata_fts JOIN metadata t ON t.id = metadata_fts.rowid
                   WHERE metadata_fts MATCH ? AND t.collection_id = ?""", [expression, collection_id])
        except sqlite3.OperationalError as exc:  # the expression is built safely; say so if it ever is not
            raise StoreError(f"text search failed: {exc}") from None
        return {iid: float(score) for iid, score in rows}

    def metadata_counts(self) -> dict[str, int]:
        """Rows, indexed rows, and rows of live members, for checks that nothing drifted apart."""
        self._need_fts()
        rows, indexed, members, unindexed, stray = self._read(
            """SELECT (SELECT COUNT(*) FROM metadata), (SELECT COUNT(*) FROM metadata_fts),
                      (SELECT COUNT(*) FROM metadata t JOIN members m
                         ON m.collection_id = t.collection_id AND m.image_id = t.image_id),
                      (SELECT COUNT(*) FROM metadata t WHERE NOT EXISTS
                         (SELECT 1 FROM metadata_fts f WHERE f.rowid = t.id)),
                      (SELECT COUNT(*) FROM metadata_fts f WHERE NOT EXISTS
                         (SELECT 1 FROM metadata t WHERE t.id = f.rowid))""")[0]
        return {"rows": rows, "indexed": indexed, "members": members, "unindexed": unindexed, "stray": stray}

    # -- an outside vector index -------------------------------------------
    def set_vector_index(self, collection_id: int, kind: str, uri: str, name: str) -> None:
        with self._lock, self.db.atomic():
            if not self.db.execute("SELECT 1 FROM collections WHERE id = ?", [collection_id]).fetchone():
                raise CollectionGone(f"collection {collection_id} was dropped")
            self.db["vector_indexes"].upsert({"collection_id": collection_id, "kind": kind, "uri": uri, "name": name,
                                              "created": _now()}, pk="collection_id")

    def vector_index(self, collection_id: int) -> dict | None:
        """{kind, uri, name} of the gallery's outside index, or None: searched in process."""
        rows = self._read("SELECT kind, uri, name FROM vector_indexes WHERE collection_id = ?", [collection_id])
        return dict(zip(("kind", "uri", "name"), rows[0])) if rows else None

    def clear_vector_index(self, collection_id: int) -> None:
        with self._lock, self.db.atomic():
            self.db.execute("DELETE FROM vector_indexes WHERE collection_id = ?", [collection_id])

    def embedded_ids(self, collection_id: int, config_id: int) -> np.ndarray:
        """Sorted image ids of the members that have this configuration's vector (no vector is read)."""
        rows = self._read("""SELECT m.image_id FROM members m JOIN embeddings e
                             ON e.image_id = m.image_id AND e.config_id = ?
                             WHERE m.collection_id = ? ORDER BY m.image_id""", [config_id, collection_id])
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def members_by_id(self, collection_id: int, image_ids: list[int]) -> dict[int, Member]:
        """The members among ``image_ids`` (ids no longer members are absent)."""
        out: dict[int, Member] = {}
        with self._lock:
            for start in range(0, len(image_ids), 900):  # SQLite's bound on parameters
                chunk = [int(i) for i in image_ids[start:start + 900]]
                out.update((m.image_id, m) for m in self._members_where(
                    f"m.collection_id = ? AND m.image_id IN ({','.join('?' * len(chunk))})", [collection_id, *chunk]))
        return out

    # -- loading for search -----------------------------------------------
    def gallery(self, collection_id: int, config_id: int) -> Gallery:
        """The collection's vectors as one (N, D) float32 matrix, with the
        generation it was read at (both under one lock: consistent).

        Only members that have an embedding for this configuration appear.
        """
        with self._lock:
            generation = self.generation(collection_id)
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
            if vectors.size == 0:  # no members (or no dimension): nothing to scan
                vectors.flags.writeable = False
                return Gallery([], vectors[:0], generation)
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
            return Gallery(members, vectors, generation)

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
                self.db.execute("DELETE FROM query_vectors WHERE config_id = ?", [row[0]])
                self.db.execute("DELETE FROM transforms WHERE config_id = ?", [row[0]])
                self.db.execute("DELETE FROM configs WHERE id = ?", [row[0]])
            self.db.execute("DELETE FROM adapted WHERE name = ?", [name])
        return found

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"


def _looks_like_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)

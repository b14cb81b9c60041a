"""Galleries and sessions: uploads, forks, removals, drops and idle cleanup.

Why here and nowhere else: these are the operations that change which
images a collection holds, so this is where identities are held (an upload
writes to the collection id it started with), where stored files are
released (only when no member and no upload in flight needs them), and
where a browser tab is given exactly one private gallery however many of
its requests arrive at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..config import ExtractorConfig
from ..settings import Limits
from ..store import Member, Store
from ..uploads import intake
from .blobs import Blobs
from .captions import Captions
from .indexing import Indexer, Progress
from .models import Models
from .reports import CollectionRef, IndexReport, ServiceError, Session

TOUCH_EVERY_S = 60  # a stream of requests is not a stream of write transactions
GONE_NOTE = ("Your previous gallery no longer exists (it was idle for too long, or was reset), "
             "so you now have a fresh copy of the demo gallery.")


class Galleries:
    def __init__(self, store: Store, blobs: Blobs, indexer: Indexer, models: Models, limits: Limits,
                 forget: Callable[[int, dict | None], None], captions: Captions | None = None):
        self.store, self.blobs, self.indexer, self.models, self.limits = store, blobs, indexer, models, limits
        self.captions = captions or Captions(store)  # a zip's metadata.csv is applied as it is uploaded
        self._forget = forget  # the searcher's caches and index files of a dropped collection
        self._touched: dict[int, float] = {}  # collection id -> when use was last written to the database
        self._used: dict[int, float] = {}  # collection id -> when it was last used by this process
        self._owners: dict[str, str] = {}  # browser tab -> its private gallery's name
        self._sessions = threading.Lock()

    # -- identity -----------------------------------------------------------------
    def ref(self, name: str, create: bool = False) -> CollectionRef:
        """The collection an operation will hold; every lookup counts as use."""
        cid = self.store.collection_id(name, create=create)
        if cid is None:
            raise ServiceError(f"no collection named {name!r}")
        ref = CollectionRef(cid, name)
        self.touch(ref)
        return ref

    def touch(self, ref: CollectionRef) -> None:
        """Use is recorded in memory at once and in the database at most once a
        minute; cleanup consults both, so a TTL shorter than that still spares
        a gallery in use."""
        now = time.monotonic()
        self._used[ref.id] = now
        if now - self._touched.get(ref.id, -1e9) >= TOUCH_EVERY_S:
            self.store.touch(ref.id)
            self._touched[ref.id] = now

    def exists(self, name: str) -> bool:
        return self.store.collection_id(name) is not None

    # -- adding -------------------------------------------------------------------
    def upload(self, uploads: Sequence[tuple[Path, str, str | None]], name: str, cfg: ExtractorConfig,
               progress: Progress | None = None, create: bool = True) -> IndexReport:
        """Uploaded images and zips: stored by hash, held until indexed, then indexed.

        Files that turn out not to be images, or duplicates, are deleted
        again when the upload ends, unless another member or upload has them.
        ``create=False`` refuses a collection that does not exist (any more):
        a session's gallery that expired is never re-created under its name.
        """
        ref = self.ref(name, create=create)
        with self.blobs.lease() as lease:
            taken = intake(list(uploads), lease.store, self.limits)
            report = self.indexer.add(taken.sources, ref, cfg, progress)
            report.metadata = self.captions.sidecars(ref, taken)
        report.skipped = taken.skipped + report.skipped
        report.limit = taken.limit_hit
        return report

    def fork(self, source: str, target: str) -> str:
        """Copy-on-write: ``target`` starts with ``source``'s images, no vectors copied."""
        if not self.exists(target):
            self.store.copy_collection(self.ref(source).id, target)
        return target

    # -- removing -----------------------------------------------------------------
    def remove(self, key: str, name: str | None = None) -> list[str]:
        cid = self.ref(name).id if name is not None else None
        removed = self.store.remove(key, cid)
        self._release(removed)
        return [m.name for m in removed]

    def drop(self, name: str) -> bool:
        """A collection, the models trained on it, its caches, index files and unshared files."""
        cid = self.store.collection_id(name)
        return cid is not None and self._drop(cid, name)

    def cleanup(self, prefix: str, max_idle_s: float) -> list[str]:
        """Drop collections named ``prefix...`` idle for longer than ``max_idle_s``."""
        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=max_idle_s)).isoformat(timespec="seconds")
        now = time.monotonic()
        return [name for cid, name in self.store.idle_collections(prefix, cutoff)
                if now - self._used.get(cid, -1e18) > max_idle_s and self._drop(cid, name, cutoff)]

    def _drop(self, cid: int, name: str, idle_before: str | None = None) -> bool:
        outside = self.store.vector_index(cid)  # read before the drop deletes it
        held = self.store.drop_collection(cid, idle_before)
        if held is None:
            return False
        for row in self.models.trained():
            if row["collection"] == name:  # a model trained on a gallery goes with it
                self.models.delete_trained(row["name"])
        self._forget(cid, outside)
        self._touched.pop(cid, None)
        self._used.pop(cid, None)
        with self._sessions:
            for owner in [o for o, n in self._owners.items() if n == name]:
                del self._owners[owner]
        self._release(held)
        return True

    def _release(self, members: list[Member]) -> None:
        self.blobs.discard(m.path for m in members if m.path)

    # -- sessions -----------------------------------------------------------------
    def session(self, owner: str, current: str | None, template: str, prefix: str, writable: bool) -> Session:
        """The gallery a browser tab works on.

        A tab starts on the shared ``template``; its first change forks a
        private copy under a fresh random name. From then on the tab's own
        gallery comes first, for reads and writes, whatever ``current`` the
        request carried: concurrent first requests of a tab, and a read that
        races the tab's first upload, all land in one gallery. A tab whose
        gallery is gone (expired, reset elsewhere) gets a new fork and a
        note, never the old name back. One lock orders all of this.
        """
        with self._sessions:
            mine = self._owners.get(owner)
            if mine is not None and self.exists(mine):
                return Session(mine, None, True)
            if current is not None and self.exists(current):
                if writable:
                    self._owners[owner] = current
                return Session(current, None, True)
            gone = current is not None
            if not writable and not gone:
                return Session(template, None, False)
            source = self.ref(template)
            if self.store.vector_index(source.id) is not None:  # checked on each call: published at any time
                raise ServiceError(f"the gallery {template!r} is served from Milvus and is read-only here: a private "
                                   "copy would be searched in process, with every vector loaded")
            name = f"{prefix}{secrets.token_hex(8)}"
            if self.store.copy_collection(source.id, name) is None:
                raise ServiceError(f"the {template!r} gallery is not available")
            self._owners[owner] = name
            return Session(name, GONE_NOTE if gone else None, True)

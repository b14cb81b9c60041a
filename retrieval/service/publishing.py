"""Galleries served from Milvus: attach one, keep it in sync, search it.

Why a gallery and not a query chooses Milvus: its vectors live in a
service with its own life (a cluster, a Lite server, a file), so where it is
belongs with the gallery, stored beside it (``Store.set_vector_index``).
SQLite stays the record of which images a gallery holds; Milvus only
proposes candidates, which are re-scored exactly here. So Milvus is synced
lazily, in one place: the first search after the gallery's generation
changed makes the Milvus collection hold exactly the gallery's image ids
(ids are never reused, so a set difference is exact), whatever door the
change came in by (index, upload, remove, another process).

A Milvus-served search never loads the gallery's vectors: it reads the
candidates' vectors from Milvus and the hits' names from SQLite. What
needs the whole gallery in memory (DBA, graph re-rankers, centring,
PCA-whitening, Mahalanobis) is refused with a one-line reason; searching
the same gallery with index ``exact`` still offers all of it in process.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import milvus
from ..config import ExtractorConfig, SearchConfig
from ..milvus import MilvusIndex, MilvusUnavailable
from ..ranking import build_ranker
from ..store import CollectionGone, Store
from .indexing import Indexer, Progress
from .models import Models
from .reports import CollectionRef, ServiceError

CANDIDATES = 200  # at least this many candidates, or k x CANDIDATES_PER_RESULT, are re-scored
CANDIDATES_PER_RESULT = 10
SYNC_CHUNK = 5000  # vectors read from SQLite per insert round
EMBED_IN_A_SEARCH = 1000  # a search embeds at most this many members missing a vector; more is a publish's job
TOKEN_ENV = "RETRIEVAL_MILVUS_TOKEN"  # a cluster's credentials: read from the environment, never stored


@dataclass(frozen=True)
class Published:
    """What one ``publish`` or sync did."""

    collection: str
    milvus_collection: str
    where: str
    added: int
    removed: int
    total: int
    from_shards: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


class Publisher:
    def __init__(self, store: Store, models: Models, indexer: Indexer):
        self.store, self.models, self.indexer = store, models, indexer
        # uri -> (client, lock): one call at a time per Milvus (a Lite file needs it; a server does not mind)
        self._clients: dict[str, tuple[object, threading.Lock]] = {}
        self._indexes: dict[tuple[str, str], _Served] = {}  # (uri, Milvus collection) -> opened
        # (collection, config) -> (uri, Milvus collection, generation) Milvus was last made to match: another
        # Studio or process may move the gallery to another Milvus without changing its generation
        self._synced: dict[tuple[int, int], tuple[str, str, int]] = {}
        self._lock = threading.Lock()

    # -- where a gallery is served ------------------------------------------------
    def setting(self, ref: CollectionRef) -> dict | None:
        return self.store.vector_index(ref.id)

    def attach(self, ref: CollectionRef, uri: str) -> dict:
        """Serve ``ref`` from the Milvus at ``uri`` from now on (checked reachable first)."""
        try:
            uri = milvus.normalize_uri(uri)
            self._client(uri)
        except MilvusUnavailable as exc:
            raise ServiceError(str(exc)) from None
        current = self.store.vector_index(ref.id)
        if current is not None and current["uri"] == uri:
            return current
        if current is not None:  # moved: the old copy would be stale and nothing would point at it
            self.forget(ref.id, current)
        name = milvus.base_name(ref.name, secrets.token_hex(4))
        try:
            self.store.set_vector_index(ref.id, "milvus", uri, name)
        except CollectionGone:
            raise ServiceError(f"the gallery {ref.name!r} no longer exists") from None
        with self._lock:
            self._synced = {k: v for k, v in self._synced.items() if k[0] != ref.id}
        return self.store.vector_index(ref.id)

    def detach(self, ref: CollectionRef, drop: bool = False) -> bool:
        """Search ``ref`` in process again; ``drop`` also deletes its Milvus collections."""
        current = self.store.vector_index(ref.id)
        if current is None:
            return False
        if drop:
            self.forget(ref.id, current)
        self.store.clear_vector_index(ref.id)
        with self._lock:
            self._synced = {k: v for k, v in self._synced.items() if k[0] != ref.id}
        return True

    def forget(self, cid: int, setting: dict | None) -> None:
        """A dropped gallery's Milvus collections go too (best effort: an unreachable server keeps them)."""
        with self._lock:
            self._synced = {k: v for k, v in self._synced.items() if k[0] != cid}
        if setting is None:
            return
        with self._lock:
            self._indexes = {k: v for k, v in self._indexes.items() if not k[1].startswith(f"{setting['name']}_k")}
        try:
            client, lock = self._client(setting["uri"])
            with lock:
                for name in client.list_collections():
                    if name.startswith(f"{setting['name']}_k"):
                        client.drop_collection(name)
        except Exception:  # noqa: BLE001 - the gallery is gone from SQLite either way
            pass

    # -- keeping Milvus equal to the gallery ------------------------------------
    def index(self, ref: CollectionRef, cfg: ExtractorConfig, progress: Progress | None = None,
              shards: str | Path | None = None, embed_up_to: int | None = None) -> tuple[_Served, Published]:
        """The gallery's Milvus collection for ``cfg``, synced to its current generation.

        Members without this configuration's vector are embedded first,
        outside any Milvus lock (that is model time, not Milvus time); a
        search passes ``embed_up_to`` so that one request never embeds a
        whole large gallery for a model it was never published with.
        """
        setting = self.store.vector_index(ref.id)
        if setting is None:
            raise ServiceError(f"the gallery {ref.name!r} is not served from Milvus: "
                               f"publish it first (python -m retrieval publish --collection {ref.name} --to URI)")
        cfg = self.models.resolve(cfg)
        dim = self.models.spec(cfg.backbone).dim
        config_id = self.store.config_id(cfg, dim)
        generation = self.store.generation(ref.id)
        if generation < 0:
            raise ServiceError(f"the gallery {ref.name!r} no longer exists")
        uri, name = setting["uri"], milvus.collection_name(setting["name"], config_id)
        served = self._served(uri, name, dim)
        if self._synced.get((ref.id, config_id)) == (uri, name, generation) and shards is None:
            if embed_up_to is not None:  # a search: no count, one Milvus call per query
                return served, Published(ref.name, name, served.where, 0, 0, -1)
            with served.calls("count"):
                return served, Published(ref.name, name, served.where, 0, 0, served.index.count())
        missing = self.store.missing_embeddings(ref.id, config_id) if shards is None else []
        if embed_up_to is not None and len(missing) > embed_up_to:
            raise ServiceError(f"{len(missing):,} images of {ref.name!r} have no vector for {cfg.label} yet: publish "
                               f"the gallery with that model first (python -m retrieval publish --collection "
                               f"{ref.name} --model {cfg.backbone})")
        if missing:
            self.indexer.ensure(ref, cfg, progress)
        started = time.perf_counter()
        generation = self.store.generation(ref.id)
        with served.calls("sync"):
            added, removed, from_shards = self._sync(served.index, ref.id, config_id, cfg, shards)
            total = served.index.count()
        with self._lock:
            self._synced[(ref.id, config_id)] = (uri, name, generation)
        return served, Published(ref.name, name, milvus.describe(uri), added, removed, total, from_shards,
                                 round(time.perf_counter() - started, 3))

    def _sync(self, index: MilvusIndex, cid: int, config_id: int, cfg: ExtractorConfig,
              shards: str | Path | None) -> tuple[int, int, int]:
        wanted = self.store.embedded_ids(cid, config_id)
        have = np.fromiter(index.ids(), dtype=np.int64)
        extra = np.setdiff1d(have, wanted, assume_unique=True)
        missing = np.setdiff1d(wanted, have, assume_unique=True)
        index.remove(extra)
        from_shards = 0
        if shards is not None and len(missing):
            from ..shards import vectors_by_hash

            members = self.store.members_by_id(cid, missing.tolist())
            found = vectors_by_hash(shards, cfg.key, {m.sha256 for m in members.values()})
            have_ids = np.array(sorted(i for i, m in members.items() if m.sha256 in found), np.int64)
            if len(have_ids):
                index.add(have_ids, np.stack([found[members[int(i)].sha256] for i in have_ids]))
            from_shards = len(have_ids)
            missing = np.setdiff1d(missing, have_ids, assume_unique=True)
        for start in range(0, len(missing), SYNC_CHUNK):
            chunk = missing[start:start + SYNC_CHUNK].tolist()
            vectors = self.store.vectors(config_id, chunk)
            ids = np.array([i for i in chunk if i in vectors], np.int64)
            if len(ids):
                index.add(ids, np.stack([vectors[int(i)] for i in ids]))
        return len(missing) + from_shards, len(extra), from_shards

    # -- searching ----------------------------------------------------------------
    def search(self, vector: np.ndarray, ref: CollectionRef, cfg: ExtractorConfig, scfg: SearchConfig,
               progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """(image ids, scores, timings) of the top k: Milvus proposes, the chosen metric decides."""
        refusal = scfg.milvus_refusal()
        if refusal:
            raise ServiceError(refusal)
        served, _ = self.index(ref, cfg, progress, embed_up_to=EMBED_IN_A_SEARCH)
        started = time.perf_counter()
        with served.calls("search"):
            ids, vectors = next(served.index.search(vector[None], max(CANDIDATES, scfg.k * CANDIDATES_PER_RESULT)))
        milvus_ms = (time.perf_counter() - started) * 1000.0
        if not len(ids):  # as the in-process search says it
            if not self.store.members(ref.id, limit=1):
                raise ServiceError(f"the gallery {ref.name!r} has no images yet: add some first")
            raise ServiceError(f"no image of the gallery {ref.name!r} could be read for {cfg.label}")
        order = np.argsort(ids, kind="stable")  # ties go to the lower image id, as in exact search
        ids, vectors = ids[order], vectors[order]
        started = time.perf_counter()
        ranking = build_ranker(vectors, scfg.metric, scfg.rerank, "none").search(vector[None], min(scfg.k, len(ids)))
        rescore_ms = (time.perf_counter() - started) * 1000.0
        return (ids[ranking.indices[0]], ranking.scores[0],
                {"milvus_ms": round(milvus_ms, 3), "rescore_ms": round(rescore_ms, 3), "candidates": float(len(ids))})

    # -- clients ------------------------------------------------------------------
    def close(self) -> None:
        """Let go of every Milvus: a Lite file is held by one process, until its client closes."""
        with self._lock:
            clients, self._clients, self._indexes = self._clients, {}, {}
        for uri, (client, _) in clients.items():
            try:
                client.close()
                if "://" not in uri:  # a Lite file is served by a gRPC server on a thread of this process
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(uri)
            except Exception:  # noqa: BLE001 - closing a dead connection is not the caller's problem
                pass

    def _client(self, uri: str) -> tuple[object, threading.Lock]:
        """(client, the lock its calls take): connected outside ``_lock``, so a dead server stalls no
        other; of two racing connects the first kept wins."""
        with self._lock:
            if uri in self._clients:
                return self._clients[uri]
        client = milvus.connect(uri, os.environ.get(TOKEN_ENV))
        with self._lock:
            return self._clients.setdefault(uri, (client, threading.Lock()))

    def _served(self, uri: str, name: str, dim: int) -> _Served:
        """The opened collection, kept: a search on a synced gallery makes one Milvus call, not five."""
        key = (uri, name)
        with self._lock:
            served = self._indexes.get(key)
        if served is not None:
            return served
        try:
            client, lock = self._client(uri)
            with lock:
                index = MilvusIndex.open(client, name, dim)
        except MilvusUnavailable as exc:
            raise ServiceError(str(exc)) from None
        served = _Served(index, lock, milvus.describe(uri))
        with self._lock:
            return self._indexes.setdefault(key, served)


@dataclass(frozen=True)
class _Served:
    """An opened Milvus collection and the lock its client's calls take."""

    index: MilvusIndex
    lock: threading.Lock
    where: str

    @contextmanager
    def calls(self, what: str):
        """Milvus calls under the client's lock; a failure becomes one line naming the server."""
        try:
            with self.lock:
                yield
        except (MilvusUnavailable, ServiceError):
            raise
        except Exception as exc:  # noqa: BLE001 - a server failing mid-way: one line, nothing half-believed
            raise ServiceError(f"{self.where} failed during {what}: {milvus.first_line(exc)}") from None

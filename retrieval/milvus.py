"""A Milvus collection as a gallery's candidate index, for galleries one machine cannot hold.

Why Milvus, and why only as a proposer: Milvus serves vectors from many
nodes with online inserts and deletes, and one client API covers a Lite
file, a Lite gRPC server and a Standalone or Distributed cluster. It has
the role faiss IVF has in process (``ann.py``): it holds the raw
L2-normalised descriptors keyed by image id and proposes candidates by
inner product; the caller re-scores them exactly with the chosen metric.
Image ids are never reused by the store, so an id Milvus holds is always
the picture it was published from, and syncing is a set difference.

``pymilvus`` (and ``milvus-lite`` for file URIs) come with the ``scale``
extra and are imported only here, when a gallery asks for Milvus.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INSTALL = "pip install -r requirements-scale.txt (or pip install '.[scale]')"
INSERT_BATCH = 2000  # rows per insert: 2000 x 1280 float32 is 10 MB, well under gRPC's 64 MB message cap
MAX_LIMIT = 16_384  # Milvus' largest top-k


class MilvusUnavailable(RuntimeError):
    """Milvus cannot be used: not installed, or the server cannot be reached. One line, for the user."""


def normalize_uri(uri: str) -> str:
    """A Lite file as an absolute path (Lite wants a ``.db`` name); server URIs unchanged."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        return uri
    path = Path(uri).expanduser().resolve()
    if path.suffix != ".db":
        raise MilvusUnavailable(f"a Milvus Lite file must end in .db: {uri}")
    return str(path)


def describe(uri: str) -> str:
    """What kind of Milvus a URI names, for status lines and README figures."""
    if uri.startswith(("http://", "https://", "tcp://", "grpc://")):
        host = uri.split("://", 1)[1].split("/")[0]
        local = host.split(":")[0] in ("127.0.0.1", "localhost", "::1", "[::1]")
        return f"Milvus server at {host}" + (" (local)" if local else "")
    return f"Milvus Lite file {uri}"


def collection_name(base: str, config_id: int) -> str:
    """One Milvus collection per gallery and configuration (its own dimension)."""
    return f"{base}_k{config_id}"


def base_name(gallery: str, token: str) -> str:
    """A Milvus-legal name (letters, digits, underscores) that no other database's gallery shares."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", gallery)[:120]
    return f"rs_{safe}_{token}"


def connect(uri: str, token: str | None = None, timeout: float = 10.0):
    """A ``MilvusClient``, or ``MilvusUnavailable`` saying what to do: never a hang, never a traceback."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise MilvusUnavailable(f"Milvus support is not installed: {INSTALL}") from None
    # pymilvus logs every failure with a traceback before raising it; we turn it into one line instead
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    uri = normalize_uri(uri)
    server = "://" in uri
    if not server:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(3 if server else 1):
        try:
            return MilvusClient(uri=uri, token=token or "", timeout=timeout)
        except Exception as exc:  # pymilvus raises its own types, and grpc's or OSError underneath
            # A server may have just closed an idle shared connection (a Lite server sends GOAWAY on
            # pymilvus' keep-alive pings); the next attempt opens a new one. Twice, then say why.
            if attempt == (2 if server else 0):
                raise MilvusUnavailable(f"cannot reach {describe(uri)}: {first_line(exc)}") from None
            time.sleep(0.5)


def first_line(exc: BaseException) -> str:
    """An exception as one line for the user (its type when it has no message)."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@dataclass
class MilvusIndex:
    """One gallery's vectors for one configuration in one Milvus collection."""

    client: object  # pymilvus.MilvusClient
    name: str
    dim: int

    @classmethod
    def open(cls, client, name: str, dim: int, create: bool = True) -> "MilvusIndex":
        """The collection ``name``, created (inner product, strong consistency) when missing."""
        try:
            if not client.has_collection(name):
                if not create:
                    raise MilvusUnavailable(f"no Milvus collection {name!r}: publish the gallery first")
                from pymilvus import DataType

                schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("id", DataType.INT64, is_primary=True)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
                params = client.prepare_index_params()
                # AUTOINDEX: the server picks its index for the deployment (on Lite an HNSW per
                # segment, built in the background after a flush; a cluster chooses its own);
                # we re-score candidates exactly anyway.
                params.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="IP")
                client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
            else:
                have = _dimension(client.describe_collection(name))
                if have and have != dim:
                    raise MilvusUnavailable(f"Milvus collection {name!r} holds {have}-d vectors, not {dim}-d")
                client.load_collection(name)  # another process may have left it released; loading is idempotent
        except MilvusUnavailable:
            raise
        except Exception as exc:
            raise MilvusUnavailable(f"Milvus refused collection {name!r}: {first_line(exc)}") from None
        return cls(client, name, dim)

    def ids(self) -> set[int]:
        """Every image id the collection holds (an O(N) scan: used to sync, never per query)."""
        found: set[int] = set()
        iterator = self.client.query_iterator(self.name, batch_size=10_000, output_fields=["id"])
        try:
            while batch := iterator.next():
                found.update(int(row["id"]) for row in batch)
        finally:
            iterator.close()
        return found

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32)
        for start in range(0, len(ids), INSERT_BATCH):
            stop = start + INSERT_BATCH
            self.client.upsert(self.name, [{"id": int(i), "vector": v.tolist()}
                                           for i, v in zip(ids[start:stop], vectors[start:stop])])
        if len(ids):
            # Sealed segments get indexed; unflushed rows are searched raw (on Lite, 3-7 s a query
            # with ~25k of them pending: docs/milvus_scale.md), so a sync ends with a flush.
            self.client.flush(self.name)

    def remove(self, ids) -> None:
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 10_000):
            self.client.delete(self.name, ids=ids[start:start + 10_000])

    def count(self) -> int:
        """Rows now (a strong count(*): a cluster's row statistics include deleted rows until compaction)."""
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def search(self, queries: np.ndarray, limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per query: (candidate image ids, their stored vectors), best inner product first."""
        limit = max(1, min(int(limit), MAX_LIMIT))
        found = self.client.search(self.name, data=np.asarray(queries, np.float32).tolist(), limit=limit,
                                   output_fields=["vector"], search_params={"metric_type": "IP"})
        for hits in found:
            ids = np.fromiter((int(h["id"]) for h in hits), dtype=np.int64, count=len(hits))
            vectors = np.array([h["entity"]["vector"] for h in hits], np.float32).reshape(len(hits), self.dim)
            yield ids, vectors

    def drop(self) -> None:
        if self.client.has_collection(self.name):
            self.client.drop_collection(self.name)


def _dimension(description: dict) -> int:
    for field in description.get("fields", []):
        params = field.get("params") or {}
        if "dim" in params:
            return int(params["dim"])
    return 0

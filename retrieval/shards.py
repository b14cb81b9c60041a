"""Parquet shards: what distributed extraction produces, and what any index is rebuilt from.

Why shards are the source of truth for a distributed run: many workers on
many nodes write them in parallel, one file each, with no shared writer;
the SQLite store (one writer) and a Milvus collection are then filled from
them, and either can be rebuilt from them without running a model again.
A row is one file: its content hash, name, label, size, the configuration
key that made the vector, the vector (float32, null when the file could not
be used) and why not (``error``), and which worker and runtime made it.

``pyarrow`` comes with the ``scale`` extra (``ray[data]`` needs it) and is
imported only here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .milvus import first_line  # one line for the user, whatever failed

COLUMNS = ("sha256", "name", "label", "width", "height", "nbytes", "config_key", "vector", "error", "worker",
           "runtime")
MANIFEST_COLUMNS = ("path", "name", "label", "sha256")  # only ``path`` is required


@dataclass(frozen=True)
class ShardRow:
    sha256: str | None
    name: str
    label: str | None
    width: int
    height: int
    nbytes: int
    config_key: str
    vector: np.ndarray | None
    error: str | None
    worker: str  # node:pid of the actor that made it
    runtime: str  # what ran the model there ("OpenVINO bf16", "Keras f32", ...)


def _pa():
    try:
        import pyarrow
    except ImportError:
        from .milvus import INSTALL

        raise RuntimeError(f"Parquet shards need pyarrow: {INSTALL}") from None
    return pyarrow


def schema(dim: int):
    pa = _pa()
    return pa.schema([
        ("sha256", pa.string()), ("name", pa.string()), ("label", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("nbytes", pa.int64()),
        ("config_key", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
        ("error", pa.string()), ("worker", pa.string()), ("runtime", pa.string()),
    ])


def table(rows: list[ShardRow], dim: int):
    """Rows -> one Arrow table with the shard schema (vectors as fixed-size float32 lists)."""
    pa = _pa()
    flat = np.zeros((len(rows), dim), np.float32)
    valid = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        if r.vector is not None:
            flat[i], valid[i] = r.vector, True
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), dim, mask=pa.array(~valid))
    columns = {name: [getattr(r, name) for r in rows] for name in COLUMNS if name != "vector"}
    return pa.table({**{k: pa.array(v, schema(dim).field(k).type) for k, v in columns.items()}, "vector": vectors},
                    schema=schema(dim))


def folder_for(root: str, config_key: str) -> str:
    """One folder per configuration under a shards root: its vectors have their own length, and
    Parquet datasets want one schema (a model name to read, a digest so keys never collide)."""
    backbone = "".join(c if c.isalnum() or c in "-_" else "_" for c in config_key.split("|")[0])[:60]
    return f"{str(root).rstrip('/')}/{backbone}-{hashlib.sha256(config_key.encode()).hexdigest()[:12]}"


def _exists(where: str) -> bool:
    return "://" in where or Path(where).exists()


def _dataset(where: str | Path, config_key: str | None):
    """A folder, a file or a URI; a shards root is narrowed to the configuration's own folder."""
    import pyarrow.dataset as ds

    where = str(where)
    if config_key is not None and _exists(folder_for(where, config_key)):
        where = folder_for(where, config_key)
    if not _exists(where):
        raise FileNotFoundError(f"no shards at {where}")
    try:
        return ds.dataset(where, format="parquet")
    except (OSError, ValueError) as exc:  # pyarrow's own errors derive from these
        raise ValueError(f"cannot read shards at {where}: {first_line(exc)}") from None


def read(where: str | Path, config_key: str | None = None, columns: tuple[str, ...] = COLUMNS,
         batch_rows: int = 4096, hashes: set[str] | None = None) -> Iterator[list[ShardRow]]:
    """Shard rows in batches, optionally one configuration's and some contents' only.

    Columns left out of ``columns`` read as empty (``vector`` as None):
    looking contents up reads hashes, not 5 KB vectors.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = _dataset(where, config_key)
    if not dataset.files:  # a run that failed before writing left an empty folder
        return
    flt = ds.field("config_key") == config_key if config_key is not None else None
    if hashes is not None:
        wanted = ds.field("sha256").isin(pa.array(sorted(hashes), pa.string()))
        flt = wanted if flt is None else flt & wanted
    names = [c for c in COLUMNS if c in columns]
    for batch in dataset.to_batches(columns=names, filter=flt, batch_size=batch_rows):
        data = batch.to_pydict()
        vectors = _vectors(batch.column(names.index("vector"))) if "vector" in names else [None] * batch.num_rows
        yield [_row(data, i, vectors[i]) for i in range(batch.num_rows)]


def _row(data: dict, i: int, vector: np.ndarray | None) -> ShardRow:
    """Row ``i`` of a batch read as columns; a column not read takes its empty value."""
    def get(name: str, default=None):
        value = data[name][i] if name in data else None
        return default if value is None else value

    return ShardRow(get("sha256"), get("name", ""), get("label"), get("width", 0), get("height", 0), get("nbytes", 0),
                    get("config_key", ""), vector, get("error"), get("worker", ""), get("runtime", ""))


def _vectors(column) -> list[np.ndarray | None]:
    """A fixed-size-list column -> one array per row, None where the row has no vector.

    ``flatten()`` drops null lists, so the validity says where each row's values begin.
    """
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    at = np.cumsum(valid) - 1
    return [flat[at[i] * dim:(at[i] + 1) * dim].copy() if valid[i] else None for i in range(len(valid))]


def vectors_by_hash(where: str | Path, config_key: str, hashes: set[str]) -> dict[str, np.ndarray]:
    """The shards' vectors for some contents."""
    return {sha: v for sha, (v, _) in known(where, config_key, hashes).items() if v is not None}


def known(where: str | Path, config_key: str, hashes: set[str]) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """What the shards know of some contents: (vector, None), or (None, why it could not be used).

    A vector wins over an error for the same content (a later run may have
    read a file an earlier one could not). Hashes are looked up first and
    vectors read only for the contents found.
    """
    if not hashes:
        return {}
    found: dict[str, tuple[np.ndarray | None, str | None]] = {}
    for rows in read(where, config_key, ("sha256", "config_key", "vector", "error"), hashes=hashes):
        for r in rows:
            if r.vector is not None or r.sha256 not in found:
                found[r.sha256] = (r.vector, None if r.vector is not None else r.error)
    return found


def read_manifest(path: str | Path) -> list[dict]:
    """A manifest (Parquet, a ``path`` column; optional ``name``, ``label``, ``sha256``) -> rows.

    A listing made once on a shared file system for a gallery too big to walk
    from the driver; a ``sha256`` column saves the driver reading every file
    to skip content already embedded.
    """
    pa = _pa()
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(str(path))
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"cannot read the manifest {path}: {first_line(exc)}") from None
    if "path" not in data.column_names:
        raise ValueError(f"the manifest {path} has no 'path' column (it has: {', '.join(data.column_names)})")
    cols = {c: data.column(c).to_pylist() for c in MANIFEST_COLUMNS if c in data.column_names}
    return [{c: cols[c][i] if c in cols else None for c in MANIFEST_COLUMNS} for i in range(data.num_rows)]

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

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _dataset(where: str | Path):
    import pyarrow.dataset as ds

    where = str(where)
    if "://" not in where and not Path(where).exists():
        raise FileNotFoundError(f"no shards at {where}")
    return ds.dataset(where, format="parquet")


def read(where: str | Path, config_key: str | None = None, columns: tuple[str, ...] = COLUMNS,
         batch_rows: int = 4096) -> Iterator[list[ShardRow]]:
    """Shard rows in batches, optionally only one configuration's; a folder, a file or a URI."""
    import pyarrow.dataset as ds

    dataset = _dataset(where)
    flt = ds.field("config_key") == config_key if config_key is not None else None
    for batch in dataset.to_batches(columns=list(COLUMNS), filter=flt, batch_size=batch_rows):
        data = batch.to_pydict()
        vec = batch.column(COLUMNS.index("vector"))
        dim = vec.type.list_size
        flat = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        # flatten() drops null lists, so walk the validity to place the rows that have one
        valid = np.asarray(vec.is_valid().to_numpy(zero_copy_only=False), bool)
        at = np.cumsum(valid) - 1
        out = []
        for i in range(batch.num_rows):
            vector = flat[at[i] * dim:(at[i] + 1) * dim].copy() if valid[i] else None
            out.append(ShardRow(data["sha256"][i], data["name"][i], data["label"][i], data["width"][i] or 0,
                                data["height"][i] or 0, data["nbytes"][i] or 0, data["config_key"][i], vector,
                                data["error"][i], data["worker"][i] or "", data["runtime"][i] or ""))
        yield out


def vectors_by_hash(where: str | Path, config_key: str, hashes: set[str]) -> dict[str, np.ndarray]:
    """The shards' vectors for some contents."""
    return {sha: v for sha, (v, _) in known(where, config_key, hashes).items() if v is not None}


def known(where: str | Path, config_key: str, hashes: set[str]) -> dict[str, tuple[np.ndarray | None, str | None]]:
    """What the shards know of some contents: (vector, None), or (None, why it could not be used).

    A vector wins over an error for the same content (a later run may have
    read a file an earlier one could not).
    """
    found: dict[str, tuple[np.ndarray | None, str | None]] = {}
    for rows in read(where, config_key):
        for r in rows:
            if r.sha256 in hashes and (r.vector is not None or r.sha256 not in found):
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
        raise ValueError(f"cannot read the manifest {path}: {str(exc).splitlines()[0]}") from None
    if "path" not in data.column_names:
        raise ValueError(f"the manifest {path} has no 'path' column (it has: {', '.join(data.column_names)})")
    cols = {c: data.column(c).to_pylist() for c in MANIFEST_COLUMNS if c in data.column_names}
    return [{c: cols[c][i] if c in cols else None for c in MANIFEST_COLUMNS} for i in range(data.num_rows)]

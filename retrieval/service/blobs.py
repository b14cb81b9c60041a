"""Uploaded files, stored by content hash, and who may still need them.

Why pins: an upload stores its files first and makes them members later,
batch by batch. Between the two, a file belongs to nobody in the database,
and a sweep that went by the database alone would delete it under the
upload (another session's Remove once did exactly that). So every upload
holds a lease on the files it stored, and a file is deleted only when no
member references it *and* no lease holds it. Both are checked under one
lock, and a lease is released only after its upload committed, so the two
checks cannot miss each other.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..uploads import store_blob


class Lease:
    """The files one upload stored; given back when it ends."""

    def __init__(self, blobs: Blobs):
        self._blobs = blobs
        self.paths: list[Path] = []

    def store(self, data: bytes, name: str) -> Path:
        return self._blobs._store(self, data, name)


class Blobs:
    def __init__(self, root: Path, referenced: Callable[[list[str]], set[str]]):
        self.root = Path(root).resolve()  # members store resolved paths: compare like with like
        self._referenced = referenced
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        lease = Lease(self)
        try:
            yield lease
        finally:
            with self._lock:
                for path in lease.paths:
                    self._pins[str(path)] -= 1
                    if self._pins[str(path)] <= 0:
                        del self._pins[str(path)]
            self.discard(lease.paths)  # refused, duplicate or no-longer-wanted files

    def _store(self, lease: Lease, data: bytes, name: str) -> Path:
        from ..files import sha256
        from ..uploads import blob_path

        path = blob_path(self.root, sha256(data), name)
        with self._lock:  # pinned before it exists: no sweep can see it unpinned
            self._pins[str(path)] += 1
        lease.paths.append(path)
        return store_blob(self.root, data, name)

    def discard(self, paths: Iterable[str | Path]) -> None:
        """Delete those of ``paths`` that are blobs nobody references or holds."""
        resolved = (Path(p).resolve() for p in paths if p)
        candidates = sorted({str(p) for p in resolved if p.is_relative_to(self.root)})
        if not candidates:
            return
        with self._lock:
            free = [p for p in candidates if not self._pins.get(p)]
            kept = self._referenced(free) if free else set()
            for p in free:
                if p not in kept:
                    Path(p).unlink(missing_ok=True)

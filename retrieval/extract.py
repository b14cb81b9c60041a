"""Batched extraction: files -> (read, hash, decode in threads) -> model batches.

Why threads and not ``tf.data``: Pillow releases the GIL while it decodes
and resizes, and so does the model while it runs, so a small thread pool
keeps the next batch ready while the current one is in the network. This
works on every Keras backend, not only TensorFlow.

The pipeline is ordered and bounded: at most ``prefetch`` files are in
flight, so memory stays flat however large the folder.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from .decode import DecodeError, decode
from .files import SourceFile, sha256
from .settings import Limits

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(2, min(8, (os.cpu_count() or 2)))


@dataclass(frozen=True)
class Prepared:
    """One file after reading, hashing and (when needed) decoding."""

    source: SourceFile
    sha256: str | None = None
    nbytes: int = 0
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    error: str | None = None


def prepare(source: SourceFile, input_size: int, needs_pixels: Callable[[str], bool], limits: Limits) -> Prepared:
    """Read once, hash, and decode only if the vector is not already stored.

    Decoding is skipped for content whose embedding is cached, which is why
    re-indexing a folder costs little more than reading it.
    """
    try:
        data = Path(source.path).read_bytes()
    except OSError as exc:
        return Prepared(source, error=f"cannot read file: {exc.strerror or exc}")
    digest = sha256(data)
    if not needs_pixels(digest):
        return Prepared(source, digest, len(data))
    try:
        decoded = decode(data, input_size, limits)
    except DecodeError as exc:
        return Prepared(source, digest, len(data), error=str(exc))
    return Prepared(source, digest, len(data), decoded.pixels, decoded.width, decoded.height)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, prefetch: int) -> Iterator[R]:
    """``map`` on a thread pool, in input order, with a bounded look-ahead."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append(pool.submit(fn, item))
            if len(pending) >= prefetch:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(iterator, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_batches(
    prepared: Iterable[Prepared],
    embed: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
) -> Iterator[tuple[list[Prepared], dict[int, np.ndarray]]]:
    """Group prepared files into batches and run the model on those with pixels.

    Yields each batch with its vectors keyed by position in the batch, so the
    caller writes every file of the batch (cached, skipped or new) together.
    """
    for batch in chunked(prepared, batch_size):
        with_pixels = [i for i, p in enumerate(batch) if p.pixels is not None]
        vectors: dict[int, np.ndarray] = {}
        if with_pixels:
            out = embed(np.stack([batch[i].pixels for i in with_pixels]))
            vectors = dict(zip(with_pixels, out))
        yield batch, vectors

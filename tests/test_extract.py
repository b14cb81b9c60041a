import threading
import time

import numpy as np

from retrieval.extract import chunked, embed_batches, ordered_map, prepare
from retrieval.files import SourceFile
from retrieval.settings import Limits


def test_ordered_map_keeps_order_and_bounds_look_ahead():
    started, lock = [], threading.Lock()

    def slow(i):
        with lock:
            started.append(i)
        time.sleep(0.01 * (5 - i % 5))
        return i * i

    out = []
    for value in ordered_map(slow, range(40), workers=4, prefetch=6):
        out.append(value)
        with lock:
            assert len(started) <= len(out) + 6  # never more than prefetch ahead
    assert out == [i * i for i in range(40)]


def test_prepare_reports_errors_and_skips_cached(tmp_path, photo_folder):
    good = SourceFile(photo_folder / "cats" / "chelsea.jpg", "cats/chelsea.jpg", "cats")
    bad = SourceFile(photo_folder / "space" / "notes.jpg", "space/notes.jpg", "space")
    missing = SourceFile(tmp_path / "gone.jpg", "gone.jpg", None)
    p = prepare(good, 64, lambda _: True, Limits())
    assert p.pixels.shape == (64, 64, 3) and p.width == 451 and p.error is None
    cached = prepare(good, 64, lambda _: False, Limits())
    assert cached.pixels is None and cached.sha256 == p.sha256
    assert "not an image" in prepare(bad, 64, lambda _: True, Limits()).error
    assert "cannot read file" in prepare(missing, 64, lambda _: True, Limits()).error


def test_embed_batches_runs_model_only_on_pixels(photo_folder):
    good = SourceFile(photo_folder / "cats" / "chelsea.jpg", "c.jpg", None)
    items = [prepare(good, 8, lambda _: i % 2 == 0, Limits()) for i in range(5)]
    calls = []

    def embed(x):
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, :3].astype(np.float32)

    batches = list(embed_batches(items, embed, batch_size=2))
    assert [len(b) for b, _ in batches] == [2, 2, 1]
    assert calls == [1, 1, 1] and sorted(batches[0][1]) == [0]
    assert list(chunked(range(5), 2)) == [[0, 1], [2, 3], [4]]

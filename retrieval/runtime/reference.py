"""The photos a conversion is checked on: the built-in demo gallery.

Why these: they are real photos (and real Fashion-MNIST images) with labels,
they ship with the studio, and 70 of them take about a second per runtime,
so every conversion is checked where it is made, on the machine that uses it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..decode import DecodeError, decode
from ..files import scan_folder

# The demo gallery: ``assets/demo`` in a checkout; an installed package carries
# it as ``retrieval/_demo`` (pyproject.toml maps the one onto the other).
_INSTALLED = Path(__file__).resolve().parents[1] / "_demo"
PHOTOS = _INSTALLED if _INSTALLED.is_dir() else Path(__file__).resolve().parents[2] / "assets" / "demo"


@lru_cache(maxsize=4)
def photos(size: int, folder: Path = PHOTOS) -> tuple[np.ndarray, tuple[str | None, ...]]:
    """``(N, size, size, 3)`` uint8 pixels and their labels (subfolder names)."""
    if not folder.is_dir():
        return np.zeros((0, size, size, 3), np.uint8), ()
    sources, _ = scan_folder(folder)
    pixels, labels = [], []
    for source in sources:
        try:
            pixels.append(decode(source.path, size).pixels)
        except DecodeError:
            continue
        labels.append(source.label)
    if not pixels:
        return np.zeros((0, size, size, 3), np.uint8), ()
    return np.stack(pixels), tuple(labels)

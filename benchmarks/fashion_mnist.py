"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (MIT), read with numpy.

Install: ``apt-get install dataset-fashion-mnist``. Files are the original
IDX format, gzipped: images at byte offset 16, labels at offset 8.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle-boot")


def load(split: str = "t10k", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int) for 'train' or 't10k'."""
    images_path, labels_path = ROOT / f"{split}-images-idx3-ubyte.gz", ROOT / f"{split}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(f"{images_path} missing: apt-get install dataset-fashion-mnist")
    with gzip.open(images_path) as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels_path) as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64)
    return images[:limit], labels[:limit]


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, fmt: str = "png") -> Path:
    """One subfolder per class, so ``index`` takes labels from folder names."""
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.{fmt}")
    return root

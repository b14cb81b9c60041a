"""Regenerate ``assets/demo/`` from its public-domain and MIT sources.

Run once by a maintainer (needs scikit-image and Debian's
dataset-fashion-mnist); the app itself only reads the committed files.
Each subfolder is a label. Photo groups hold an original and its
near-duplicates (crop, flip, recolour) so "find this image" is visible;
the Fashion-MNIST classes make evaluation figures mean something.

    python assets/make_demo.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parent / "demo"
MAX_SIDE = 480


def _save(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = im.convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    im.save(path, "JPEG", quality=85, optimize=True)


def _variants(name: str, im: Image.Image, label: str) -> None:
    w, h = im.size
    _save(im, ROOT / label / f"{name}.jpg")
    _save(im.crop((w // 8, h // 8, w - w // 6, h - h // 6)), ROOT / label / f"{name}_crop.jpg")
    _save(ImageOps.mirror(im), ROOT / label / f"{name}_flipped.jpg")
    _save(ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.25)).enhance(0.3), ROOT / label / f"{name}_faded.jpg")


def main() -> None:
    from skimage import data

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import fashion_mnist

    shutil.rmtree(ROOT, ignore_errors=True)
    photo = lambda arr: Image.fromarray(np.asarray(arr))  # noqa: E731
    _variants("chelsea", photo(data.chelsea()), "cat")
    _variants("coffee", photo(data.coffee()), "coffee")
    _variants("astronaut", photo(data.astronaut()), "astronaut")
    _variants("rocket", photo(data.rocket()), "rocket")
    _variants("hubble", photo(data.hubble_deep_field()), "space")
    for name, arr in (("brick", data.brick()), ("grass", data.grass()), ("gravel", data.gravel())):
        _save(photo(arr), ROOT / "texture" / f"{name}.jpg")
        _save(photo(arr).crop((0, 0, 256, 256)), ROOT / "texture" / f"{name}_crop.jpg")
    for name, arr in (("immunohistochemistry", data.immunohistochemistry()), ("retina", data.retina())):
        _save(photo(arr), ROOT / "microscopy" / f"{name}.jpg")
        _save(ImageOps.mirror(photo(arr)), ROOT / "microscopy" / f"{name}_flipped.jpg")

    images, labels = fashion_mnist.load("t10k", 600)
    per_class: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(images, labels)):
        if label not in (0, 1, 5, 7, 8) or per_class.get(label, 0) >= 8:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        folder = ROOT / f"fashion-{fashion_mnist.CLASSES[label].lower()}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"fmnist-test-{i:04d}.png", optimize=True)
    print(f"wrote {sum(1 for _ in ROOT.rglob('*.*'))} files to {ROOT}")


if __name__ == "__main__":
    main()

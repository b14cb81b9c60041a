"""Labelled real-photo sets with held-out queries, built deterministically, to choose the defaults.

Why: Fashion-MNIST is 28x28 grey clothing, and ``benchmarks/photoset.py``'s
set (16 whole photos, leave-one-out mAP 0.944) is too easy to show what a
re-ranking or a backbone is worth. These sets are harder in the ways people's
galleries are: the same object or place seen from another viewpoint, a part
of a photo beside other parts of the same photo, close-ups beside wide shots.
Each set is written as

    OUT/<set>/gallery/<label>/*.jpg|png    what is indexed
    OUT/<set>/queries/<label>/*.jpg|png    held out: never in the gallery
    OUT/<set>/manifest.json               parameters, one record per file, summary

and no query is the same file or the same crop as a gallery item: every
file is its own random view (and in ``opencv-scenes`` most classes' queries
come from a different photo than their gallery). About 20 % of each class
(at least one file) are queries; classes hold 3 to 12 files, so their sizes
vary.

The sets
--------
``skimage-parts`` -- instance retrieval of *parts* of photos. Each bundled
scikit-image photo is cut into a grid of regions (2 to 9 per photo, 67 in
all) and each region is a class; its files are views around it: a crop of
0.6-1.4x the region's side whose centre wanders up to 25 % of it (so views
reach into the neighbouring regions, the hardest confusers), a rotation of
up to 12 degrees, sometimes a flip, colour, exposure and white-balance
jitter, sometimes blur or greyscale, JPEG quality 60-95 (a sixth are PNG),
and a long side of 320-1024 px. Sources, as ``benchmarks/photoset.py``
lists them: astronaut, rocket, hubble_deep_field, text and clock (public
domain); chelsea, coffee, camera, brick, grass, gravel, retina and cell
(CC0); immunohistochemistry and coins ("no known copyright restrictions").
Grey ones get the same tint as there. Shipped with scikit-image (pip), never
fetched.

``opencv-scenes`` -- the same scene or object in different photos, from the
sample images of OpenCV 4.6 in Debian's ``opencv-doc`` package
(``apt-get install opencv-doc``; files under
``/usr/share/doc/opencv-doc/examples/data``). Debian's copyright file
(``/usr/share/doc/opencv-doc/copyright``) covers them under ``Files: *``:
Apache-2.0 AND BSD-3-Clause (Debian removed the one sample it judged
non-free, lena). Left out here: drawings, logos and renders of shapes, and
messi5 (a press photo). Classes:
- ten same-scene pairs (graffiti graf1/graf3, Leuven leuvenA/B, aerial
  aero1/aero3, aloe aloeL/R, basketball1/2, rubberwhale1/2, box and
  box_in_scene, the notebook ela_original/ela_modified, books left/right,
  Blender Suzanne 1/2): the gallery holds views of the first photo, the
  queries are views of the second, which the gallery never sees;
- nine stereo calibration pairs (leftNN/rightNN, NN = 01-09): the same
  chessboard in the same room, one pose per class, hard confusers of each
  other (gallery: views of the left image, queries: of the right);
- fourteen single photos (apple, baboon, board, building, butterfly, chicky,
  fruits, home, licenseplate_motion, orange, squirrel_cls, starry_night,
  stuff, sudoku): gallery and queries are different close-ups, crops of
  5-50 % of the area (pair classes' views are 25-100 %).
33 classes in all.

Command (OUT defaults to ``benchmarks/out/realsets``, which git ignores):

    python -m benchmarks.realsets [OUT] [--sets skimage-parts,opencv-scenes] [--seed 0]

A second call with the same parameters reuses the files. Every file's
randomness comes from (seed, set, class, view) alone, so the build is
deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .photoset import _source as skimage_photo

OUT = Path("benchmarks/out/realsets")
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VERSION = 1  # bump when the rendering changes, so old sets are rebuilt
MANIFEST = "manifest.json"
QUERY_SHARE = 0.2
FILES_PER_CLASS = (3, 12)
# Crop sizes per kind: "region" as a multiple of the region's side, the others as a share of the photo's area.
CROPS = {"region": (0.6, 1.4), "whole": (0.25, 1.0), "close": (0.05, 0.5)}


@dataclass(frozen=True)
class Origin:
    """A photo views are cut from: ``skimage:<photoset label>`` or ``opencv:<file name>``,
    and a region of it as fractions (left, top, right, bottom) of its size."""

    photo: str
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class Class:
    """A label, the origins its gallery views come from and those its queries come from."""

    label: str
    gallery: tuple[Origin, ...]
    queries: tuple[Origin, ...]
    crop: str  # a key of CROPS


# ---------------------------------------------------------------- the sets

_GRIDS = {  # photoset label -> (rows, columns) of regions
    "astronaut": (2, 2), "rocket": (2, 3), "deep-field": (3, 3), "cat": (2, 2), "coffee": (2, 3),
    "retina": (3, 3), "tissue": (2, 2), "cameraman": (2, 2), "clock": (2, 2), "coins": (2, 2), "cell": (2, 2),
    "brick": (1, 2), "grass": (1, 2), "gravel": (1, 2), "handwriting": (1, 3),
}


def _skimage_parts() -> list[Class]:
    classes = []
    for photo, (rows, cols) in _GRIDS.items():
        for r in range(rows):
            for c in range(cols):
                origin = Origin(f"skimage:{photo}", (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows))
                classes.append(Class(f"{photo}-r{r}c{c}", (origin,), (origin,), "region"))
    return classes


_PAIRS = {  # label -> (the gallery's photo, the queries' photo)
    "graffiti": ("graf1.png", "graf3.png"), "leuven": ("leuvenA.jpg", "leuvenB.jpg"),
    "aerial": ("aero1.jpg", "aero3.jpg"), "aloe": ("aloeL.jpg", "aloeR.jpg"),
    "basketball": ("basketball1.png", "basketball2.png"), "rubberwhale": ("rubberwhale1.png", "rubberwhale2.png"),
    "box": ("box.png", "box_in_scene.png"), "notebook": ("ela_original.jpg", "ela_modified.jpg"),
    "books": ("left.jpg", "right.jpg"), "suzanne": ("Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg"),
    **{f"chessboard-{n:02d}": (f"left{n:02d}.jpg", f"right{n:02d}.jpg") for n in range(1, 10)},
}
_SINGLES = ("apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg", "chicky_512.png", "fruits.jpg",
            "home.jpg", "licenseplate_motion.jpg", "orange.jpg", "squirrel_cls.jpg", "starry_night.jpg", "stuff.jpg",
            "sudoku.png")


def _opencv_scenes() -> list[Class]:
    classes = [Class(label, (Origin(f"opencv:{a}"),), (Origin(f"opencv:{b}"),), "whole")
               for label, (a, b) in _PAIRS.items()]
    for name in _SINGLES:
        origin = Origin(f"opencv:{name}")
        classes.append(Class(name.rsplit(".", 1)[0].replace("_", "-"), (origin,), (origin,), "close"))
    return classes


SETS = {"skimage-parts": _skimage_parts, "opencv-scenes": _opencv_scenes}


def available(name: str) -> str | None:
    """None when the set's sources are on this machine, else what to install."""
    if name == "opencv-scenes" and not OPENCV_DATA.is_dir():
        return f"{OPENCV_DATA} missing: apt-get install opencv-doc"
    return None


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class View:
    """One file to render, decided up front."""

    set: str
    label: str
    role: str  # "gallery" or "queries"
    index: int  # within the class
    origin: Origin
    crop: str
    seed: int

    @property
    def rng_key(self) -> list[int]:
        digest = hashlib.sha256(f"{self.set}/{self.label}".encode()).digest()
        return [self.seed, int.from_bytes(digest[:4], "little"), self.index]


def plan(name: str, seed: int = 0, max_classes: int | None = None) -> list[View]:
    """Every file of a set: per class 3-12 files, ~20 % (at least one) of them queries."""
    views = []
    for c in SETS[name]()[:max_classes]:
        key = int.from_bytes(hashlib.sha256(f"{name}/{c.label}".encode()).digest()[:4], "little")
        rng = np.random.default_rng([seed, key])
        total = int(rng.integers(FILES_PER_CLASS[0], FILES_PER_CLASS[1] + 1))
        n_queries = max(1, round(QUERY_SHARE * total))
        for i in range(total):
            role = "queries" if i < n_queries else "gallery"
            origins = c.queries if role == "queries" else c.gallery
            views.append(View(name, c.label, role, i, origins[i % len(origins)], c.crop, seed))
    return views


# ---------------------------------------------------------------- rendering


@cache
def load_photo(photo: str) -> Image.Image:
    kind, name = photo.split(":", 1)
    if kind == "skimage":
        return skimage_photo(name)
    with Image.open(OPENCV_DATA / name) as im:
        return im.convert("RGB")


def _clip_box(cx: float, cy: float, w: float, h: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A w x h box centred near (cx, cy), shrunk to fit and moved inside the image."""
    shrink = min(1.0, width / w, height / h)
    w, h = max(16, int(w * shrink)), max(16, int(h * shrink))
    x = int(min(max(cx - w / 2, 0), width - w))
    y = int(min(max(cy - h / 2, 0), height - h))
    return x, y, x + w, y + h


def crop_box(view: View, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    width, height = size
    aspect = float(rng.choice([1.0, 4 / 3, 3 / 4, 3 / 2, 16 / 9]))
    if view.crop == "region":
        l, t, r, b = view.origin.region
        rw, rh = (r - l) * width, (b - t) * height
        side = math.sqrt(rw * rh) * rng.uniform(*CROPS["region"])
        cx = (l + r) / 2 * width + rng.uniform(-0.25, 0.25) * rw
        cy = (t + b) / 2 * height + rng.uniform(-0.25, 0.25) * rh
    else:
        share = rng.uniform(*CROPS[view.crop])
        side = math.sqrt(width * height * share)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    return _clip_box(cx, cy, side * math.sqrt(aspect), side / math.sqrt(aspect), width, height)


def _rotate_inside(im: Image.Image, degrees: float) -> Image.Image:
    """Rotate and keep the largest centred rectangle of the same aspect with no empty corners."""
    w, h = im.size
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    scale = min(w / (w * c + h * s), h / (w * s + h * c))
    iw, ih = int(w * scale), int(h * scale)
    left, top = (w - iw) // 2, (h - ih) // 2
    return im.rotate(degrees, resample=Image.BICUBIC).crop((left, top, left + iw, top + ih))


def _jitter(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Saturation, contrast, exposure and white balance, as differing cameras and edits give."""
    a = np.asarray(im, np.float32)
    grey = a.mean(axis=2, keepdims=True)
    a = grey + (a - grey) * rng.uniform(0.6, 1.4)
    a = (a - a.mean()) * rng.uniform(0.75, 1.25) + a.mean()
    a = a * rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, size=3)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def render(view: View) -> tuple[Image.Image, dict]:
    """The view's pixels and what was done to make them (for the manifest)."""
    rng = np.random.default_rng(view.rng_key)
    photo = load_photo(view.origin.photo)
    box = crop_box(view, photo.size, rng)
    im = photo.crop(box)
    degrees = float(rng.uniform(-12, 12)) if rng.random() < 0.5 else 0.0
    if degrees:
        im = _rotate_inside(im, degrees)
    flip = bool(rng.random() < 0.25)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = _jitter(im, rng)
    blur = float(rng.uniform(0.8, 2.0)) if rng.random() < 0.15 else 0.0
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    grey = bool(rng.random() < 0.1)
    if grey:
        im = im.convert("L").convert("RGB")
    long_side = int(rng.integers(320, 1025))
    scale = long_side / max(im.size)
    im = im.resize((max(16, round(im.width * scale)), max(16, round(im.height * scale))), Image.BICUBIC)
    quality = int(rng.integers(60, 96)) if rng.random() < 5 / 6 else 0  # 0: PNG
    return im, {"box": list(box), "degrees": round(degrees, 2), "flip": flip, "blur": round(blur, 2), "grey": grey,
                "quality": quality, "width": im.width, "height": im.height}


def write(view: View, out_dir: Path) -> dict:
    im, record = render(view)
    ext = "jpg" if record["quality"] else "png"
    path = Path(view.role) / view.label / f"{view.label}_{view.index:02d}.{ext}"
    (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
    if record["quality"]:
        im.save(out_dir / path, "JPEG", quality=record["quality"])
    else:
        im.save(out_dir / path, "PNG")
    data = (out_dir / path).read_bytes()
    return {"path": str(path), "label": view.label, "role": view.role, "photo": view.origin.photo,
            "region": list(view.origin.region), **record, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------- build


def summarise(files: list[dict]) -> dict:
    per_class: dict[str, list[int]] = {}
    for f in files:
        counts = per_class.setdefault(f["label"], [0, 0])
        counts[f["role"] == "queries"] += 1
    sizes = [g + q for g, q in per_class.values()]
    return {"classes": len(per_class), "gallery": sum(g for g, _ in per_class.values()),
            "queries": sum(q for _, q in per_class.values()), "files_per_class_min_max": [min(sizes), max(sizes)],
            "photos": len({f["photo"] for f in files}), "bytes": sum(f["bytes"] for f in files),
            "per_class": {label: {"gallery": g, "queries": q} for label, (g, q) in sorted(per_class.items())}}


def _params(name: str, seed: int, max_classes: int | None) -> dict:
    classes = [asdict(c) for c in SETS[name]()[:max_classes]]
    return json.loads(json.dumps({"version": VERSION, "set": name, "seed": seed, "classes": classes,
                                  "query_share": QUERY_SHARE, "files_per_class": FILES_PER_CLASS,
                                  "crops": CROPS}))


def _reusable(set_dir: Path, params: dict) -> dict | None:
    try:
        manifest = json.loads((set_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("params") != params:
        return None
    for f in manifest["files"]:
        path = set_dir / f["path"]
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            return None
    return manifest


def build_set(name: str, out: Path = OUT, seed: int = 0, max_classes: int | None = None) -> dict:
    """Build (or reuse) one set under ``out/<name>``; returns its manifest."""
    why = available(name)
    if why:
        raise FileNotFoundError(why)
    set_dir = Path(out) / name
    params = _params(name, seed, max_classes)
    manifest = _reusable(set_dir, params)
    if manifest is not None:
        return manifest
    for role in ("gallery", "queries"):  # a rebuild leaves no strays from an older plan
        for old in sorted((set_dir / role).glob("*/*")) if (set_dir / role).is_dir() else []:
            old.unlink()
    set_dir.mkdir(parents=True, exist_ok=True)
    (set_dir / MANIFEST).unlink(missing_ok=True)
    files = [write(view, set_dir) for view in plan(name, seed, max_classes)]
    manifest = {"params": params, "summary": summarise(files), "files": files}
    tmp = set_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(set_dir / MANIFEST)
    return manifest


def load(set_dir: Path) -> tuple[list[Path], list[str], list[Path], list[str]]:
    """(gallery paths, their labels, query paths, their labels) of a built set."""
    files = json.loads((Path(set_dir) / MANIFEST).read_text())["files"]
    gallery = [f for f in files if f["role"] == "gallery"]
    queries = [f for f in files if f["role"] == "queries"]
    return ([Path(set_dir) / f["path"] for f in gallery], [f["label"] for f in gallery],
            [Path(set_dir) / f["path"] for f in queries], [f["label"] for f in queries])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=OUT)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.sets.split(","):
        why = available(name)
        if why:
            print(f"{name}: skipped ({why})")
            continue
        summary = dict(build_set(name, args.out, args.seed)["summary"])
        summary.pop("per_class")
        print(name, json.dumps(summary))


if __name__ == "__main__":
    main()

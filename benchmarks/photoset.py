"""A labelled set of realistic photo files, built deterministically, for indexing benchmarks.

Why: Fashion-MNIST PNGs are 28x28 and say nothing about what costs time when
people index a folder of camera and phone photos: 12 MP JPEGs (where
``Image.draft`` matters), EXIF rotation, transparency, WebP. This set has all
of them, and it is labelled (one folder per source photo), so the same files
measure both speed and retrieval quality (leave-one-out mAP), for example to
check that a faster inference runtime keeps the ranking.

Sources: scikit-image's bundled photos, none fetched from the network. Only
those whose docstring states a free licence are used: astronaut, rocket,
hubble_deep_field, text and clock (public domain); chelsea, coffee, camera,
brick, grass, gravel, retina, horse and cell (CC0); immunohistochemistry and
coins ("no known copyright restrictions"). Left out: moon, page, logo and
colorwheel (no licence stated). Nothing from the set is shipped; it is built
in a scratch folder.

Each file is a new *view* of its source: a random crop (20-100% of the area,
so a class holds close-ups and wide shots), a rotation of up to 10 degrees,
a flip, colour and brightness jitter, and a resize to a realistic size.
Grey sources get a plausible colour (red brick, green grass) so most classes
are colour photos. Upscaled camera-size views get a fixed
sensor-like grain, because a smooth upscale compresses 3x smaller than a real
photo and would make JPEG decoding look cheaper than it is (with grain the
9-12 MP views at quality 85-95 weigh 0.9-4.7 MB, median 2.2 MB, as phone
photos do).

The default mix (``MIXES["mixed"]``) is a folder someone indexes, not a raw
camera roll: camera originals beside copies that messaging apps re-encoded
(long side 1280-2304 px, 1-4 MP, quality 75-85, EXIF stripped), web
downloads under 1 MP, PNG cutouts and stickers with alpha, and WebP from the web. Of the
JPEGs, ~15% are 9-12 MP camera originals and ~11% 4.5-8 MP, all with an EXIF
orientation (a third of them 6, the phone held upright). A raw camera roll
has far more originals: ``MIXES["camera-roll"]`` is that case, and it costs
more to build and to decode. The share of 12 MP files is what dominates both
build time and decode time, so it is a named, bounded choice.

    python -m benchmarks.photoset OUT_DIR [--n 1200] [--seed 0] [--mix mixed] [--workers 2]

The classes are neither trivial nor hopeless: on the default set (n=1200,
seed 0) leave-one-out mAP is 0.41 on raw 32x32 pixels and 0.944 with
EfficientNet-Lite1 GeM at 240 (P@1 0.997).

A second call with the same parameters reuses the files (``.photoset.json``,
hidden so that indexing the folder skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

MANIFEST = ".photoset.json"
VERSION = 3  # bump when the rendering changes, so old sets are rebuilt
_NOISE_SIDE = 4096  # the grain field covers any view up to 4096 x 4096
_GRAIN_SIGMA = 4.0
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Source:
    """A bundled scikit-image photo: its loader name and, for grey ones, a colour."""

    loader: str
    tint: tuple[float, float, float] | None = None  # RGB gains applied to grey


SOURCES: dict[str, Source] = {
    "astronaut": Source("astronaut"),
    "cat": Source("chelsea"),
    "coffee": Source("coffee"),
    "rocket": Source("rocket"),
    "deep-field": Source("hubble_deep_field"),
    "tissue": Source("immunohistochemistry"),
    "retina": Source("retina"),
    "cameraman": Source("camera"),
    "coins": Source("coins", (1.0, 0.85, 0.6)),
    "brick": Source("brick", (1.0, 0.62, 0.5)),
    "grass": Source("grass", (0.55, 0.9, 0.4)),
    "gravel": Source("gravel", (0.95, 0.88, 0.78)),
    "handwriting": Source("text", (1.0, 0.97, 0.9)),
    "clock": Source("clock"),
    "cell": Source("cell", (0.8, 0.9, 1.0)),
    "horse": Source("horse"),
}


@dataclass(frozen=True)
class Kind:
    """One kind of file in a gallery: format, size range, quality, EXIF habits.

    ``exif`` is the share of files that carry EXIF at all; ``orientations``
    weights the Orientation tag among those (6 = phone held upright).
    """

    format: str  # JPEG, PNG or WEBP
    long_side: tuple[int, int]
    aspects: tuple[float, ...]
    quality: tuple[int, int] | None = (75, 95)  # None for lossless formats
    max_megapixels: float | None = None  # squares would otherwise overshoot the kind's band
    exif: float = 0.0
    orientations: tuple[tuple[int, float], ...] = ((1, 0.5), (6, 0.4), (8, 0.05), (3, 0.05))
    portrait: float = 0.3  # share of upright portraits among files without a 90-degree tag
    progressive: float = 0.0
    alpha: tuple[tuple[str, float], ...] = ()  # alpha modes and their weights
    grain: bool = True


_CAMERA_TAGS = ((1, 0.57), (6, 0.33), (8, 0.05), (3, 0.05))

KINDS: dict[str, Kind] = {
    # Downloads and thumbnails: under 1 MP, often progressive.
    "jpeg-web": Kind("JPEG", (320, 1280), (4 / 3, 3 / 2, 16 / 9, 1.0), (75, 92), max_megapixels=0.99, exif=0.05,
                     progressive=0.3),
    # Copies from messaging apps: re-encoded at 1280-2304 px (about 1-4 MP), EXIF mostly stripped.
    "jpeg-shared": Kind("JPEG", (1280, 2304), (4 / 3, 16 / 9, 1.0), (75, 85), max_megapixels=3.9, exif=0.1,
                        progressive=0.1),
    # Older phones and edited crops: 4.5-8 MP.
    "jpeg-camera": Kind("JPEG", (2816, 3264), (4 / 3, 16 / 9), (85, 95), exif=1.0, orientations=_CAMERA_TAGS,
                        portrait=0.1),
    # Today's phone originals: 4000-4032 px long side, 9-12 MP.
    "jpeg-camera12": Kind("JPEG", (4000, 4032), (4 / 3, 16 / 9), (85, 95), exif=1.0, orientations=_CAMERA_TAGS,
                          portrait=0.1),
    # Cutouts, stickers and exports with an alpha channel (not always used).
    "png-alpha": Kind("PNG", (320, 1600), (1.0, 4 / 3, 3 / 2), None, grain=False,
                      alpha=(("cutout", 0.5), ("soft", 0.25), ("opaque", 0.25))),
    # Web images; a quarter with transparency.
    "webp": Kind("WEBP", (320, 2048), (4 / 3, 16 / 9, 1.0), (75, 90), alpha=(("none", 0.75), ("cutout", 0.25))),
}

MIXES: dict[str, dict[str, float]] = {
    "mixed": {"jpeg-web": 0.30, "jpeg-shared": 0.26, "jpeg-camera": 0.08, "jpeg-camera12": 0.11,
              "png-alpha": 0.15, "webp": 0.10},
    "camera-roll": {"jpeg-web": 0.05, "jpeg-shared": 0.12, "jpeg-camera": 0.10, "jpeg-camera12": 0.55,
                    "png-alpha": 0.10, "webp": 0.08},
}


@dataclass(frozen=True)
class Item:
    """Everything needed to render one file, decided up front so the build is deterministic."""

    index: int
    seed: int
    label: str
    kind: str
    width: int  # upright size, as a viewer shows it
    height: int
    quality: int  # 0 for lossless formats
    orientation: int | None  # EXIF Orientation tag, None without EXIF
    progressive: bool
    alpha: str  # "none", "cutout", "soft" or "opaque"

    @property
    def path(self) -> str:
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[KINDS[self.kind].format]
        return f"{self.label}/IMG_{self.index:05d}.{ext}"


# ---------------------------------------------------------------- planning


def _counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Exact counts per kind (largest remainder), so a mix is met exactly, not only on average."""
    total = sum(shares.values())
    raw = {k: n * v / total for k, v in shares.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _pick(rng: np.random.Generator, weighted: tuple[tuple, ...]):
    values, weights = zip(*weighted)
    return values[rng.choice(len(values), p=np.asarray(weights) / sum(weights))]


def _size(kind: Kind, rng: np.random.Generator, portrait: bool) -> tuple[int, int]:
    """Upright (width, height) with the kind's long side and one of its aspect ratios."""
    long = int(rng.integers(kind.long_side[0], kind.long_side[1] + 1))
    short = round(long / kind.aspects[rng.integers(len(kind.aspects))])
    if kind.max_megapixels and long * short > kind.max_megapixels * 1e6:
        shrink = math.sqrt(kind.max_megapixels * 1e6 / (long * short))
        long, short = int(long * shrink), int(short * shrink)
    return (short, long) if portrait else (long, short)


def _plan_item(index: int, seed: int, label: str, kind_name: str) -> Item:
    rng = np.random.default_rng([seed, index, 1])
    kind = KINDS[kind_name]
    orientation = _pick(rng, kind.orientations) if rng.random() < kind.exif else None
    portrait = orientation in (6, 8) or rng.random() < kind.portrait
    width, height = _size(kind, rng, portrait)
    return Item(
        index=index, seed=seed, label=label, kind=kind_name, width=width, height=height,
        quality=int(rng.integers(kind.quality[0], kind.quality[1] + 1)) if kind.quality else 0,
        orientation=orientation,
        progressive=bool(rng.random() < kind.progressive),
        alpha=_pick(rng, kind.alpha) if kind.alpha else "none",
    )


def plan(n: int, seed: int, mix: dict[str, float]) -> list[Item]:
    """The n files: kinds in the mix's exact proportions, classes balanced and independent of kind.

    Classes and kinds are shuffled separately, so a file's format or size
    says nothing about its label (no shortcut for a retrieval metric).
    """
    rng = np.random.default_rng(seed)
    kinds = [k for k, c in _counts(n, mix).items() for _ in range(c)]
    kinds = [kinds[i] for i in rng.permutation(n)]
    labels = list(SOURCES)
    classes = [labels[i % len(labels)] for i in rng.permutation(n)]
    return [_plan_item(i, seed, classes[i], kinds[i]) for i in range(n)]


# ---------------------------------------------------------------- rendering


@cache
def _source(label: str) -> Image.Image:
    """The source photo as RGB, grey ones tinted (cached per worker process)."""
    from skimage import data

    src = SOURCES[label]
    arr = np.asarray(getattr(data, src.loader)())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        tint = np.asarray(src.tint or (1.0, 1.0, 1.0), np.float32)
        arr = np.clip(arr[..., None].astype(np.float32) * tint, 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., :3]).convert("RGB")


@lru_cache(maxsize=2)
def _noise(seed: int) -> Image.Image:
    """A fixed grey grain field centred on 128; views take random windows of it.

    One field per worker is ~10x cheaper than fresh noise per 12 MP file, and
    to a JPEG encoder a window of it is as costly as fresh noise.
    """
    rng = np.random.default_rng([seed, 2**31])
    field = rng.standard_normal((_NOISE_SIDE, _NOISE_SIDE), dtype=np.float32) * _GRAIN_SIGMA + 128
    return Image.fromarray(np.clip(np.rint(field), 0, 255).astype(np.uint8), "L")


def _crop_box(src: Image.Image, aspect: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop of 20-100% of the source's area with the view's aspect ratio."""
    area = src.width * src.height * rng.uniform(0.2, 1.0)
    w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    shrink = min(1.0, src.width / w, src.height / h)
    w, h = max(8, int(w * shrink)), max(8, int(h * shrink))
    x = int(rng.integers(0, src.width - w + 1))
    y = int(rng.integers(0, src.height - h + 1))
    return x, y, x + w, y + h


def _rotate_inside(im: Image.Image, degrees: float) -> Image.Image:
    """Rotate, then keep the largest centred rectangle of the same aspect with no empty corners."""
    if degrees == 0:
        return im
    w, h = im.size
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    scale = min(w / (w * c + h * s), h / (w * s + h * c))
    iw, ih = int(w * scale), int(h * scale)
    rotated = im.rotate(degrees, resample=Image.BICUBIC)
    left, top = (w - iw) // 2, (h - ih) // 2
    return rotated.crop((left, top, left + iw, top + ih))


def _jitter(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation and white balance, as differing cameras and edits give."""
    a = np.asarray(im, np.float32)
    grey = a.mean(axis=2, keepdims=True)
    a = grey + (a - grey) * rng.uniform(0.7, 1.3)  # saturation
    a = (a - a.mean()) * rng.uniform(0.8, 1.2) + a.mean()  # contrast
    a = a * rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, size=3)  # exposure, white balance
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _view(item: Item, rng: np.random.Generator) -> Image.Image:
    """An upright RGB view of the item's source at the item's size."""
    src = _source(item.label)
    im = src.crop(_crop_box(src, item.width / item.height, rng))
    if rng.random() < 0.5:
        im = _rotate_inside(im, float(rng.uniform(-10, 10)))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = _jitter(im, rng)
    upscale = item.width / im.width
    im = im.resize((item.width, item.height), Image.BICUBIC, reducing_gap=None if upscale >= 1 else 2.0)
    if KINDS[item.kind].grain and upscale > 1.5:
        im = _add_grain(im, item.seed, rng)
    return im


def _add_grain(im: Image.Image, seed: int, rng: np.random.Generator) -> Image.Image:
    field = _noise(seed)
    x = int(rng.integers(0, _NOISE_SIDE - im.width + 1))
    y = int(rng.integers(0, _NOISE_SIDE - im.height + 1))
    grain = field.crop((x, y, x + im.width, y + im.height))
    return ImageChops.add(im, Image.merge("RGB", (grain, grain, grain)), 1.0, -128)


def _alpha_mask(mode: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An 'L' mask: a feathered ellipse or rounded rectangle (cutout), a radial fade (soft), or opaque."""
    w, h = size
    if mode == "opaque":
        return Image.new("L", size, 255)
    small = (max(1, w // 4), max(1, h // 4))  # draw small, blur, upscale: cheap soft edges
    mask = Image.new("L", small, 0)
    draw = ImageDraw.Draw(mask)
    mx, my = small[0] * rng.uniform(0.03, 0.15), small[1] * rng.uniform(0.03, 0.15)
    box = (mx, my, small[0] - mx, small[1] - my)
    if mode == "soft":
        for step in range(16):  # concentric ellipses: opaque centre fading to ~15% at the rim
            inset = step * min(small) / 40
            draw.ellipse((inset, inset, small[0] - inset, small[1] - inset), fill=40 + step * 14)
    elif rng.random() < 0.5:
        draw.ellipse(box, fill=255)
    else:
        draw.rounded_rectangle(box, radius=min(small) * 0.15, fill=255)
    return mask.filter(ImageFilter.GaussianBlur(1.5)).resize(size, Image.BILINEAR)


def _with_alpha(im: Image.Image, mode: str, rng: np.random.Generator) -> Image.Image:
    """RGBA; fully transparent pixels get RGB 0, as most editors export them."""
    mask = _alpha_mask(mode, im.size, rng)
    black = Image.new("RGB", im.size, 0)
    rgb = Image.composite(im, black, mask.point(lambda v: 255 if v else 0))
    rgb.putalpha(mask)
    return rgb


_STORE_TRANSPOSE = {  # the inverse of what a viewer applies for each tag
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _exif(item: Item) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Photoset"  # Make
    exif[0x0110] = "Phone 12MP" if item.kind == "jpeg-camera12" else "Phone"  # Model
    exif[0x0132] = f"2024:06:{1 + item.index % 28:02d} 12:{item.index % 60:02d}:00"  # DateTime
    exif[_ORIENTATION] = item.orientation
    return exif.tobytes()


def _save(im: Image.Image, item: Item, path: Path) -> None:
    fmt = KINDS[item.kind].format
    if fmt == "JPEG":
        if item.orientation in _STORE_TRANSPOSE:
            im = im.transpose(_STORE_TRANSPOSE[item.orientation])
        extra = {"exif": _exif(item)} if item.orientation is not None else {}
        im.save(path, "JPEG", quality=item.quality, progressive=item.progressive, **extra)
    elif fmt == "PNG":
        im.save(path, "PNG")
    else:
        im.save(path, "WEBP", quality=item.quality, method=4)


def render(item: Item, out_dir: Path) -> int:
    """Write one file; returns its size in bytes. Runs in a worker process."""
    rng = np.random.default_rng([item.seed, item.index, 3])
    im = _view(item, rng)
    if item.alpha != "none":
        im = _with_alpha(im, item.alpha, rng)
    path = out_dir / item.path
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(im, item, path)
    return path.stat().st_size


def _render_task(args: tuple[Item, Path]) -> int:
    return render(*args)


# ---------------------------------------------------------------- summary and build


def megapixel_band(width: int, height: int) -> str:
    mp = width * height / 1e6
    return "<1 MP" if mp < 1 else "1-4 MP" if mp < 4 else "4-8 MP" if mp < 8 else ">=8 MP"


def summarise(items: list[Item], sizes: list[int]) -> dict:
    """Counts per kind, format, class, megapixel band, orientation and alpha; bytes in total and per format."""

    def tally(keys) -> dict[str, int]:
        out: dict[str, int] = {}
        for key in keys:
            out[str(key)] = out.get(str(key), 0) + 1
        return dict(sorted(out.items()))

    fmt = [KINDS[i.kind].format for i in items]
    mps = [i.width * i.height / 1e6 for i in items]
    bytes_per_format: dict[str, int] = {}
    for f, b in zip(fmt, sizes):
        bytes_per_format[f] = bytes_per_format.get(f, 0) + b
    return {
        "files": len(items),
        "classes": len({i.label for i in items}),
        "per_format": tally(fmt),
        "per_kind": tally(i.kind for i in items),
        "per_class": tally(i.label for i in items),
        "megapixels": tally(megapixel_band(i.width, i.height) for i in items),
        "megapixels_min_median_max": [round(min(mps), 2), round(statistics.median(mps), 2), round(max(mps), 2)],
        "exif_orientation": tally(i.orientation for i in items if i.orientation is not None),
        "alpha": tally(i.alpha for i in items if i.alpha != "none"),
        "progressive_jpeg": sum(i.progressive for i in items),
        "bytes_total": sum(sizes),
        "bytes_per_format": dict(sorted(bytes_per_format.items())),
    }


def _params(n: int, seed: int, mix: dict[str, float]) -> dict:
    """What the files depend on, as JSON would read it back (so stored and fresh compare equal).

    The kinds and sources are included, so editing a size range or a tint
    rebuilds the set instead of silently reusing the old files.
    """
    params = {"version": VERSION, "n": n, "seed": seed, "mix": mix,
              "kinds": {k: asdict(v) for k, v in KINDS.items()}, "sources": {k: asdict(v) for k, v in SOURCES.items()}}
    return json.loads(json.dumps(params))


def _reusable(out_dir: Path, params: dict) -> dict | None:
    """The stored manifest if it was built with these parameters and every file is still there, intact."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("params") != params:
        return None
    for entry in manifest["files"]:
        path = out_dir / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return None
    return manifest


def _remove_previous(out_dir: Path) -> None:
    """Delete the files an older manifest lists (and only those), so a rebuild leaves no strays."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    (out_dir / MANIFEST).unlink()
    for entry in manifest.get("files", []):
        (out_dir / entry["path"]).unlink(missing_ok=True)


def build(out_dir: Path, n: int = 1200, seed: int = 0, mix: str | dict[str, float] = "mixed",
          workers: int | None = None) -> dict:
    """Build (or reuse) the set under ``out_dir``; returns its summary.

    Files are rendered in a process pool, largest first so the last task to
    finish is a small one. Each file's randomness comes from (seed, index)
    alone, so the result does not depend on the number of workers. The
    manifest is written last: an interrupted build is never reused.
    """
    out_dir = Path(out_dir)
    shares = MIXES[mix] if isinstance(mix, str) else dict(mix)
    unknown = set(shares) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds in mix: {sorted(unknown)} (known: {sorted(KINDS)})")
    params = _params(n, seed, shares)
    manifest = _reusable(out_dir, params)
    if manifest is not None:
        return {**manifest["summary"], "reused": True}

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous(out_dir)
    items = plan(n, seed, shares)
    order = sorted(range(n), key=lambda i: -items[i].width * items[i].height)
    sizes = [0] * n
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        for i, size in zip(order, pool.map(_render_task, [(items[i], out_dir) for i in order])):
            sizes[i] = size
    summary = {**summarise(items, sizes), "build_seconds": round(time.perf_counter() - started, 1)}
    files = [{**asdict(item), "path": item.path, "format": KINDS[item.kind].format, "bytes": b}
             for item, b in zip(items, sizes)]
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"params": params, "summary": summary, "files": files}, indent=1))
    tmp.replace(out_dir / MANIFEST)
    return {**summary, "reused": False}


def load_manifest(out_dir: Path) -> list[dict]:
    """Per-file records of a built set (path, label, kind, format, size, orientation, alpha, bytes)."""
    return json.loads((Path(out_dir) / MANIFEST).read_text())["files"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out_dir, args.n, args.seed, args.mix, args.workers), indent=1))


if __name__ == "__main__":
    main()

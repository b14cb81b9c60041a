"""Decode any image file into clean RGB pixels at the model's input size.

Why so careful: galleries come from phones (EXIF rotation), the web
(transparency, palettes, animations), scanners (16-bit, CMYK) and attackers
(decompression bombs, truncated files). Every input either becomes a sane
``uint8`` RGB array or a ``DecodeError`` whose message a person can act on.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .settings import Limits

_WHITE = (255, 255, 255)


class DecodeError(ValueError):
    """This file cannot be used; ``str(err)`` is the reason for the user."""


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (size, size, 3) uint8, or the full image when size is None
    width: int  # of the upright original, before any resizing
    height: int
    format: str


def _check_pixels(width: int, height: int, limits: Limits) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise DecodeError(
            f"too many pixels: {width}x{height} exceeds the limit of {limits.max_pixels:,} pixels"
        )


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit and float greys become 8-bit by scaling, not by clipping to 255."""
    arr = np.asarray(im)
    if im.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
    else:  # I;16* or I (which Pillow uses for 16-bit PNGs too)
        scaled = arr.astype(np.float64) / (65535.0 if arr.max(initial=0) > 255 else 255.0) * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, with transparency composited onto white."""
    if im.mode.startswith("I") or im.mode == "F":
        im = _high_bit_depth_to_l(im)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


# Modes Pillow resizes well as they are (RGBA and LA premultiplied by alpha):
# these are resized *before* the colour conversion, so compositing a big PNG's
# alpha onto white costs a 240x240 pass, not a full-size one. Others (palette,
# 16-bit, CMYK) are converted first, as palette images resize only by nearest.
_RESIZE_FIRST = frozenset({"RGB", "RGBA", "L", "LA"})
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _resize(im: Image.Image, size: int) -> Image.Image:
    return im.resize((size, size), Image.BILINEAR, reducing_gap=3.0)


def _squash(rgb: Image.Image, size: int | None) -> np.ndarray:
    """RGB -> ``uint8`` pixels, squashed to ``size`` x ``size`` (the whole image stays in view)."""
    if size is not None:
        rgb = _resize(rgb, size)
    return np.asarray(rgb, dtype=np.uint8)


def _small_upright_rgb(im: Image.Image, size: int | None, orientation: int | None) -> np.ndarray:
    """A loaded image -> upright RGB pixels at ``size``, doing the costly steps on the small image.

    Squashing to a square commutes with the EXIF rotations and flips, and
    (with premultiplied alpha) with compositing onto white, so both run after
    the resize: on a 12 MP PNG with alpha that is most of the decode's cost.
    """
    if size is None:
        return np.asarray(to_rgb(ImageOps.exif_transpose(im)), dtype=np.uint8)
    if im.mode in _RESIZE_FIRST:
        im = _resize(im, size)
    rgb = to_rgb(im)
    if rgb.size != (size, size):
        rgb = _resize(rgb, size)
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return np.asarray(rgb, dtype=np.uint8)


def decode(data: bytes | str | Path, size: int | None = None, limits: Limits = Limits()) -> Decoded:
    """Bytes or a path -> upright RGB pixels, squashed to ``size`` x ``size``.

    Squashing (not cropping) keeps every part of the image in view, which
    matters for retrieval where the object may sit near an edge. JPEGs are
    decoded at a reduced scale when ``size`` allows it (``Image.draft``), which
    makes big photos several times cheaper.
    """
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    if isinstance(data, (bytes, bytearray)) and len(data) == 0:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                _check_pixels(width, height, limits)
                fmt = im.format or "unknown"
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # animations: the first frame stands for the file
                if size is not None and fmt in ("JPEG", "MPO"):  # MPO: phones' multi-picture JPEGs
                    im.draft("RGB", (size, size))
                im.load()
                orientation = im.getexif().get(0x0112)  # after load: a PNG's eXIf chunk may follow its pixels
                if orientation in (5, 6, 7, 8):  # rotated 90 degrees
                    width, height = height, width
                pixels = _small_upright_rgb(im, size, orientation)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image Pillow can read (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fired in open(), before our header check could.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,} pixels" if found else "the image"
        raise DecodeError(f"too many pixels: {count} exceeds the limit of {limits.max_pixels:,} pixels") from None
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason:
            reason = "truncated image data"
        raise DecodeError(f"corrupt image: {reason}") from None
    return Decoded(pixels, width, height, fmt)


def to_pixels(image: str | Path | bytes | Image.Image | np.ndarray, size: int | None,
              limits: Limits = Limits()) -> np.ndarray:
    """Whatever a caller holds as an image -> ``uint8`` RGB pixels, squashed to ``size``.

    Why one function: a query or an explained image arrives as a path or
    bytes (CLI, API) or already in memory as a PIL image or an array (the
    app), and each form must reach the model as the same pixels. Files go
    through ``decode`` with all its checks; an image in memory is already
    upright, so it only needs the same colour conversion and resizing.
    """
    if isinstance(image, (str, Path, bytes, bytearray)):
        return decode(image, size, limits).pixels
    if isinstance(image, np.ndarray):
        try:
            image = Image.fromarray(image)
        except (TypeError, ValueError):
            raise DecodeError(f"not an image array: {image.dtype} of shape {image.shape} "
                              "(expected uint8 of shape (H, W), (H, W, 3) or (H, W, 4))") from None
    if not isinstance(image, Image.Image):
        raise DecodeError(f"not an image: a {type(image).__name__}")
    _check_pixels(image.width, image.height, limits)
    try:
        return _small_upright_rgb(image, size, None)  # the same steps as a file, so the same pixels
    except (OSError, ValueError) as exc:  # a lazily opened image whose data turns out bad
        raise DecodeError(f"corrupt image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

"""A corpus of hostile and awkward inputs, made on the fly, with the outcome each must have.

Why generated rather than shipped: a 50000 x 50000 PNG header, a zip that
inflates to gigabytes and a symlink out of the folder are all a few bytes
to make and awkward to keep in git; making them also documents how.

``EXPECTED`` maps each name, as the engine reports it, to ``"ok"`` (indexed)
or to a fragment of the reason it must be skipped with.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SQL_LABEL = 'x"; DELETE FROM images; --'
ESCAPE_NAME = "retrieval-bad-corpus-escaped.png"  # what the hostile zip tries to write outside

LOOSE: dict[str, str] = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "page.html": "not an image",
    "drawing.svg": "not an image",
    "bomb_50000x50000.png": "too many pixels",
    "deep_16bit.png": "ok",
    "cmyk.jpg": "ok",
    "palette_transparent.png": "ok",
    "animated.gif": "ok",
    "animated.webp": "ok",
    "exif_rotated.jpg": "ok",
    "one_pixel.png": "ok",
    "wide_20000x10.png": "ok",
    "grey.png": "ok",
    "name with spaces.png": "ok",
    "ünïcødé 写真.png": "ok",
    "quote's \"double\".png": "ok",
    "semi;colon.png": "ok",
    "x'; DROP TABLE images; --.png": "ok",
    "good.jpg": "ok",
}
FOLDER_ONLY: dict[str, str] = {"link_outside.png": "symbolic link points outside"}
ZIPS: dict[str, str] = {
    "escape.zip/../escaped.png": "unsafe path",
    f"escape.zip//tmp/{ESCAPE_NAME}": "unsafe path",
    "escape.zip/inside/fine.png": "ok",
    "escape.zip/x\"; DELETE FROM images; --/sql_label.png": "ok",  # a label that is SQL
    "bomb.zip/zeros.png": "too large",
    "liar.zip/zeros.png": "cannot extract",
    "nested.zip/inner.zip": "nested archive",
    "nested.zip/outer.png": "ok",
}
EXPECTED = {**LOOSE, **FOLDER_ONLY, **ZIPS}


def _photo(seed: int, size=(64, 48)) -> Image.Image:
    """A smooth, distinct colour image (noise would make every file alike to a CNN)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    a, b, c = rng.uniform(0.02, 0.2, 3)
    img = np.stack([np.sin(a * x + seed), np.cos(b * y), np.sin(c * (x + y))], -1)
    return Image.fromarray(((img + 1) * 127.5).astype(np.uint8))


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height (CRC fixed up)."""
    import struct
    import zlib

    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height)
    data[16:24] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _animated(fmt: str) -> bytes:
    frames = [_photo(i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    """Stored 40 wide x 20 tall, red left / blue right, Orientation=6: upright it is 20 x 40, red on top."""
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (220, 20, 20)
    img[:, 20:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def _zip_bomb(path: Path, gigabytes: int = 2) -> None:
    """An honest bomb: the header says it inflates to ``gigabytes`` GiB of zeros."""
    chunk = bytes(64 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("zeros.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            for _ in range(gigabytes * 16):
                fh.write(chunk)


def _lying_bomb(path: Path) -> None:
    """A bomb whose headers claim 1,000 bytes: only reading with a cap stops it."""
    import struct

    chunk = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("zeros.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as fh:
            for _ in range(16):  # 256 MiB of zeros
                fh.write(chunk)
    data = bytearray(path.read_bytes())
    # uncompressed size: local header at offset 22, central directory entry at +24
    data[22:26] = struct.pack("<I", 1000)
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", 1000)
    path.write_bytes(bytes(data))


def make_loose(root: Path) -> Path:
    """The loose files of the corpus in ``root`` (no archives, no links)."""
    root.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    _photo(0, (320, 240)).save(good, "JPEG", quality=90)
    files = {
        "empty.jpg": b"",
        "truncated.jpg": good.getvalue()[:600],
        "text.jpg": b"just some words, certainly not a JPEG\n" * 20,
        "page.html": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
        "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "bomb_50000x50000.png": _bomb_png(50000, 50000),
        "deep_16bit.png": _png(Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))),
        "palette_transparent.png": _png(_photo(3).convert("P", palette=Image.ADAPTIVE), transparency=0),
        "animated.gif": _animated("GIF"),
        "animated.webp": _animated("WEBP"),
        "exif_rotated.jpg": _exif_rotated(),
        "one_pixel.png": _png(Image.new("RGB", (1, 1), (200, 30, 30))),
        "wide_20000x10.png": _png(_photo(5, (20000, 10))),
        "grey.png": _png(_photo(6).convert("L")),
        "good.jpg": good.getvalue(),
    }
    cmyk = io.BytesIO()
    _photo(7).convert("CMYK").save(cmyk, "JPEG")
    files["cmyk.jpg"] = cmyk.getvalue()
    for i, name in enumerate(("name with spaces.png", "ünïcødé 写真.png", "quote's \"double\".png", "semi;colon.png",
                              "x'; DROP TABLE images; --.png")):
        files[name] = _png(_photo(10 + i))
    assert set(files) == set(LOOSE)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def make_folder(root: Path, outside: Path) -> Path:
    """The loose files plus a symlink to a real image outside ``root``."""
    make_loose(root)
    outside.parent.mkdir(parents=True, exist_ok=True)
    _photo(42).save(outside)
    (root / "link_outside.png").symlink_to(outside)
    return root


def make_zips(root: Path) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "escape.zip", "w") as zf:
        zf.writestr("../escaped.png", _png(_photo(20)))
        zf.writestr(f"/tmp/{ESCAPE_NAME}", _png(_photo(21)))
        zf.writestr("inside/fine.png", _png(_photo(22)))
        zf.writestr(f"{SQL_LABEL}/sql_label.png", _png(_photo(23)))
    _zip_bomb(root / "bomb.zip")
    _lying_bomb(root / "liar.zip")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("deep.png", _png(_photo(30)))
    with zipfile.ZipFile(root / "nested.zip", "w") as zf:
        zf.writestr("inner.zip", inner.getvalue())
        zf.writestr("outer.png", _png(_photo(31)))
    return [root / n for n in ("escape.zip", "bomb.zip", "liar.zip", "nested.zip")]


def outcomes(added: list[str], skipped: list[tuple[str, str]]) -> dict[str, str]:
    """name -> "ok" or the skip reason, from a report's lists."""
    out = {name: "ok" for name in added}
    out.update({name: reason for name, reason in skipped})
    return out

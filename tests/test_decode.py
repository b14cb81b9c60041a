"""Every awkward kind of file either decodes to sane RGB or fails with a reason."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from retrieval.decode import DecodeError, decode, to_pixels
from retrieval.settings import Limits

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_exif_rotation_is_applied():
    im = Image.new("RGB", (40, 20), BLUE)
    im.paste(RED, (0, 0, 20, 20))  # stored: red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    out = decode(_bytes(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.pixels.shape == (40, 20, 3)  # upright: tall
    assert (out.width, out.height) == (20, 40)
    top, bottom = out.pixels[2, 10], out.pixels[37, 10]
    assert top[0] > 200 and top[2] < 60  # red ends up on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode(_bytes(rgba, "PNG")).pixels[0, 0].tolist() == list(WHITE)
    la = Image.new("LA", (4, 4), (0, 0))
    assert decode(_bytes(la, "PNG")).pixels[0, 0].tolist() == list(WHITE)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    out = decode(_bytes(pal, "PNG", transparency=1))
    assert out.pixels[0, 0].tolist() == list(WHITE)


def test_resizing_before_compositing_and_rotating_changes_no_pixel_that_matters():
    """The decoder squashes first, then composites alpha and applies EXIF: as if done the other way round."""
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((1600, 1200))
    alpha = Image.new("L", photo.size, 0)
    alpha.paste(255, (200, 100, 1300, 1100))  # a cutout: opaque middle, transparent frame
    rgba = photo.copy()
    rgba.putalpha(alpha.resize((160, 120)).resize(photo.size, Image.BILINEAR))  # soft edges
    white = Image.new("RGBA", rgba.size, WHITE + (255,))
    reference = np.asarray(Image.alpha_composite(white, rgba).convert("RGB").resize((224, 224), Image.BILINEAR,
                                                                                      reducing_gap=3.0), np.int16)
    ours = decode(_bytes(rgba, "PNG"), 224).pixels.astype(np.int16)
    assert np.abs(ours - reference).mean() < 1.0
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: displayed turned 90 degrees counter-clockwise
    rotated = decode(_bytes(photo, "JPEG", quality=95, exif=exif.tobytes()), 224).pixels.astype(np.int16)
    upright = np.asarray(photo.transpose(Image.Transpose.ROTATE_90).resize((224, 224), Image.BILINEAR,
                                                                             reducing_gap=3.0), np.int16)
    assert np.abs(rotated - upright).mean() < 4.0  # JPEG at 1/4 scale against a lossless reference


def test_phone_multi_picture_jpegs_are_decoded_at_reduced_scale_too():
    """Many phones write MPO (a JPEG with a second frame); Pillow names it "MPO", and it must not decode at full size."""
    from skimage import data

    big = Image.fromarray(data.astronaut()).resize((2048, 2048))
    buf = io.BytesIO()
    big.save(buf, "MPO", save_all=True, append_images=[big.resize((256, 256))], quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.format == "MPO"
        im.draft("RGB", (224, 224))
        assert im.size == (256, 256)  # what draft gives a JPEG-coded frame: 1/8 scale
        drafted = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR, reducing_gap=3.0))
    out = decode(buf.getvalue(), 224)
    assert out.format == "MPO" and (out.width, out.height) == (2048, 2048)
    np.testing.assert_array_equal(out.pixels, drafted)  # decoded from the 1/8-scale DCT, not the full frame


def test_grey_cmyk_and_16_bit_become_rgb():
    grey = decode(_bytes(Image.new("L", (5, 5), 100), "PNG")).pixels
    assert grey.shape == (5, 5, 3) and grey[0, 0].tolist() == [100, 100, 100]
    cmyk = decode(_bytes(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")).pixels
    assert cmyk.shape == (8, 8, 3) and cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    deep = decode(_bytes(Image.fromarray(ramp), "PNG")).pixels
    assert deep[0, 0, 0] == 0 and deep[-1, -1, 0] == 255
    assert 100 < deep[4, 0, 0] < 160  # scaled, not clipped to white


def test_animation_takes_first_frame():
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    for fmt in ("GIF", "WEBP"):
        data = _bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        px = decode(data).pixels[4, 4]
        assert px[0] > 200 and px[2] < 60, fmt


def test_resize_and_jpeg_draft():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8))
    out = decode(_bytes(big, "JPEG", quality=80), size=224)
    assert out.pixels.shape == (224, 224, 3) and (out.width, out.height) == (4000, 3000)
    assert decode(_bytes(Image.new("RGB", (1, 1), RED), "PNG"), size=32).pixels.shape == (32, 32, 3)
    assert decode(_bytes(Image.new("RGB", (20000, 10), RED), "PNG"), size=32).pixels.shape == (32, 32, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, I am text with a .jpg name", "not an image"),
        (b"<html><body>hi</body></html>", "not an image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not an image"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(data)


def test_truncated_jpeg_is_refused():
    full = _bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode(full[: len(full) // 2])


def test_decompression_bomb_is_refused_from_the_header():
    started = time.perf_counter()
    with pytest.raises(DecodeError, match="too many pixels: 2,500,000,000 pixels exceeds"):
        decode(_png_declaring(50000, 50000))
    assert time.perf_counter() - started < 5  # refused before decoding, not after
    with pytest.raises(DecodeError, match="too many pixels"):
        decode(_bytes(Image.new("RGB", (100, 100)), "PNG"), limits=Limits(max_pixels=5000))


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="file not found"):
        decode(tmp_path / "nope.jpg")


@pytest.mark.parametrize("photo, size", [("astronaut", 224), ("coffee", 96), ("camera", None)])
def test_every_form_of_an_image_gives_the_same_pixels(tmp_path, photo, size):
    """A path, its bytes, a PIL image and an array of one lossless PNG reach the model identically."""
    from skimage import data

    original = getattr(data, photo)()  # camera is grey (H, W): converted to RGB like a grey file
    path = tmp_path / f"{photo}.png"
    Image.fromarray(original).save(path)
    expected = to_pixels(path, size)
    side = (size, size) if size else original.shape[:2]
    assert expected.dtype == np.uint8 and expected.shape == (*side, 3)
    assert np.array_equal(expected, decode(path, size).pixels)
    for form in (str(path), path.read_bytes(), Image.open(path), np.asarray(Image.open(path)), original):
        np.testing.assert_array_equal(to_pixels(form, size), expected)


def test_to_pixels_composites_transparency_like_a_file():
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    assert to_pixels(rgba, None)[0, 0].tolist() == list(WHITE)
    assert np.array_equal(to_pixels(rgba, 4), to_pixels(_bytes(Image.fromarray(rgba), "PNG"), 4))


@pytest.mark.parametrize("bad, reason", [
    (np.zeros((8, 8, 3), np.float64), "not an image array"),
    (np.zeros((2, 2, 2, 2), np.uint8), "not an image array"),
    (np.zeros((0, 8, 3), np.uint8), "no pixels"),
    (42, "not an image"),
    (b"", "empty file"),
    (b"plain text", "not an image"),
])
def test_to_pixels_refuses_what_is_no_image(bad, reason):
    with pytest.raises(DecodeError, match=reason):
        to_pixels(bad, 32)


def test_to_pixels_keeps_the_pixel_limit_for_images_in_memory():
    with pytest.raises(DecodeError, match="too many pixels"):
        to_pixels(np.zeros((100, 100, 3), np.uint8), 32, Limits(max_pixels=5000))

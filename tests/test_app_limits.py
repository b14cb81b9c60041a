"""Upload caps are enforced by the server, whatever the page or a client does.

A second app runs with tiny caps (3 files, 1 MB, 250,000 pixels). The raw
upload route is called directly, bypassing gradio_client's own size check,
so the refusal is the server's.
"""

from __future__ import annotations

import io
import zipfile

import httpx
import numpy as np
import pytest
from conftest import start_app, stop_app
from PIL import Image


@pytest.fixture(scope="module")
def small_app(tmp_path_factory):
    data = tmp_path_factory.mktemp("limited")
    proc, url, log = start_app(data, "--max-files", "3", "--max-upload-mb", "1", "--max-pixels", "250000")
    yield url
    stop_app(proc, log)


def _png(seed: int, size: int, noise: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    if noise:  # incompressible: the file is as big as its pixels
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:size, 0:size]
        img = (127.5 * (1 + np.stack([np.sin(0.05 * x + seed), np.cos(0.07 * y), np.sin(0.03 * (x + y))], -1))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_oversized_upload_is_refused_by_the_server(small_app):
    big = bytes(2 * 1024 * 1024)
    resp = httpx.post(small_app + "gradio_api/upload", files={"files": ("big.png", big)}, timeout=30)
    assert resp.status_code == 413, resp.text[:300]
    small = httpx.post(small_app + "gradio_api/upload", files={"files": ("ok.png", _png(0, 64))}, timeout=30)
    assert small.status_code == 200  # the route itself works


def test_file_pixel_and_byte_caps_name_the_limit(small_app, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(small_app, verbose=False)
    files = []
    for i in range(5):
        path = tmp_path / f"small{i}.png"
        path.write_bytes(_png(i, 64))
        files.append(handle_file(str(path)))
    summary, _, _ = client.predict(files, api_name="/add_images")
    assert "**3 added**" in summary and "file limit reached: at most 3 files per upload" in summary

    large = tmp_path / "large.png"
    large.write_bytes(_png(9, 600))  # 360,000 pixels
    summary, _, _ = client.predict([handle_file(str(large))], api_name="/add_images")
    assert "**0 added**" in summary and "too many pixels" in summary

    archive = tmp_path / "heavy.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:  # 3 x 480 KB of BMP, deflated to a small zip
        for i in range(3):
            buf = io.BytesIO()
            flat = np.full((400, 400, 3), 40 * i, np.uint8)
            flat[50 * i:50 * i + 120, 100:300] = (200, 80, 30 * i)  # distinct content, compresses well
            Image.fromarray(flat).save(buf, "BMP")
            zf.writestr(f"smooth/s{i}.bmp", buf.getvalue())
    assert archive.stat().st_size < 1024 * 1024
    summary, _, _ = client.predict([handle_file(str(archive))], api_name="/add_images")
    assert "**2 added**" in summary and "size limit reached: at most 1 MB per upload" in summary, summary

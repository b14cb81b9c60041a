"""Shared fixtures: real photos from scikit-image, a real SQLite file, one model.

The model is loaded once per test session (``studio``): it is the slow part,
and every service-level test uses the same default backbone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory):
    """Keep converted models and Keras' cache inside the test's temp folder."""
    base = tmp_path_factory.mktemp("home")
    os.environ["RETRIEVAL_CACHE_DIR"] = str(base / "cache")
    os.environ["RETRIEVAL_DATA_DIR"] = str(base / "data")
    os.environ["KERAS_HOME"] = str(base / "keras")
    yield


def _save(img: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, **kw)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """Three labelled groups of real photos, near-duplicates and one bad file."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    chelsea, cat, coffee = data.chelsea(), data.cat(), data.coffee()
    _save(chelsea, root / "cats" / "chelsea.jpg", quality=92)
    _save(chelsea[:, ::-1].copy(), root / "cats" / "chelsea_flipped.jpg", quality=92)
    _save(cat[30:280, 40:420].copy(), root / "cats" / "cat_crop.png")
    _save(coffee, root / "coffee" / "coffee.jpg", quality=92)
    _save(coffee[40:360, 80:520].copy(), root / "coffee" / "coffee_crop.jpg", quality=92)
    _save(np.clip(coffee.astype(int) + 40, 0, 255).astype(np.uint8), root / "coffee" / "coffee_bright.jpg")
    _save(data.astronaut(), root / "space" / "astronaut.jpg", quality=92)
    _save(data.rocket(), root / "space" / "rocket.jpg", quality=92)
    _save(np.stack([data.camera()] * 3, axis=-1), root / "space" / "camera.png")
    (root / "space" / "notes.jpg").write_text("this is text, not a JPEG")
    return root


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    from retrieval import Studio

    s = Studio(tmp_path_factory.mktemp("db") / "gallery.sqlite", device="cpu")
    yield s
    s.close()


@pytest.fixture(scope="session")
def indexed(studio, photo_folder):
    """The photo folder indexed once with the default configuration."""
    report = studio.index(photo_folder, collection="photos")
    return report


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(data: Path, *extra: str):
    """The real app in a subprocess on a free port; returns (process, url, log file)."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = Path(__file__).resolve().parents[1]
    port = _free_port()
    log = open(data / "app.log", "w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--data-dir", str(data), *extra],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return proc, url, log
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"app did not start: {(data / 'app.log').read_text()[-3000:]}")
        time.sleep(0.5)


def stop_process(proc, timeout: float = 20) -> None:
    """Ask a server to stop; kill it if it has not within ``timeout`` seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_app(proc, log) -> None:
    stop_process(proc)
    log.close()


APP: dict = {}  # the running app's pid and data folder, for tests that inspect the server process


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """The real app, default settings, its own data folder."""
    data = tmp_path_factory.mktemp("appdata")
    proc, url, log = start_app(data)
    APP.update(pid=proc.pid, data=data)
    yield url
    stop_app(proc, log)


@pytest.fixture
def gallery_zip(tmp_path, photo_folder):
    """A labelled zip of three real photos plus one corrupt file."""
    import zipfile

    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(photo_folder / "space" / "camera.png", "cameraman/camera.png")
        zf.write(photo_folder / "coffee" / "coffee_bright.jpg", "espresso/bright.jpg")
        zf.write(photo_folder / "space" / "rocket.jpg", "launch/rocket.jpg")
        zf.writestr("espresso/corrupt.jpg", (photo_folder / "coffee" / "coffee.jpg").read_bytes()[:700])
    return path

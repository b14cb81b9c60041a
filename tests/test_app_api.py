"""The app's API through gradio_client, against a real server in a subprocess."""

import hashlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gradio_client import Client, handle_file  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_search_returns_the_demo_image_itself_first(client):
    query = DEMO / "cat" / "chelsea.jpg"
    gallery, timings = client.predict(handle_file(str(query)), api_name="/search")
    assert gallery[0]["caption"].startswith("#1 · ") and gallery[0]["caption"].endswith("· cat")
    assert _sha(gallery[0]["image"]) == _sha(query)
    assert "embed" in timings and "CPU" in timings
    assert len(gallery) == 8


def test_search_parameters_are_honoured(client):
    gallery, timings = client.predict(handle_file(str(DEMO / "coffee" / "coffee.jpg")), "colorhist", "gem", "euclidean",
                                      "none", "none", 3, "cpu", api_name="/search")
    assert len(gallery) == 3 and _sha(gallery[0]["image"]) == _sha(DEMO / "coffee" / "coffee.jpg")


def test_search_names_its_runtime_and_honours_a_runtime_choice(client):
    """The default runs through the runtime auto chose (checked against Keras); Keras can be asked for by name."""
    query = handle_file(str(DEMO / "cat" / "chelsea.jpg"))
    auto, auto_timings = client.predict(query, api_name="/search")
    keras, keras_timings = client.predict(query, runtime="keras", api_name="/search")
    assert "**OpenVINO " in auto_timings and "**Keras f32**" in keras_timings
    assert [_sha(g["image"]) for g in auto[:3]] == [_sha(g["image"]) for g in keras[:3]]  # same photos first


def _camera(gallery_zip: Path) -> Path:
    import zipfile

    out = gallery_zip.parent / "camera_query.png"
    with zipfile.ZipFile(gallery_zip) as zf:
        out.write_bytes(zf.read("cameraman/camera.png"))
    return out


def test_add_images_zip_skips_the_corrupt_file_and_stays_private(app_url, gallery_zip):
    uploader = Client(app_url, verbose=False)
    summary, gallery, info = uploader.predict([handle_file(str(gallery_zip))], api_name="/add_images")
    assert "**3 added**" in summary
    assert "upload.zip/espresso/corrupt.jpg" in summary and "**1 skipped**" in summary
    assert "your private gallery" in info
    assert any(g["caption"].startswith("cameraman · ") for g in gallery)
    query = handle_file(str(_camera(gallery_zip)))
    # The uploader's own searches see the new images ...
    found, _ = uploader.predict(query, api_name="/search")
    assert found[0]["caption"].endswith("· cameraman")
    # ... and another session never does, however many results it asks for.
    other, _ = Client(app_url, verbose=False).predict(query, k=50, api_name="/search")
    assert len(other) == 50
    assert not any(g["caption"].endswith(("· cameraman", "· espresso", "· launch")) for g in other)


def test_evaluate_returns_figures(client):
    table, curve, classes, files, note = client.predict(["efficientnet-lite1", "pixels"], api_name="/evaluate")
    headers, rows = table["headers"], table["data"]
    by_name = {row[0]: dict(zip(headers, row)) for row in rows}
    cnn, pixels = by_name["efficientnet-lite1 · GeM p=3"], by_name["pixels"]
    assert cnn["queries"] == 70 and 0.5 < cnn["mAP"] <= 1.0
    assert cnn["mAP"] > pixels["mAP"]
    assert sorted(Path(f).suffix for f in files) == [".csv", ".json"]
    assert "70 labelled queries" in note


def test_heavy_jobs_run_one_at_a_time_and_searches_never_wait_behind_them(app_url):
    """On a small shared box evaluation and training share one slot (for every user); searches have their own."""
    import time

    from gradio_client.utils import Status

    first, second, searcher = (Client(app_url, verbose=False) for _ in range(3))
    slow = first.submit(["fusion-lite"], api_name="/evaluate")  # three networks per image, nothing cached yet
    deadline = time.monotonic() + 120
    while slow.status().code not in (Status.PROCESSING, Status.ITERATING):
        assert time.monotonic() < deadline and not slow.done(), slow.status()
        time.sleep(0.2)
    quick = second.submit(["colorhist"], api_name="/evaluate")  # another user's evaluation: it waits its turn
    waited = False
    found, _ = searcher.predict(handle_file(str(DEMO / "coffee" / "coffee.jpg")), k=3, api_name="/search")
    assert not slow.done(), "the search should have been answered while the evaluation still ran"
    assert "coffee" in found[0]["caption"]
    while not slow.done():
        waited = waited or quick.status().code == Status.IN_QUEUE
        assert not quick.done(), "a second evaluation ran beside the first"
        time.sleep(0.2)
    assert waited
    table, *_ = quick.result(timeout=120)
    assert table["data"][0][0].startswith("colorhist")

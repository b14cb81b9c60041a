"""Sessions through the running app (gradio_client against a real server in a subprocess).

Which gallery a tab works on is decided by the service (``Studio.session``);
these tests pin down what a user sees of that:

- a session whose gallery expired (or was reset) never leaks into the next
  new session, and its own tab carries on, without an error, on a fresh copy
  of the demo with a one-line note, never on its old gallery;
- a second backbone used in Compare before an upload sees the new images after it;
- two uploads started at once from one fresh page end in one gallery.

The expiry tests run their own app with a short ``--session-ttl`` and a fast
``--cleanup-every``; the others use the shared default app. Searches use the
backbone uploads are indexed with; Compare uses the numpy backbones.
"""

import hashlib
import io
import os
import re
import time
import zipfile
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import start_app, stop_app
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
from gradio_client import Client, handle_file

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEMO_FILES = sorted(p for p in DEMO.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
TTL_S = 12  # short enough to wait for, long enough for one session's upload and searches on a busy machine
CLEANUP_EVERY_S = 0.5
# Searches use the backbone uploads are indexed with (the default CNN), so that a session test fails only for
# what it is about; Compare's test is the one about a second backbone (numpy ones, fast).
PLAIN = {"rerank": "none", "whiten": "none", "device": "cpu"}


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _png(seed: int) -> bytes:
    """A smooth image of its own colours: no two seeds look alike to colorhist or pixels, none is a demo image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:64]
    freq, phase = rng.uniform(0.03, 0.3, 3), rng.uniform(0, 6.3, 3)
    img = np.stack([np.sin(freq[c] * (x + (c + 1) * y) + phase[c]) for c in range(3)], -1)
    buf = io.BytesIO()
    Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Upload:
    """A labelled zip of generated images; ``words`` are the names and labels it brings into a gallery."""

    def __init__(self, folder: Path, tag: str, seeds):
        self.label = f"{tag}label"
        self.path = folder / f"{tag}.zip"
        self.files: dict[str, Path] = {}  # display name -> a copy on disk, to query with
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(self.path, "w") as zf:
            for seed in seeds:
                name = f"{tag}file-{seed}.png"
                data = _png(seed)
                zf.writestr(f"{self.label}/{name}", data)
                (folder / name).write_bytes(data)
                self.files[name] = folder / name
        self.paths = list(self.files.values())
        self.hashes = {_sha(p) for p in self.paths}
        self.words = {tag, self.label, *self.files}

    def query(self, i: int = 0):
        return handle_file(str(self.paths[i]))


def _client(url: str) -> Client:
    """One browser tab's worth of session. Files are not downloaded: listings are read by their captions,
    and results fetched one by one (``_served``)."""
    return Client(url, verbose=False, download_files=False)


def _served(item) -> str:
    """The sha256 of the file the server serves for a gallery or result item."""
    response = httpx.get(item["image"]["url"], timeout=30)
    assert response.status_code == 200, f"{item['caption']}: the server cannot serve its file ({response.status_code})"
    return hashlib.sha256(response.content).hexdigest()


def _captions(items) -> list[str]:
    return [g["caption"] for g in items]


def _leaks(items, upload: Upload, files: bool = False) -> set[str]:
    """Names or labels of ``upload`` in a gallery or result list (and, with ``files``, its images)."""
    text = " ".join(_captions(items))
    found = {w for w in upload.words if w in text}
    if files:
        found |= {g["caption"] for g in items if _served(g) in upload.hashes}
    return found


def _note(message: str) -> str | None:
    """The session's one-line note at the head of a handler's message, if any."""
    match = re.match(r"\*\*Note:\*\* (.+?)\n\n", message)
    return match.group(1) if match else None


def _stored(data: Path, upload: Upload) -> set[str]:
    """Which of the upload's files the server still keeps (uploads are stored by content hash)."""
    root = data / "images"
    names = [p.name for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    return {h for h in upload.hashes if any(h in n for n in names)}


def _wait_until_gone(data: Path, upload: Upload, timeout: float) -> float:
    """Wait for the server to delete the upload's files (its gallery was dropped); returns the seconds waited."""
    started = time.monotonic()
    while _stored(data, upload):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the gallery was not dropped within {timeout:.0f} s: {len(_stored(data, upload))} "
                                 "of its files are still stored")
        time.sleep(0.25)
    return time.monotonic() - started


def _add(client: Client, upload: Upload):
    summary, gallery, info = client.predict([handle_file(str(upload.path))], api_name="/add_images")
    assert f"**{len(upload.files)} added**" in summary, summary
    assert "your private gallery" in info, info
    return summary, gallery, info


def _search(client: Client, query, k: int = 5):
    return client.predict(query, k=k, **PLAIN, api_name="/search")


def _demo_captions(gallery, upload: Upload) -> set[str]:
    """The demo's part of a listing: everything but the upload's own entries."""
    demo = {c for c in _captions(gallery) if not any(w in c for w in upload.words)}
    assert len(demo) == len(DEMO_FILES), (len(demo), len(DEMO_FILES))
    return demo


def _own_gallery_only(client: Client, mine: Upload, other: Upload) -> None:
    """``client`` uploads ``mine`` and sees exactly the demo plus ``mine``: nothing of ``other`` anywhere."""
    _, gallery, info = _add(client, mine)
    assert not _leaks(gallery, other)
    own = [c for c in _captions(gallery) if any(w in c for w in mine.words)]
    assert sorted(n for c in own for n in mine.files if n in c) == sorted(mine.files), own
    assert len(gallery) == len(DEMO_FILES) + len(mine.files), len(gallery)
    assert f"**{len(DEMO_FILES) + len(mine.files)} images**" in info, info
    for i in range(len(mine.files)):
        found, timings = _search(client, mine.query(i))
        assert _note(timings) is None, timings
        assert _served(found[0]) == _sha(mine.paths[i]), found[0]["caption"]
        assert not _leaks(found, other, files=True)
    # the other's images as queries: nothing of theirs comes back (were it there, it would come first)
    for i in range(len(other.files)):
        found, _ = _search(client, other.query(i))
        assert len(found) == 5 and not _leaks(found, other, files=True), _leaks(found, other)


# -- a session's gallery expires or is reset ----------------------------------


@pytest.fixture(scope="module")
def short_ttl_app(tmp_path_factory):
    """The app with sessions that expire after TTL_S seconds without use, swept every CLEANUP_EVERY_S."""
    data = tmp_path_factory.mktemp("sessions-app")
    started = time.monotonic()
    proc, url, log = start_app(data, "--session-ttl", str(TTL_S), "--cleanup-every", str(CLEANUP_EVERY_S))
    _search(_client(url), handle_file(str(DEMO_FILES[0])), k=1)  # the demo is indexed, the model loaded
    print(f"short-TTL app ready in {time.monotonic() - started:.1f} s")
    yield url, data
    stop_app(proc, log)


def _session_a(url: str, upload: Upload) -> tuple[Client, set[str]]:
    """Session A uploads and searches (and finds its own image); returns its client and the demo's captions."""
    a = _client(url)
    _, gallery, _ = _add(a, upload)
    demo = _demo_captions(gallery, upload)
    found, timings = _search(a, upload.query())
    assert _served(found[0]) == _sha(upload.paths[0]) and _note(timings) is None, timings
    return a, demo


def _tab_after(a: Client, old: Upload, demo: set[str], data: Path, expect_note: bool, folder: Path) -> None:
    """A's tab after its gallery went: searches answer from a copy of the demo; the old gallery never returns."""
    found, timings = _search(a, old.query(), k=20)
    note = _note(timings)
    if expect_note:
        assert note and "\n" not in note and "demo" in note, timings  # one line, in the message area, not an error
    else:
        assert note is None, timings  # a reset is the user's own doing: nothing to explain
    assert "embed" in timings  # and the search's own line is still there
    assert len(found) == 20 and not _leaks(found, old, files=True)
    demo_labels = {d.split(" · ")[0] for d in demo}
    assert all(c.split(" · ", 2)[2] in demo_labels for c in _captions(found)), _captions(found)
    # The tab stays on its new gallery: no second note, and an upload lands there beside a full demo.
    again, timings = _search(a, old.query())
    assert _note(timings) is None and not _leaks(again, old, files=True), timings
    extra = Upload(folder, "gamma", [900])
    _, gallery, _ = _add(a, extra)
    assert not _leaks(gallery, old)
    assert set(_captions(gallery)) == demo | {c for c in _captions(gallery) if extra.label in c}
    assert len(gallery) == len(demo) + 1
    assert not _stored(data, old)  # and the old gallery's files were never brought back


def test_expired_session_never_leaks_into_the_next_and_its_tab_gets_a_fresh_demo(short_ttl_app, tmp_path):
    url, data = short_ttl_app
    alpha, beta = Upload(tmp_path / "a", "alpha", [1, 2, 3]), Upload(tmp_path / "b", "beta", [4, 5, 6])
    a, demo = _session_a(url, alpha)
    waited = _wait_until_gone(data, alpha, timeout=TTL_S + 30)
    print(f"A expired after {waited:.1f} s more")
    _own_gallery_only(_client(url), beta, alpha)  # B, a new session, after A expired
    _tab_after(a, alpha, demo, data, expect_note=True, folder=tmp_path / "a2")


def test_reset_session_never_leaks_into_the_next_and_its_tab_is_back_on_the_demo(short_ttl_app, tmp_path):
    url, data = short_ttl_app
    alpha, beta = Upload(tmp_path / "a", "delta", [11, 12, 13]), Upload(tmp_path / "b", "epsilon", [14, 15, 16])
    a, demo = _session_a(url, alpha)
    gallery, info = a.predict(api_name="/reset")
    assert "shared demo gallery" in info and set(_captions(gallery)) == demo, info
    _wait_until_gone(data, alpha, timeout=10)  # a reset drops the gallery at once
    _own_gallery_only(_client(url), beta, alpha)
    _tab_after(a, alpha, demo, data, expect_note=False, folder=tmp_path / "a2")


# -- the shared default app ---------------------------------------------------


def test_second_backbone_in_compare_finds_images_uploaded_after_it_was_used(app_url, tmp_path):
    client = _client(app_url)
    sides = {"a_backbone": "colorhist", "a_pooling": "gem", "a_metric": "cosine", "a_rerank": "none",
             "b_backbone": "pixels", "b_pooling": "gem", "b_metric": "euclidean", "b_rerank": "none",
             "a_device": "cpu", "b_device": "cpu"}
    # both backbones used on the (demo) gallery before the upload
    a, _, b, _, _ = client.predict(handle_file(str(DEMO / "cat" / "chelsea.jpg")), k=5, **sides, api_name="/compare")
    assert len(a) == 5 and len(b) == 5
    upload = Upload(tmp_path, "zeta", [21, 22, 23])
    _add(client, upload)
    for i, path in enumerate(upload.paths):
        a, _, b, _, summary = client.predict(upload.query(i), k=5, **sides, api_name="/compare")
        assert _served(a[0]) == _sha(path), a[0]["caption"]
        assert _served(b[0]) == _sha(path), b[0]["caption"]  # Compare's B side sees the new images too
        assert _note(summary) is None


def test_two_uploads_started_at_once_from_a_fresh_page_end_in_one_gallery(app_url, tmp_path):
    client = _client(app_url)
    first, second = Upload(tmp_path / "1", "eta", range(30, 36)), Upload(tmp_path / "2", "theta", range(40, 46))
    jobs = [client.submit([handle_file(str(u.path))], api_name="/add_images") for u in (first, second)]
    try:
        results = [job.result(timeout=300) for job in jobs]
    except FutureTimeout:
        pytest.fail("the uploads did not finish")
    for (summary, _, info), upload in zip(results, (first, second)):
        assert f"**{len(upload.files)} added**" in summary and "your private gallery" in info, summary
    # the page's next actions see both uploads, in one gallery
    for upload in (first, second):
        for i, path in enumerate(upload.paths):
            found, _ = _search(client, upload.query(i), k=1)
            assert _served(found[0]) == _sha(path), (upload.label, found[0]["caption"])
    extra = Upload(tmp_path / "3", "iota", [50])
    _, gallery, _ = _add(client, extra)
    assert len(gallery) == len(DEMO_FILES) + len(first.files) + len(second.files) + 1

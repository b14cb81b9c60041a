"""Two sessions upload different galleries: neither sees the other's images or labels anywhere.

Checked through every way the API shows a gallery: search results (asking for
as many as allowed, with the other's image as the query), the gallery listing
an upload returns, and evaluation (table, plots and the exported files). Then
one session tries to read files it should not, by path and by guessed hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import APP

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from gradio_client import Client, handle_file  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
GALLERIES = {
    "A": {"alpha-cats/alphafile-chelsea.jpg": "cats/chelsea.jpg", "alpha-cats/alphafile-flipped.jpg": "cats/chelsea_flipped.jpg",
          "alpha-coffee/alphafile-coffee.jpg": "coffee/coffee.jpg", "alpha-coffee/alphafile-crop.jpg": "coffee/coffee_crop.jpg"},
    "B": {"beta-space/betafile-astronaut.jpg": "space/astronaut.jpg", "beta-space/betafile-rocket.jpg": "space/rocket.jpg",
          "beta-camera/betafile-camera.png": "space/camera.png", "beta-camera/betafile-cat.png": "cats/cat_crop.png"},
}


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sessions(app_url, photo_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    out = {}
    for who, entries in GALLERIES.items():
        archive = root / f"{who}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for name, source in entries.items():
                zf.write(photo_folder / source, name)
        client = Client(app_url, verbose=False)
        summary, gallery, info = client.predict([handle_file(str(archive))], api_name="/add_images")
        assert f"**{len(entries)} added**" in summary, summary
        out[who] = {"client": client, "gallery": gallery, "archive": archive,
                    "hashes": {_sha(photo_folder / s) for s in entries.values()},
                    "words": {n.split("/")[0] for n in entries} | {n.split("/")[1] for n in entries},
                    "queries": [photo_folder / s for s in entries.values()]}
    return out


def _leaks(text: str, words: set[str]) -> set[str]:
    return {w for w in words if w in text}


@pytest.mark.parametrize("me, other", [("A", "B"), ("B", "A")])
def test_search_never_returns_the_other_sessions_images(sessions, me, other):
    client = sessions[me]["client"]
    for query in sessions[other]["queries"]:
        found, _ = client.predict(handle_file(str(query)), k=50, api_name="/search")
        assert len(found) == 50
        assert not {_sha(g["image"]) for g in found} & sessions[other]["hashes"]
        assert not _leaks(json.dumps([g["caption"] for g in found]), sessions[other]["words"])
    # and the session does see its own uploads (the check above can fail)
    own, _ = client.predict(handle_file(str(sessions[me]["queries"][0])), k=1, api_name="/search")
    assert _sha(own[0]["image"]) in sessions[me]["hashes"]


@pytest.mark.parametrize("me, other", [("A", "B"), ("B", "A")])
def test_gallery_listing_and_evaluation_hold_only_my_labels(sessions, me, other, tmp_path):
    client = sessions[me]["client"]
    extra = tmp_path / "extra.png"
    extra.write_bytes((DEMO / "coffee" / "coffee.jpg").read_bytes())
    _, gallery, info = client.predict([handle_file(str(extra))], api_name="/add_images")
    captions = json.dumps([g["caption"] for g in gallery])
    assert not _leaks(captions, sessions[other]["words"])
    assert _leaks(captions, sessions[me]["words"])  # own labels are listed
    table, curve, classes, files, note = client.predict(["efficientnet-lite1"], api_name="/evaluate")
    everything = json.dumps([table, curve, classes, note]) + "".join(Path(f).read_text() for f in files)
    assert not _leaks(everything, sessions[other]["words"])
    assert any(w.startswith(("alpha", "beta")) for w in _leaks(everything, sessions[me]["words"]))


def _status(app_url: str, path: str) -> int:
    url = app_url + "gradio_api/file=" + urllib.parse.quote(path)
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_files_cannot_be_read_by_guessing_paths_or_hashes(sessions, app_url, photo_folder):
    data = Path(APP["data"])
    assert _status(app_url, str(DEMO / "cat" / "chelsea.jpg")) == 200  # the route works for what is public
    real = sorted((data / "images").rglob("*.jpg"))[0]
    guesses = [
        data / "retrieval.sqlite",  # the database beside the images
        data / "app.log",
        data / "images" / ".." / "retrieval.sqlite",  # traversal out of an allowed folder
        Path("/etc/passwd"),
        real.with_name(hashlib.sha256(b"a guess").hexdigest() + ".jpg"),  # a well-formed but wrong hash
        real.with_name(real.stem[:-1] + "0" + real.suffix),  # a near miss of a real one
        data / "exports" / "000000000000",  # an export folder name guessed
    ]
    for path in guesses:
        if path.exists() and path.is_file() and path == real:
            continue
        assert _status(app_url, str(path)) in (403, 404), path


def test_a_model_trained_in_one_session_is_not_offered_to_another(sessions, app_url):
    from gradio_client.exceptions import AppError

    a, b = sessions["A"]["client"], sessions["B"]["client"]
    result = a.predict("head", 10, "efficientnet-lite1", api_name="/adapt")
    status = result[0]
    name = re.search(r"\*\*(head-lite1-[0-9a-f]+)\*\*", status).group(1)
    query = handle_file(str(sessions["A"]["queries"][0]))
    found, _ = a.predict(query, name, k=1, api_name="/search")  # the trainer can use it
    assert _sha(found[0]["image"]) in sessions["A"]["hashes"]
    with pytest.raises(AppError, match="not in the list of choices|unknown or unavailable backbone"):
        b.predict(query, name, k=1, api_name="/search")

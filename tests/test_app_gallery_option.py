"""``app.py --gallery NAME``: the app shares a gallery of its database instead of the demo.

Real everything: a gallery indexed by a real Studio, published to a real
Milvus Lite file, the real app in a subprocess, and Debian's Chromium driven
by Playwright (as tests/test_app_browser.py does). The gallery is served from
Milvus, so the page must say so, search it with what Milvus can rank with,
refuse what it cannot (in one line), and never fork it into a private copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import start_app, stop_app

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 120_000
# 12 photos in 4 labels; each label's "_faded" variant stays out, to ask with
MINE = {"cat": ("chelsea.jpg", "chelsea_crop.jpg", "chelsea_flipped.jpg"),
        "coffee": ("coffee.jpg", "coffee_crop.jpg", "coffee_flipped.jpg"),
        "rocket": ("rocket.jpg", "rocket_crop.jpg", "rocket_flipped.jpg"),
        "astronaut": ("astronaut.jpg", "astronaut_crop.jpg", "astronaut_flipped.jpg")}


# -- the argument ------------------------------------------------------------------------------------------------
def test_every_app_argument_has_help_and_gallery_reads_its_env(monkeypatch, tmp_path):
    import app

    parser = app.build_parser()
    missing = [a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"app.py arguments without help: {missing}"
    gallery = next(a for a in parser._actions if "--gallery" in a.option_strings)
    assert "RETRIEVAL_GALLERY" in gallery.help and "--collection" in gallery.help

    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("RETRIEVAL_GALLERY", raising=False)
    assert app.parse_args([]).gallery is None  # the demo, as before
    monkeypatch.setenv("RETRIEVAL_GALLERY", "from-env")
    assert app.parse_args([]).gallery == "from-env"
    assert app.parse_args(["--gallery", "mine"]).gallery == "mine"  # the flag wins


def test_serving_the_gallerys_folders_beyond_this_machine_is_warned_about(monkeypatch, tmp_path):
    import app

    gallery = next(a for a in app.build_parser()._actions if "--gallery" in a.option_strings)
    assert "--share" in gallery.help and "downloaded" in gallery.help
    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path))
    for name in ("RETRIEVAL_GALLERY", "GRADIO_SERVER_NAME", "SYSTEM", "SPACE_ID"):  # the defaults: loopback
        monkeypatch.delenv(name, raising=False)
    folders = ["/photos/cat", "/photos/dog"]

    def warning(*argv):
        return app.exposure_warning(app.parse_args(list(argv)), folders)

    assert warning("--gallery", "mine") is None  # loopback, no link: this machine only
    assert warning("--gallery", "mine", "--host", "::1") is None
    assert warning("--host", "0.0.0.0") is None  # the demo: no outside folders
    shared = warning("--gallery", "mine", "--share")
    assert shared.startswith("warning: ") and "2 image folders" in shared and "\n" not in shared, shared
    public = warning("--gallery", "mine", "--host", "0.0.0.0")
    assert "2 image folders" in public and "0.0.0.0" in public, public


# -- the real app on a Milvus-served gallery -------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A data folder whose database holds "mine" (12 real photos), published to a Milvus Lite file."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")

    base = tmp_path_factory.mktemp("gallery-option")
    photos, data = base / "photos", base / "data"
    for label, names in MINE.items():
        (photos / label).mkdir(parents=True)
        for name in names:
            shutil.copy(DEMO / label / name, photos / label / name)
    data.mkdir()
    # In a process of its own: Studio.close() closes SQLite but not the Milvus Lite client, which holds the
    # file until its process ends; the app must be the one process holding it from now on.
    script = """
import sys
from retrieval import Studio
data, photos = sys.argv[1], sys.argv[2]
studio = Studio(data + "/retrieval.sqlite", device="cpu")
assert len(studio.index(photos, "mine").added) == 12
studio.publish("mine", to=data + "/vectors.db")
assert studio.served_by("mine")["kind"] == "milvus"
studio.close()
"""
    done = subprocess.run([sys.executable, "-c", script, str(data), str(photos)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return data, photos


def test_a_missing_gallery_stops_the_app_with_one_line(served):
    data, _ = served
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "app.py", "--data-dir", str(data), "--gallery", "missing", "--port", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: no gallery named 'missing'"), lines
    assert "python -m retrieval index FOLDER --collection missing" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.fixture(scope="module")
def app_on_mine(served):
    data, photos = served
    proc, url, log = start_app(data, "--gallery", "mine")
    yield url, photos, data
    stop_app(proc, log)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI: Chromium is missing (apt-get install chromium); browser tests must run in CI")
        pytest.skip("Chromium not installed; run tests/install.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_on_mine):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_on_mine[0])
    page.wait_for_selector("#status:has-text('Ready')")
    page.locator("#search-timings:has-text('embed')").wait_for()  # the opening example, answered
    yield page
    context.close()


TIMINGS = "() => (document.querySelector('#search-timings [data-testid=markdown], #search-timings .prose') || {}).innerText"


def _search(page) -> str:
    """Click Search; the answer's timings line (its milliseconds differ from the previous answer's)."""
    before = page.evaluate(TIMINGS)
    page.locator("#search-button").click()
    page.wait_for_function(f"before => {{ const t = ({TIMINGS})(); return t && t.includes(' ms') && t !== before; }}",
                           arg=before)
    return page.evaluate(TIMINGS)


def _upload_query(page, path) -> None:
    clear = page.locator("#query-image").get_by_role("button", name="Remove Image")
    if clear.count():  # the opening example is shown: remove it, as a person would
        clear.first.click()
    target = page.locator("#query-image").get_by_text("Click to Upload").first
    target.wait_for(state="visible")
    with page.expect_file_chooser() as chooser:
        target.click()
    chooser.value.set_files(str(path))
    page.locator("#query-image img").first.wait_for()


def test_search_is_served_from_milvus_and_finds_the_gallerys_own_images(page, app_on_mine):
    data = app_on_mine[2]
    status = page.locator("#status").inner_text()
    assert "Gallery mine" in status, status
    assert f"served from Milvus Lite file {data / 'vectors.db'}" in status, status
    opening = page.evaluate(TIMINGS)  # the opening example is one of "mine"'s own images
    assert "Milvus" in opening and "served from Milvus Lite file" in opening, opening

    # the Milvus defaults are selected: aQE, no post-processing
    assert page.locator("#search-button").is_visible()
    assert page.get_by_role("radio", name="qe", exact=True).first.is_checked()
    assert page.get_by_role("radio", name="none", exact=True).last.is_checked()

    _upload_query(page, DEMO / "cat" / "chelsea_faded.jpg")  # not a member: a real query
    line = _search(page)
    assert "Milvus" in line and "candidates re-scored" in line and "served from Milvus Lite file" in line, line
    results = page.locator("#results-gallery img")
    results.first.wait_for()
    assert results.count() == 8
    shown = page.locator("#results-gallery").inner_text()
    assert "#1 · " in shown and "cat" in shown
    sources = [results.nth(i).get_attribute("src") or "" for i in range(results.count())]
    names = {name for group in MINE.values() for name in group}
    assert all(src.rsplit("/", 1)[-1] in names for src in sources), sources  # every result is one of "mine"'s
    first_caption = shown.split("#1 · ", 1)[1].splitlines()[0]
    assert first_caption.endswith("cat"), first_caption


def test_an_option_milvus_cannot_rank_with_is_refused_in_one_line(page):
    page.get_by_role("radio", name="dba", exact=True).first.check()
    page.locator("#search-button").click()
    toast = page.locator(".toast-body:has-text('needs the whole gallery')")
    toast.first.wait_for()
    text = toast.first.inner_text()
    assert "re-ranking 'dba' needs the whole gallery in memory" in text and "Traceback" not in text


def test_the_milvus_gallery_is_read_only_and_compare_says_why(page, app_on_mine):
    _, _, data = app_on_mine
    page.get_by_role("tab", name="Gallery").click()
    note = page.locator("#gallery-read-only")
    note.wait_for(state="visible")
    assert "Read-only" in note.inner_text() and "Milvus Lite file" in note.inner_text()
    page.locator("#gallery-info:has-text('12 images')").wait_for()
    assert "read-only" in page.locator("#gallery-info").inner_text()
    assert page.locator("#add-button").is_disabled() and page.locator("#remove-button").is_disabled()
    page.get_by_role("tab", name="Compare").click()
    off = page.locator("#compare-off")
    off.wait_for(state="visible")
    assert "Compare is off" in off.inner_text()
    assert page.locator("#compare-button").is_disabled()
    page.get_by_role("tab", name="Evaluate").click()
    off = page.locator("#eval-off")
    off.wait_for(state="visible")
    assert "Evaluate is off" in off.inner_text() and "Milvus Lite file" in off.inner_text()
    assert page.locator("#eval-button").is_disabled()
    assert "labelled images" not in page.locator("#eval-hint").inner_text()  # no member was read for it
    # no tab was forked into a private in-process copy
    from retrieval.store import Store

    store = Store(data / "retrieval.sqlite")
    try:
        names = [c.name for c in store.collections()]
    finally:
        store.close()
    assert names == ["mine"], names

"""The studio in a real browser: Playwright driving Debian's Chromium.

Chromium comes from ``apt-get install chromium`` (tests/install.sh); the tests
never download a browser. Without Chromium they skip locally but fail in CI
(``CI`` set), so CI can never pass them by skipping. Set ``SCREENSHOTS_DIR``
to save the screenshots shown in the README.
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 120_000

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI: Chromium is missing (apt-get install chromium); browser tests must run in CI")
    pytest.skip("Chromium not installed; run tests/install.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _open(page, url: str) -> None:
    """Load the page and wait, as a visitor does, until the Search tab shows its opening answer."""
    page.goto(url)
    page.wait_for_selector("#status:has-text('Ready')")
    page.locator("#search-timings:has-text('embed')").wait_for()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    _open(page, app_url)
    yield page
    context.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def _upload(page, component: str, path, shows: str | None = None) -> None:
    """Choose a file the way a person does: click the drop zone, answer the file chooser.

    (Setting files on the hidden input directly raced with Gradio mounting the
    tab's components and occasionally went nowhere.)
    """
    clear = page.locator(component).get_by_role("button", name="Remove Image")
    if clear.count():  # an image is shown (the opening example): remove it first, as a person would
        clear.first.click()
    target = page.locator(component).get_by_text("Click to Upload").first
    target.wait_for(state="visible")
    with page.expect_file_chooser() as chooser:
        target.click()
    chooser.value.set_files(str(path))
    if shows is None:
        return
    try:  # listed once the upload landed
        page.locator(f"{component}:has-text('{shows}')").wait_for(timeout=30_000)
    except Exception:  # a page still mounting may drop the chosen file: hand it to the input directly
        page.locator(f"{component} input[type=file]").first.set_input_files(str(path))
        page.locator(f"{component}:has-text('{shows}')").wait_for()


def _search(page) -> None:
    """Click Search and wait for this search's answer (the tab already shows the opening one).

    The timings line's own text (not the progress overlay drawn beside it) changes with every answer:
    its milliseconds are never twice the same.
    """
    text = "() => (document.querySelector('#search-timings [data-testid=markdown], #search-timings .prose') || {}).innerText"
    before = page.evaluate(text)
    page.locator("#search-button").click()
    page.wait_for_function(f"before => {{ const t = ({text})(); return t && t.includes(' ms') && t !== before; }}",
                           arg=before)


def _compare(page, query) -> None:
    """Upload a query in the Compare tab and wait for both sides' answers."""
    _tab(page, "Compare", "#compare-query")
    _upload(page, "#compare-query", query)
    page.locator("#compare-query img").first.wait_for()
    page.locator("#compare-button").click()
    page.locator("#compare-agreement:has-text('overlap@8')").wait_for()


def _tab(page, name: str, ready: str) -> None:
    """Open a tab and wait until its component is on screen, as a user would."""
    page.get_by_role("tab", name=name).click()
    page.locator(ready).wait_for(state="visible")


def test_upload_a_query_and_see_results(page):
    page.locator("#query-image").wait_for(state="visible")
    _upload(page, "#query-image", DEMO / "coffee" / "coffee_crop.jpg")
    page.locator("#query-image img").first.wait_for()
    _search(page)
    results = page.locator("#results-gallery img")
    results.first.wait_for()
    assert results.count() == 8
    assert "#1 · " in page.locator("#results-gallery").inner_text()
    assert "coffee" in page.locator("#results-gallery").inner_text()
    _shot(page, "search.png")


def test_upload_a_gallery_zip(page, gallery_zip):
    _tab(page, "Gallery", "#gallery-upload")
    _upload(page, "#gallery-upload", gallery_zip, shows="upload.zip")
    page.locator("#add-button").click()
    summary = page.locator("#upload-summary")
    summary.locator("strong:has-text('3 added')").wait_for()  # the summary, not the progress bar
    assert "corrupt.jpg" in summary.inner_text()
    page.locator("#gallery-info:has-text('your private gallery')").wait_for()
    assert "cameraman" in page.locator("#gallery-browser").inner_text()
    _shot(page, "gallery.png")


def test_compare_mode(page):
    _compare(page, DEMO / "cat" / "chelsea_faded.jpg")
    assert page.locator("#compare-a img").count() == 8 and page.locator("#compare-b img").count() == 8
    assert "cat" in page.locator("#compare-a").inner_text()
    _shot(page, "compare.png")


def test_evaluate_tab_shows_table_and_plots(page):
    _tab(page, "Evaluate", "#eval-button")
    page.locator("#eval-hint:has-text('labelled images')").wait_for()
    page.get_by_label("colorhist").check()
    page.locator("#eval-button").click()
    table = page.locator("#eval-table")
    table.locator("[role=gridcell]:has-text('colorhist')").first.wait_for()  # a cell, not the progress text
    assert "efficientnet-lite1" in table.inner_text() and "0." in table.inner_text()
    page.locator("#eval-curve canvas, #eval-curve svg").first.wait_for()
    page.locator("#eval-classes canvas, #eval-classes svg").first.wait_for()
    _shot(page, "evaluate.png")


def test_folder_upload_keeps_subfolder_labels(page, photo_folder, tmp_path):
    folder = tmp_path / "my-photos"
    for label, source in (("kitty", "cats/cat_crop.png"), ("launchpad", "space/rocket.jpg")):
        (folder / label).mkdir(parents=True)
        (folder / label / Path(source).name).write_bytes((photo_folder / source).read_bytes())
    _tab(page, "Gallery", "#gallery-folder")
    _upload(page, "#gallery-folder", folder)
    page.locator("#upload-summary strong:has-text('2 added')").wait_for()
    browser_text = page.locator("#gallery-browser").inner_text()
    assert "kitty · kitty/cat_crop.png" in browser_text and "launchpad · launchpad/rocket.jpg" in browser_text


def test_why_this_match_shows_both_overlays(page):
    _upload(page, "#query-image", DEMO / "cat" / "chelsea_crop.jpg")
    page.locator("#query-image img").first.wait_for()
    _search(page)
    page.locator("#results-gallery img").nth(1).click()
    page.locator("#why-button").click()
    page.locator("#why-note:has-text('Cosine similarity')").wait_for()
    assert page.locator("#why-query img").first.is_visible() and page.locator("#why-result img").first.is_visible()
    assert "sums exactly to the score" in page.locator("#why-note").inner_text()
    page.locator("#embedding-map canvas, #embedding-map svg").first.wait_for()
    _shot(page, "why.png")


@pytest.fixture
def fashion_zip(tmp_path):
    """A labelled zip of real Fashion-MNIST images: 4 classes x 24 (Debian's dataset-fashion-mnist)."""
    import io
    import zipfile

    from PIL import Image

    from benchmarks import fashion_mnist

    images, labels = fashion_mnist.load("t10k", 2000)
    path = tmp_path / "fashion.zip"
    counts: dict[int, int] = {}
    with zipfile.ZipFile(path, "w") as zf:
        for i, (img, label) in enumerate(zip(images, labels)):
            if label not in (0, 2, 4, 6) or counts.get(label, 0) >= 24:  # the four look-alike tops
                continue
            counts[label] = counts.get(label, 0) + 1
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "PNG")
            zf.writestr(f"{fashion_mnist.CLASSES[label]}/{i:05d}.png", buf.getvalue())
    return path


def test_adapt_a_labelled_upload_then_compare_side_by_side(page, fashion_zip):
    """As a new user: upload a labelled zip, train a head, see the held-out table, compare with the original."""
    _tab(page, "Gallery", "#gallery-upload")
    _upload(page, "#gallery-upload", fashion_zip, shows="fashion.zip")
    page.locator("#add-button").click()
    page.locator("#upload-summary strong:has-text('96 added')").wait_for()
    _tab(page, "Adapt", "#adapt-button")
    page.locator("#adapt-button").click()
    table = page.locator("#adapt-table")
    table.locator("[role=gridcell]:has-text('after')").first.wait_for()
    page.locator("#adapt-curve canvas, #adapt-curve svg").first.wait_for()
    status = page.locator("#adapt-status").inner_text()
    assert "held-out images" in status
    cells = [c.inner_text() for c in table.locator("[role=gridcell]").all()]
    before, after = float(cells[cells.index(next(c for c in cells if c.startswith("before"))) + 1]), \
        float(cells[cells.index(next(c for c in cells if c.startswith("after"))) + 1])
    assert 0.0 < before < after <= 1.0  # seeded split and training: the rise is reproducible
    _shot(page, "adapt.png")
    # the new model is B in Compare at once
    _compare(page, DEMO / "fashion-sneaker" / "fmnist-test-0009.png")
    assert page.locator("#compare-b img").count() == 8
    assert page.get_by_label("B · Backbone").input_value().startswith("head-lite1-")  # B switched to the new model


def test_clicking_a_gallery_image_makes_it_the_query(page):
    _tab(page, "Gallery", "#gallery-browser")
    page.locator("#gallery-browser img").first.click()
    page.locator("#selected-note:has-text('it is now the query')").wait_for()
    _tab(page, "Search", "#query-image")
    page.locator("#query-image img").first.wait_for()


@pytest.fixture(scope="module")
def short_ttl_app(tmp_path_factory):
    """An app whose sessions expire after 10 s without use (swept every half second)."""
    from conftest import start_app, stop_app

    data = tmp_path_factory.mktemp("short-ttl")
    proc, url, log = start_app(data, "--session-ttl", "10", "--cleanup-every", "0.5")
    yield url, data
    stop_app(proc, log)


def test_an_expired_session_carries_on_with_a_fresh_demo_and_a_note(browser, short_ttl_app, tmp_path):
    """A tab left open past the session TTL: its next search works on a fresh copy of the demo, says so in one
    line, shows no error, and its old images never come back (in results or in the Gallery tab).

    On the way, the "Selected …" note shows a hostile label and a name with backticks as typed: no link.
    """
    import hashlib
    import io
    import time
    import zipfile

    import numpy as np
    from PIL import Image

    url, data = short_ttl_app
    archive, hashes = tmp_path / "mine.zip", set()
    with zipfile.ZipFile(archive, "w") as zf:
        for seed in (7, 8):  # label "[x](http:evil.example)", a name with backticks
            rng = np.random.default_rng(seed)
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(buf, "PNG")
            zf.writestr(f"[x](http:evil.example)/vanishing-{seed}-``code``.png", buf.getvalue())
            hashes.add(hashlib.sha256(buf.getvalue()).hexdigest())
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        _open(page, url)
        _tab(page, "Gallery", "#gallery-upload")
        _upload(page, "#gallery-upload", archive, shows="mine.zip")
        page.locator("#add-button").click()
        page.locator("#upload-summary strong:has-text('2 added')").wait_for()
        assert "vanishing" in page.locator("#gallery-browser").inner_text()
        page.locator("#gallery-browser img").last.click()  # the uploads come after the demo
        selected = page.locator("#selected-note")
        selected.locator("text=it is now the query").wait_for()
        assert "[x](http:evil.example)" in selected.inner_text() and "``code``" in selected.inner_text()
        assert selected.locator("a").count() == 0, selected.inner_html()
        _tab(page, "Search", "#query-image")
        page.locator("#query-image img").first.wait_for()
        page.locator("#search-button").click()
        page.locator("#results-gallery:has-text('evil.example')").wait_for()  # its own label: the tab's gallery, while it lives

        def stored() -> bool:
            return any(p.name.startswith(tuple(hashes)) for p in (data / "images").rglob("*") if p.is_file())

        deadline = time.monotonic() + 60
        while stored():  # the idle gallery is dropped, its files deleted
            assert time.monotonic() < deadline, "the session was not dropped after its TTL"
            page.wait_for_timeout(250)

        page.locator("#search-button").click()
        timings = page.locator("#search-timings")
        timings.locator("text=Note:").wait_for()
        timings.locator("text=embed").wait_for()  # the search itself ran
        note = timings.locator("p").first.inner_text()
        assert note.startswith("Note:") and "demo" in note and "\n" not in note.strip(), note
        results = page.locator("#results-gallery")
        results.locator("img").first.wait_for()
        assert results.locator("img").count() == 8 and "evil.example" not in results.inner_text()
        assert page.locator(".toast-body.error").count() == 0  # a note, not an error
        _tab(page, "Gallery", "#gallery-browser")  # the tab moved to its new gallery: the listing too
        demo_images = sum(1 for p in DEMO.rglob("*") if p.suffix in (".jpg", ".png"))
        page.locator(f"#gallery-info:has-text('{demo_images} images')").wait_for()
        assert "vanishing" not in page.locator("#gallery-browser").inner_text()
        assert not stored()  # and the old gallery's files were never brought back
        assert page.locator(".toast-body.error").count() == 0
        _shot(page, "expired.png")
    finally:
        context.close()


# -- a first-time visitor ------------------------------------------------------------------------


def test_search_opens_with_an_example_answered_and_output_only_results(page):
    """Before any upload: the query holds the first example, eight results are ranked, and no result area
    invites a drop (galleries that show results are output-only)."""
    assert page.locator("#query-image img").first.is_visible()
    results = page.locator("#results-gallery")
    assert results.locator("img").count() == 8 and "#1 · " in results.inner_text()
    assert "cat" in results.inner_text()  # the first example is a crop of the cat photo
    page.locator("#embedding-map canvas, #embedding-map svg").first.wait_for()  # its follow-up ran too
    _tab(page, "Compare", "#compare-query")
    for area in ("#compare-a", "#compare-b"):
        text = page.locator(area).inner_text()
        assert "Drop" not in text and "Click to Upload" not in text, (area, text)
        assert page.locator(f"{area} input[type=file]").count() == 0, area
    assert page.get_by_label("gpu").count() == 0  # no GPU here: the device menus offer none
    _tab(page, "Search", "#results-gallery")
    assert page.locator("#results-gallery input[type=file]").count() == 0
    _tab(page, "Gallery", "#gallery-browser")
    assert page.locator("#gallery-browser input[type=file]").count() == 0


def test_clicking_an_example_runs_it(page):
    before = page.locator("#results-gallery").inner_text()
    page.locator("#search-examples").get_by_role("button").nth(1).click()  # the coffee cup, flipped
    page.locator("#results-gallery:has-text('#1 · 0.9'):has-text('coffee')").wait_for()
    assert page.locator("#results-gallery").inner_text() != before
    assert page.locator("#query-image img").first.is_visible()


def test_clicking_a_result_offers_why_and_search_with_this_image(page):
    actions = page.locator("#result-actions")
    assert not actions.is_visible()  # nothing picked yet
    page.locator("#results-gallery img").nth(3).click()
    actions.wait_for(state="visible")
    page.keyboard.press("Escape")  # close the preview the click opened
    picked = page.locator("#picked-note").inner_text()
    assert picked.startswith("Result #4:"), picked
    name = picked.split(": ", 1)[1].split(" (")[0]
    page.locator("#why-button").click()
    note = page.locator("#why-note")
    note.locator("text=Cosine similarity").wait_for()
    assert name in note.inner_text()  # the explanation is of the result that was clicked
    assert page.locator("#why-result img").first.is_visible()

    page.locator("#search-with-button").click()
    actions.wait_for(state="hidden")  # a new search closes the previous result's panels
    assert not page.locator("#why-panel").is_visible()
    page.locator("#results-gallery img").first.click()
    actions.wait_for(state="visible")
    page.keyboard.press("Escape")
    assert page.locator("#picked-note").inner_text().startswith(f"Result #1: {name} ("), \
        "searching with a result ranks that image first"


def test_a_failed_search_runs_no_follow_ups(page):
    """The embedding map follows a search only when the search succeeded (.success, not .then)."""
    page.locator("#embedding-map canvas, #embedding-map svg").first.wait_for()
    page.locator("#query-image").get_by_role("button", name="Remove Image").click()
    page.locator("#search-button").click()
    page.locator(".toast-body.error:has-text('Choose a query image first')").wait_for()
    page.wait_for_timeout(1500)  # time for a follow-up to run, were there one
    assert page.locator("#embedding-map").is_visible()  # a .then follow-up would have hidden it (no query)
    assert "#1 · " in page.locator("#results-gallery").inner_text()  # the last answer stays


def test_compare_results_offer_why_and_compare_with(page):
    _compare(page, DEMO / "rocket" / "rocket_faded.jpg")
    page.locator("#compare-b img").nth(2).click()  # B is colour histograms: nothing to explain, and it says so
    page.locator("#compare-actions").wait_for(state="visible")
    page.keyboard.press("Escape")
    assert page.locator("#compare-picked-note").inner_text().startswith("B · Result #3")
    page.locator("#compare-why-button").click()
    page.locator(".toast-body.error:has-text('no feature map to explain')").wait_for()
    page.locator("#compare-a img").nth(2).click()  # A is the CNN
    page.locator("#compare-picked-note:has-text('A · Result #3')").wait_for()
    page.keyboard.press("Escape")
    page.locator("#compare-why-button").click()
    page.locator("#compare-why-panel:has-text('Cosine similarity')").wait_for()
    page.locator("#compare-with-button").click()
    page.locator("#compare-actions").wait_for(state="hidden")
    page.locator("#compare-agreement:has-text('overlap@8')").wait_for()


def test_evaluation_shows_progress_and_can_be_cancelled(page):
    _tab(page, "Evaluate", "#eval-button")
    page.locator("#eval-hint:has-text('labelled images')").wait_for()
    for name in ("fusion-lite-ms", "fusion-lite-flip"):  # slow: several networks per image, never cached yet
        page.get_by_label(name).check()
    page.locator("#eval-button").click()
    page.locator("#eval-note:has-text('Evaluating')").wait_for()
    page.locator("#eval-cancel").click()
    page.locator("#eval-note:has-text('Evaluation cancelled')").wait_for()
    assert page.locator("#eval-table [role=gridcell]").count() == 0  # no figures of a cancelled run
    page.locator("#eval-cancel").click()
    page.locator("#eval-note:has-text('Nothing is being evaluated')").wait_for()


def test_training_can_be_cancelled(page, fashion_zip):
    _tab(page, "Gallery", "#gallery-upload")
    _upload(page, "#gallery-upload", fashion_zip, shows="fashion.zip")
    page.locator("#add-button").click()
    page.locator("#upload-summary strong:has-text('96 added')").wait_for()
    _tab(page, "Adapt", "#adapt-button")
    page.get_by_label("finetune").check()  # the CNN's top blocks on a CPU: minutes, plenty of time to cancel
    page.locator("#adapt-button").click()
    page.locator("#adapt-status:has-text('Training')").wait_for()
    page.locator("#adapt-cancel").click()
    page.locator("#adapt-status:has-text('Cancelled: nothing was saved')").wait_for()


@pytest.fixture(scope="module")
def fresh_app(tmp_path_factory):
    """An app on an empty data folder: the demo is indexed from scratch, with progress (about a minute)."""
    from conftest import start_app, stop_app

    data = tmp_path_factory.mktemp("fresh")
    proc, url, log = start_app(data)
    yield url, data
    stop_app(proc, log)


def test_first_start_indexing_shows_progress_and_can_be_stopped_and_resumed(browser, fresh_app):
    url, _ = fresh_app
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(url)
        status = page.locator("#status")
        status.locator("text=Preparing the demo gallery").wait_for()
        page.locator("#stop-indexing").click()
        status.locator("text=Demo indexing stopped").wait_for()
        stopped_at = int(status.inner_text().split(" at ")[1].split("/")[0])
        assert 0 <= stopped_at < 70
        page.locator("#resume-indexing").click()
        status.locator("text=Ready").wait_for()
        assert not page.locator("#resume-indexing").is_visible()
        page.locator("#search-timings:has-text('embed')").wait_for()  # the opening answer came once it was ready
    finally:
        context.close()


# -- search by text (captions and tags) --------------------------------------------------------------


def test_words_alone_rank_by_captions_and_tags(page):
    page.locator("#query-image").get_by_role("button", name="Remove Image").click()
    page.locator("#text-query textarea, #text-query input").first.fill("espresso")
    _search(page)
    timings = page.locator("#search-timings").inner_text()
    assert "Searched captions and tags" in timings and "no model ran" in timings, timings
    results = page.locator("#results-gallery")
    assert results.locator("img").count() == 2  # the two demo photos whose caption or tags say it
    assert "coffee" in results.inner_text() and "cat" not in results.inner_text()


def test_words_filter_an_image_query(page):
    page.locator("#text-query textarea, #text-query input").first.fill("pet kitten")
    page.get_by_role("radio", name="filter").check()
    _search(page)  # the opening query (the cat crop) with words
    assert "filtered by text" in page.locator("#search-timings").inner_text()
    results = page.locator("#results-gallery")
    assert results.locator("img").count() == 3 and results.inner_text().count("· cat") == 3  # pet, kitten, pet


def test_a_caption_edited_in_the_gallery_tab_is_found_by_text(page):
    _tab(page, "Gallery", "#gallery-browser")
    page.locator("#gallery-browser img").nth(5).click()
    page.locator("#selected-note:has-text('it is now the query')").wait_for()
    caption = page.locator("#meta-caption textarea, #meta-caption input").first
    page.wait_for_function("() => document.querySelector('#meta-caption textarea, #meta-caption input').value !== ''")
    caption.fill("a zanzibar lighthouse at dusk")
    page.locator("#meta-tags textarea, #meta-tags input").first.fill("zanzibar; lighthouse")
    page.locator("#meta-save").click()
    page.locator("#meta-note:has-text('Saved for')").wait_for()
    page.locator("#gallery-info:has-text('your private gallery')").wait_for()  # the shared demo was not changed
    name = page.locator("#selected-note code").first.inner_text()
    _tab(page, "Search", "#query-image")
    page.locator("#query-image").get_by_role("button", name="Remove Image").click()
    page.locator("#text-query textarea, #text-query input").first.fill("Zanzibar")
    _search(page)
    assert page.locator("#results-gallery img").count() == 1
    page.locator("#results-gallery img").first.click()
    page.locator("#picked-note").wait_for(state="visible")
    page.keyboard.press("Escape")
    assert name in page.locator("#picked-note").inner_text()


def test_evaluate_adds_a_metadata_only_row(page):
    _tab(page, "Evaluate", "#eval-button")
    page.locator("#eval-hint:has-text('labelled images')").wait_for()
    page.get_by_label("colorhist").check()
    page.locator("#eval-metadata input").check()
    page.locator("#eval-button").click()
    table = page.locator("#eval-table")
    table.locator("[role=gridcell]:has-text('captions + tags')").first.wait_for()
    assert "colorhist" in table.inner_text()
    assert "metadata row asks with each labelled image" in page.locator("#eval-note").inner_text()

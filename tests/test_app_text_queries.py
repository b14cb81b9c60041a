"""Words against images in the app: an image-text backbone's text tower in Search and Compare.

The real app in a subprocess with a tiny random CLIP preset in a local preset
directory (``tiny_presets``, loaded by the real KerasHub path), driven by
Debian's Chromium through Playwright. A trained CLIP would rank a cat photo
first for "a photo of a cat"; a random one cannot, so these tests check the
plumbing and what the page says it did, and the rankings are checked against
the stored vectors in test_text_queries.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_app_browser  # Chromium, and its rule: skip here, fail in CI without it
from conftest import start_app, stop_app
from tiny_presets import make_presets

from retrieval.backbones import hub

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"
TIMEOUT_MS = test_app_browser.TIMEOUT_MS
browser = test_app_browser.browser  # the same module-scoped Chromium fixture


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    presets = make_presets(tmp_path_factory.mktemp("presets"), ("clip_vit_base_patch32",))
    data = tmp_path_factory.mktemp("textapp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(hub.PRESETS_ENV, str(presets))
        proc, url, log = start_app(data)
    yield url
    stop_app(proc, log)


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url)
    page.wait_for_selector("#status:has-text('Ready')")
    page.locator("#search-timings:has-text('embed')").wait_for()
    yield page
    context.close()


def _choose(page, label: str, value: str) -> None:
    """Pick ``value`` in the dropdown labelled ``label``, as a user does: open it, click the option."""
    box = page.get_by_label(label, exact=True)
    box.click()
    page.get_by_role("option", name=value, exact=True).click()
    assert box.input_value() == value


def _answer(page, element: str) -> str:
    """The markdown of ``element`` without the progress overlay Gradio draws beside it."""
    return page.evaluate(f"() => (document.querySelector('{element} [data-testid=markdown], {element} .prose') "
                         "|| {}).innerText || ''")


def _timings(page, element: str, before: str) -> str:
    """Wait for a new answer in ``element`` (its milliseconds are never twice the same) and return it."""
    text = (f"() => (document.querySelector('{element} [data-testid=markdown], {element} .prose') || {{}})"
            ".innerText")
    page.wait_for_function(f"before => {{ const t = ({text})(); return t && t.includes(' ms') && t !== before; }}",
                           arg=before)
    return _answer(page, element)


def test_words_alone_rank_by_the_text_tower_of_the_chosen_backbone(page):
    _choose(page, "Backbone", "clip-vit-b32")
    page.locator("#query-image").get_by_role("button", name="Remove Image").click()
    page.locator("#text-query textarea, #text-query input").first.fill("a photo of a cat")
    before = _answer(page, "#search-timings")
    page.locator("#search-button").click()
    timings = _timings(page, "#search-timings", before)
    assert "Ranked by the image content" in timings and "clip-vit-b32" in timings, timings
    assert "decode" not in timings and "Keras f32" in timings  # words have no image to decode
    assert page.locator("#results-gallery img").count() == 8
    # the same words by captions and tags: the page says which ran
    page.locator("#text-target").get_by_role("radio", name="metadata").check()
    before = timings
    page.locator("#search-button").click()
    timings = _timings(page, "#search-timings", before)
    assert "Searched captions and tags" in timings, timings


def test_words_alone_with_a_backbone_without_a_text_tower_say_why_or_use_captions(page):
    page.locator("#query-image").get_by_role("button", name="Remove Image").click()
    page.locator("#text-query textarea, #text-query input").first.fill("espresso")
    page.locator("#text-target").get_by_role("radio", name="model").check()
    page.locator("#search-button").click()
    error = page.locator(".toast-body:has-text('has no text tower')")
    error.wait_for()
    assert "clip-vit-b32" in error.inner_text()
    page.locator("#text-target").get_by_role("radio", name="auto").check()  # EfficientNet: auto falls back to captions and tags
    before = _answer(page, "#search-timings")
    page.locator("#search-button").click()
    assert "Searched captions and tags" in _timings(page, "#search-timings", before)


def test_compare_sets_words_against_the_image(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-query").wait_for(state="visible")
    page.locator("#compare-query input[type=file]").set_input_files(str(DEMO / "cat" / "chelsea.jpg"))
    page.locator("#compare-query img").first.wait_for()
    _choose(page, "B · Backbone", "clip-vit-b32")
    page.locator("#compare-b-text textarea, #compare-b-text input").first.fill("a photo of a cat")
    page.locator("#compare-button").click()
    page.locator("#compare-agreement:has-text('overlap@8')").wait_for()
    sides = page.locator(".timing")
    a_line = next(t for t in sides.all_inner_texts() if "decode" in t)
    b_line = next(t for t in sides.all_inner_texts() if "Ranked by the image content" in t)
    assert "clip-vit-b32" in b_line and "Ranked by" not in a_line
    assert page.locator("#compare-a img").count() == 8 and page.locator("#compare-b img").count() == 8


def test_presets_that_would_download_are_listed_not_offered_offline(page):
    """HF_HUB_OFFLINE (set for every app under test): DINOv2 cannot be fetched, so it is listed, not in the menu."""
    notes = page.locator("#not-ready-models")
    notes.get_by_text("Backbones not ready").click()
    notes.locator("code:has-text('dinov2-base-cls')").wait_for()
    text = notes.inner_text()
    assert "dinov2-base-cls" in text and "downloads on first use" in text
    box = page.get_by_label("Backbone", exact=True)
    box.click()
    options = page.get_by_role("option").all_inner_texts()
    assert "clip-vit-b32" in options and "dinov2-base-cls" not in options
    page.keyboard.press("Escape")


def test_menus_offer_the_presets_that_would_download_when_the_hub_answers(monkeypatch, tmp_path):
    """On a Space with network access DINOv2 and CLIP are in the Backbone menus, with no change."""
    from retrieval import Studio
    from ui.page import menu_models

    monkeypatch.setenv("RETRIEVAL_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("RETRIEVAL_OFFLINE", raising=False)
    monkeypatch.delenv(hub.PRESETS_ENV, raising=False)
    studio = Studio(tmp_path / "menus.sqlite")
    try:
        models = studio.models()
    finally:
        studio.close()
    asked = []
    online = menu_models(models, online=lambda: asked.append(1) or True)
    offline = menu_models(models, online=lambda: False)
    assert {"dinov2-small-cls", "dinov2-base-patchmean", "clip-vit-b32", "clip-vit-b16", "siglip-b16-224"} <= set(online)
    assert not {"dinov2-small-cls", "clip-vit-b32"} & set(offline) and "efficientnet-lite1" in offline
    assert asked == [1]  # the hub is asked once, and only because something would download
    monkeypatch.setenv("RETRIEVAL_OFFLINE", "1")
    assert menu_models(models, online=lambda: pytest.fail("forced offline: never ask the network")) == offline


def test_the_app_leaves_the_hub_client_online_for_preset_downloads(tmp_path):
    """A Space downloads DINOv2 or CLIP when picked: the app must not switch the Hub client off for it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "RETRIEVAL_OFFLINE")}
    code = ("import os, app; app._prepare_environment(app.parse_args(['--data-dir', os.environ['D']])); "
            "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('GRADIO_ANALYTICS_ENABLED'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env={**env, "D": str(tmp_path)}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "False"]  # online for the Hub, analytics still off

"""The whole page: a header with the start-up status, five tabs, and the wiring between tabs.

Each tab is a module that lays out its components and wires its own events;
this module creates what they share (the session State, the backbone list,
the job registry) and hands each tab the other tabs' components it writes to
(a gallery click sets the query in Search and Compare; training adds a
backbone to every menu). Any action that moved a tab to a new gallery (its
old one expired) relists the Gallery tab.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from retrieval import SearchConfig
from retrieval.backbones import hub
from retrieval.config import DEFAULT_BACKBONE
from retrieval.service.jobs import Jobs

from .backend import Backend
from .formatting import code
from .sessions import Sessions
from .widgets import PRIVATE

CSS = """
#results-gallery, #compare-a, #compare-b {min-height: 320px}
.timing {font-size: 0.9em; opacity: 0.85}
"""
# Browsers know each file's path inside an uploaded folder (webkitRelativePath)
# but Gradio keeps only the base name, which would lose the labels that
# subfolders carry. This listener records the paths as the files are chosen;
# the folder-upload event sends them along (ui.gallery.FOLDER_JS).
PAGE_JS = """() => {
  document.addEventListener('change', (event) => {
    const input = event.target;
    if (input && input.matches && input.matches('#gallery-folder input[type=file]') && input.files) {
      window.__retrievalFolder = Array.from(input.files).map(f => [f.webkitRelativePath || f.name, f.name, f.size]);
    }
  }, true);
}"""


@dataclass
class Page:
    """What the tabs share. Created inside the Blocks context (it holds the page's States)."""

    backend: Backend
    sessions: Sessions
    model_choices: list[str]
    fusion_costs: str
    examples: list[str]
    session: gr.State  # this tab's private gallery, or None for the shared demo (Studio.session decides)
    listed: gr.State  # the gallery the Gallery tab lists (same values as ``session``)
    defaults: SearchConfig = field(default_factory=SearchConfig)  # the shared gallery's default search (Studio.search_defaults)
    read_only: str | None = None  # why the shared gallery cannot be changed here (one line), or None
    jobs: Jobs = field(default_factory=Jobs)
    _relisting: list = field(default_factory=list)

    @property
    def studio(self):
        return self.backend.studio

    def relisting(self, event):
        """Mark an event that may move the tab to a new gallery: the Gallery tab relists after it."""
        self._relisting.append(event)
        return event


def menu_models(models: list[dict], online) -> list[str]:
    """What the Backbone menus offer: the ready models, plus the KerasHub ones that would download now.

    ``online`` (a callable, asked only when there is something to download)
    says whether the hub answers; on a Space with network access DINOv2 and
    CLIP are then in the menus with no change, and where nothing can be
    fetched they stay listed as "downloads on first use" without a menu entry.
    """
    names = [m["name"] for m in models if m["ready"]]
    later = [m["name"] for m in models if not m["ready"] and hub.downloadable(m["name"])]
    return names + later if later and online() else names


def build(backend: Backend) -> gr.Blocks:
    from . import adapt, compare, evaluate, gallery, search

    models = backend.studio.models()
    ready = menu_models(models, online=lambda: hub.reachable(1.5))
    not_ready = "\n".join(f"- `{m['name']}`: {m['status']}" for m in models if m["name"] not in ready)
    downloads = [m for m in models if m["name"] in ready and not m["ready"]]
    if downloads:  # offered, and fetched into the data folder the first time someone picks one
        not_ready = "\n".join([not_ready, *(f"- `{m['name']}` (in the menus): {m['status']}" for m in downloads)])
    fusion_costs = "".join(f" · {m['name']}: ≈ {m['cost']:.1f}× lite1 per image" for m in models
                           if m["ready"] and m.get("cost"))
    model_choices = ready or [DEFAULT_BACKBONE]
    examples = backend.examples()  # the demo's, or a few of the named gallery's own images
    read_only = (f"Read-only: {code(backend.template)} is served from {backend.served_from}; uploads and removals are "
                 "off here, since a private copy would load every vector into this process."
                 if backend.read_only else None)

    with gr.Blocks(title="Image retrieval studio", delete_cache=(3600, 6 * 3600)) as ui:
        page = Page(backend, Sessions(backend.studio, model_choices, backend.template, read_only), model_choices,
                    fusion_costs, examples, session=gr.State(None), listed=gr.State(None),
                    defaults=backend.search_defaults(), read_only=read_only)
        gr.Markdown("# Image retrieval studio\nQuery a gallery with an image and see which images a CNN finds most "
                    "alike — under different backbones, poolings, metrics and re-rankings — with the numbers.")
        with gr.Row():
            status = gr.Markdown(backend.status(), elem_id="status")
            controls = backend.settings.private_host and not backend.named  # nobody stops a shared demo
            stop = gr.Button("Stop indexing", size="sm", scale=0, elem_id="stop-indexing",
                             visible=controls and not backend.ready.is_set())
            resume = gr.Button("Resume indexing", size="sm", scale=0, elem_id="resume-indexing", visible=False)
        timer = gr.Timer(1.0)

        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                search_tab = search.SearchTab(page)
                if not_ready:
                    with gr.Accordion("Backbones not ready on this machine, or downloaded on first use",
                                      open=False, elem_id="not-ready-models"):
                        gr.Markdown(not_ready)
            with gr.Tab("Compare", id="compare"):
                compare_tab = compare.CompareTab(page)
            with gr.Tab("Gallery", id="gallery"):
                gallery_tab = gallery.GalleryTab(page, queries=[search_tab.query, compare_tab.query],
                                                 use_as_query=search_tab.query)
            with gr.Tab("Evaluate", id="evaluate"):
                evaluate_tab = evaluate.EvaluateTab(page)
            with gr.Tab("Adapt", id="adapt"):
                adapt.AdaptTab(page, menus=[search_tab.backbone, compare_tab.a_backbone, compare_tab.b_backbone,
                                            evaluate_tab.backbones],
                               shows_new=compare_tab.b_backbone)

        # -- start-up: status, stop and resume of the demo's first indexing ----------------------
        def tick():
            running = not backend.ready.is_set()
            return (backend.status(), gr.Timer(active=running or backend.stopped),  # another page may resume
                    gr.Button(visible=controls and running), gr.Button(visible=controls and backend.stopped))

        start_up = [status, timer, stop, resume]
        timer.tick(tick, None, start_up, queue=False, **PRIVATE)  # a full queue never hides the status
        stop.click(lambda: backend.stop_indexing() and None, None, None, queue=False, **PRIVATE).then(
            tick, None, start_up, **PRIVATE)
        resume.click(lambda: backend.resume_indexing() and None, None, None, queue=False, **PRIVATE).then(
            tick, None, start_up, **PRIVATE)

        # -- across tabs -------------------------------------------------------------------------
        for event in page._relisting:
            event.then(gallery_tab.relist, [page.session, page.listed], gallery_tab.listing, **PRIVATE)
    return ui
